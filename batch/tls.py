"""The mutual-TLS contexts, one of each per process, and certificate expiry checks (docs/protocol.md#p18).

Both legs use the same certificate, key and CA bundle, TLS 1.2 or later, and the same explicit cipher list:
TLS 1.2 only with ECDHE key exchange and AES-GCM, and TLS 1.3 with OpenSSL's TLS 1.3 suites (all AEAD).
"""

import ssl
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class TlsConfigError(Exception):
    """A certificate, key or CA file that is missing, unreadable or unusable; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"TLS {what} file {path}: {exc.strerror or exc}") from None


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Every PEM certificate in the file, in order. Raises TlsConfigError naming the file."""
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"TLS {what} file {path}: no PEM certificate could be read") from None
    if not certificates:
        raise TlsConfigError(f"TLS {what} file {path}: no PEM certificate could be read")
    return certificates


def read_private_key(path: Path) -> PrivateKeyTypes:
    """The file's unencrypted PEM private key. Raises TlsConfigError naming the file."""
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # Encrypted keys would make OpenSSL prompt on the terminal; a batch service cannot answer.
        raise TlsConfigError(
            f"TLS key file {path}: the key is encrypted; an unencrypted key is required"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(f"TLS key file {path}: no PEM private key could be read") from None


# TLS 1.2 suites (forward secrecy and AEAD only); TLS 1.3 suites are configured apart and are all AEAD.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)


def _no_password() -> bytes:
    raise TlsConfigError("TLS key needs a password, which is not supported")


def _load_identity(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    read_certificates(cert, "certificate")
    read_private_key(key)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key, password=_no_password)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"TLS certificate {cert} and key {key}: the key does not match the certificate ({exc.reason})"
        ) from None


def _load_trust(context: ssl.SSLContext, ca: Path) -> None:
    read_certificates(ca, "CA")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"TLS CA file {ca}: not usable as a trust store ({exc.reason})") from None


def client_context(cert: Path, key: Path, ca: Path, *, check_hostname: bool = True) -> ssl.SSLContext:
    """Outbound leg: present our certificate, trust only the given CA bundle, TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # No hostname check only for a test environment reached by IP; the chain is always verified.
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_identity(context, cert, key)
    _load_trust(context, ca)
    return context


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Inbound leg: serve our certificate and require a client certificate issued under the CA bundle.

    Which of the CA's certificates may post is batch.peers' decision, after the handshake. No session
    tickets: Spine opens a new connection per reply and does not resume, so tickets cost every handshake
    work (and a write) that nothing uses. HTTP/1.1 is the only protocol offered by ALPN.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.num_tickets = 0
    context.set_alpn_protocols(["http/1.1"])
    _load_identity(context, cert, key)
    _load_trust(context, ca)
    return context


def _remaining_days(leaf: x509.Certificate) -> float:
    return (leaf.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400


def expiry_warning(cert: Path, within_days: int = 30) -> str | None:
    """A log message when the certificate has expired or expires within the given days, else None."""
    leaf = read_certificates(cert, "certificate")[0]
    remaining = _remaining_days(leaf)
    expires = leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    if remaining < 0:
        return f"TLS certificate {cert} expired on {expires}"
    if remaining <= within_days:
        return f"TLS certificate {cert} expires in {remaining:.1f} days, on {expires}"
    return None
