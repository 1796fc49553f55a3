"""Who may post to the reply endpoint: the `[inbound] allowed_peers` allow-list (docs/decisions.md#d17).

The TLS handshake already proves that the peer holds a certificate issued under the configured CA. In NHS
environments that CA issues certificates to every connected system, so the chain alone does not make a peer
Spine: the allow-list names Spine's certificate, each entry in one of two forms:

* ``sha256:<64 lowercase hex digits>``: the SHA-256 of the certificate's DER SubjectPublicKeyInfo (a key pin:
  it survives a renewal that keeps the key, and nothing else can match it);
* an RFC 4514 subject, e.g. ``CN=msg.spine.example,O=NHS``, compared with the certificate's subject as
  `x509.Name` objects. The comparison is exact: every RDN, in order, with equal values (case-sensitive).
  RFC 4514 writes the most specific RDN first, as `openssl x509 -noout -subject -nameopt RFC2253` and
  `cpis-batch certs` print it; attribute types are written as RFC 4514 names (`CN`, `O`, `OU`, `C`, `L`,
  `ST`, upper case) or dotted OIDs. A subject that differs only in case or RDN order does not match.

With no allow-list (`None`, allowed only in the simulated profile) any certificate from the CA is accepted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_PIN = re.compile(r"sha256:([0-9a-f]{64})")
_CACHE_SIZE = 64


class PeerPolicyError(ValueError):
    """An `allowed_peers` entry that is neither a SPKI pin nor a readable RFC 4514 subject."""


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER-encoded SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def spki_pin(certificate: x509.Certificate) -> str:
    """The `allowed_peers` entry that pins this certificate's public key."""
    return "sha256:" + spki_sha256(certificate).hex()


def _subject(entry: str) -> x509.Name:
    try:
        name = x509.Name.from_rfc4514_string(entry)
    except ValueError:
        raise PeerPolicyError(
            f"allowed_peers entry {entry!r} is neither 'sha256:<64 lowercase hex>' nor an RFC 4514 subject"
        ) from None
    if not list(name):
        raise PeerPolicyError(f"allowed_peers entry {entry!r} is an empty subject")
    return name


@dataclass
class PeerPolicy:
    """Decides, from a peer's certificate (DER), whether it may post replies."""

    pins: frozenset[bytes] = frozenset()
    subjects: tuple[x509.Name, ...] = ()
    any_from_ca: bool = False
    """No allow-list: the CA's word is enough (simulated profile only)."""
    _seen: dict[bytes, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, allowed_peers: tuple[str, ...] | None) -> PeerPolicy:
        if allowed_peers is None:
            return cls(any_from_ca=True)
        if not allowed_peers:
            raise PeerPolicyError("allowed_peers is empty: no peer could post replies")
        pins: set[bytes] = set()
        subjects: list[x509.Name] = []
        for entry in allowed_peers:
            if entry.startswith("sha256:"):
                match = _PIN.fullmatch(entry)
                if match is None:
                    raise PeerPolicyError(
                        f"allowed_peers entry {entry!r} must be 'sha256:' and 64 lowercase hex digits"
                    )
                pins.add(bytes.fromhex(match.group(1)))
            else:
                subjects.append(_subject(entry))
        return cls(pins=frozenset(pins), subjects=tuple(subjects))

    def allows(self, der: bytes | None) -> bool:
        """Whether the peer with this certificate may post; None (no certificate) never may."""
        if der is None:
            return False
        if self.any_from_ca:
            return True
        known = self._seen.get(der)
        if known is not None:
            return known
        allowed = self._check(der)
        if len(self._seen) >= _CACHE_SIZE:
            self._seen.clear()
        self._seen[der] = allowed
        return allowed

    def _check(self, der: bytes) -> bool:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        if self.pins and spki_sha256(certificate) in self.pins:
            return True
        return any(certificate.subject == subject for subject in self.subjects)

    def describe(self) -> str:
        if self.any_from_ca:
            return "any certificate issued by the CA"
        return f"{len(self.pins)} key pin(s) and {len(self.subjects)} subject(s)"
