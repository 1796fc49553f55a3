"""Errors shared by the HL7 readers."""


class ReplyParseError(ValueError):
    """Bytes that are not XML, or XML holding none of the interactions we expect.

    Raised for nothing else: schema deviations are tolerated (docs/protocol.md#p16).
    """
