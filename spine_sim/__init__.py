"""The simulated Spine: CP-IS over ebXML with mutual TLS, ground truth and fault injection."""
