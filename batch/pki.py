"""Throw-away development PKI for mutual TLS with the simulated Spine (never for NHS environments)."""

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batch.peers import spki_pin

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SPINE_CERT, SPINE_KEY = "spine.pem", "spine.key"
CLIENT_CERT, CLIENT_KEY = "cpis-batch.pem", "cpis-batch.key"

_ORGANISATION = "cpis-batch development PKI (not for production)"
# Backdating absorbs small clock differences between the processes that use the certificates.
_BACKDATE = timedelta(minutes=5)
# A PKI this close to expiry is regenerated instead of reused.
_REUSE_MARGIN = timedelta(days=1)
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)

_EcKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class DevPki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    spine_cert: Path
    spine_key: Path
    client_cert: Path
    client_key: Path


def _paths(directory: Path) -> DevPki:
    return DevPki(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        spine_cert=directory / SPINE_CERT,
        spine_key=directory / SPINE_KEY,
        client_cert=directory / CLIENT_CERT,
        client_key=directory / CLIENT_KEY,
    )


def _files(pki: DevPki) -> list[Path]:
    return [pki.ca_cert, pki.ca_key, pki.spine_cert, pki.spine_key, pki.client_cert, pki.client_key]


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str) or not hosts:
        raise ValueError("hosts must be a non-empty sequence of host names or IP addresses")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        dns = host.strip().lower().rstrip(".")
        if not _DNS_NAME.fullmatch(dns):
            raise ValueError(f"not a host name or IP address: {host!r}")
        names.append(x509.DNSName(dns))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> _EcKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: datetime,
    not_after: datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What a CA and a leaf certificate share: names, key, serial, validity, basic constraints, key usage."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def _make_ca(common_name: str, days: int, now: datetime) -> tuple[x509.Certificate, _EcKey]:
    key = _new_key()
    subject = _name(common_name)
    public = key.public_key()
    cert = (
        _builder(subject, subject, public, now, now + timedelta(days=days), ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    common_name: str,
    sans: list[x509.GeneralName],
    ca_cert: x509.Certificate,
    ca_key: _EcKey,
    days: int,
    now: datetime,
) -> tuple[x509.Certificate, _EcKey]:
    key = _new_key()
    public = key.public_key()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        _builder(_name(common_name), ca_cert.subject, public, now, not_after, ca=False)
        # Both usages: the same certificate serves and presents on both legs, as NHS endpoint certificates do.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    # Created with its final mode so a key is never readable by others, not even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: _EcKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _EcKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, _EcKey) or key.public_key() != cert.public_key():
        raise ValueError("key does not match certificate")
    return cert, key


def _leaf_is_usable(
    cert: x509.Certificate, ca_cert: x509.Certificate, sans: list[x509.GeneralName], now: datetime
) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - now < _REUSE_MARGIN:
        return False
    present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return all(name in present for name in sans)


def _existing_is_usable(pki: DevPki, sans: list[x509.GeneralName], now: datetime) -> bool:
    if not all(path.is_file() for path in _files(pki)):
        return False
    try:
        ca_cert, _ = _load_pair(pki.ca_cert, pki.ca_key)
        if ca_cert.not_valid_after_utc - now < _REUSE_MARGIN:
            return False
        for cert_path, key_path in ((pki.spine_cert, pki.spine_key), (pki.client_cert, pki.client_key)):
            cert, _ = _load_pair(cert_path, key_path)
            if not _leaf_is_usable(cert, ca_cert, sans, now):
                return False
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return True


def make_dev_pki(
    directory: Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"),
    days: int = 825,
    overwrite: bool = False,
) -> DevPki:
    """Create (or reuse) a development CA plus Spine and cpis-batch certificates in directory."""
    if days < 1:
        raise ValueError("days must be at least 1")
    sans = _subject_alternative_names(hosts)
    pki = _paths(Path(directory))
    now = datetime.now(UTC)
    if not overwrite and _existing_is_usable(pki, sans, now):
        return pki
    pki.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("cpis-batch development CA", days, now)
    spine_cert, spine_key = _make_leaf("spine-sim", sans, ca_cert, ca_key, days, now)
    client_cert, client_key = _make_leaf("cpis-batch", sans, ca_cert, ca_key, days, now)
    _write_pair(pki.ca_cert, pki.ca_key, ca_cert, ca_key)
    _write_pair(pki.spine_cert, pki.spine_key, spine_cert, spine_key)
    _write_pair(pki.client_cert, pki.client_key, client_cert, client_key)
    return pki


def spine_allowed_peer(pki: DevPki) -> str:
    """The `[inbound] allowed_peers` entry that lets the development Spine (and nothing else) post replies."""
    return spki_pin(x509.load_pem_x509_certificate(pki.spine_cert.read_bytes()))
