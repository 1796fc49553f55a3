"""Development PKI and the mutual-TLS contexts, checked with real handshakes on loopback."""

import asyncio
import ipaddress
import ssl
import stat
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batch.pki import DevPki, make_dev_pki
from batch.tls import (
    CIPHERS,
    TlsConfigError,
    client_context,
    expiry_warning,
    server_context,
)
from spine_sim import tls as sim_tls
from tests.pki_support import days_until_expiry, make_untrusted_client

# Guards against a hang if a handshake never completes; not a timing assertion.
SAFETY_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the PKI files ----------------------------------------------------------------------------------------


def test_file_names_and_key_permissions(pki: DevPki) -> None:
    assert sorted(p.name for p in pki.directory.iterdir()) == [
        "ca.key",
        "ca.pem",
        "cpis-batch.key",
        "cpis-batch.pem",
        "spine.key",
        "spine.pem",
    ]
    for key in (pki.ca_key, pki.spine_key, pki.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_ca_certificate(pki: DevPki) -> None:
    ca = _cert(pki.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject == ca.issuer


@pytest.mark.parametrize("which", ["spine", "client"])
def test_leaf_certificates(pki: DevPki, which: str) -> None:
    cert_path, key_path = (
        (pki.spine_cert, pki.spine_key) if which == "spine" else (pki.client_cert, pki.client_key)
    )
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(pki.ca_cert))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()


def test_existing_pki_is_reused_unless_overwrite(tmp_path: Path) -> None:
    first = make_dev_pki(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert make_dev_pki(tmp_path) == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    make_dev_pki(tmp_path, overwrite=True)
    assert first.ca_cert.read_bytes() != before["ca.pem"]


def test_broken_or_insufficient_pki_is_regenerated(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path)
    original_ca = pki.ca_cert.read_bytes()
    pki.spine_key.write_bytes(b"not a key")
    make_dev_pki(tmp_path)
    assert pki.ca_cert.read_bytes() != original_ca
    assert serialization.load_pem_private_key(pki.spine_key.read_bytes(), password=None)

    regenerated_ca = pki.ca_cert.read_bytes()
    make_dev_pki(tmp_path, hosts=("127.0.0.1", "spine.test"))  # a host the existing SANs lack
    assert pki.ca_cert.read_bytes() != regenerated_ca
    sans = _cert(pki.spine_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["spine.test"]


@pytest.mark.parametrize("hosts", [(), ("bad host",), ("-leading.example",)])
def test_invalid_hosts_are_refused(tmp_path: Path, hosts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        make_dev_pki(tmp_path, hosts=hosts)


def test_untrusted_client_is_not_issued_by_the_dev_ca(tmp_path: Path, pki: DevPki) -> None:
    cert_path, key_path = make_untrusted_client(tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert _cert(cert_path).issuer != _cert(pki.ca_cert).subject


def test_certs_prints_the_allowed_peers_entry_for_the_dev_spine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batch.cli import main
    from batch.peers import PeerPolicy, spki_pin

    assert main(["certs", str(tmp_path / "pki")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    table, _, assignment = line.partition(" ")
    assert table == "[inbound]"
    entries = tomllib.loads(assignment)["allowed_peers"]
    spine = _cert(tmp_path / "pki" / "spine.pem")
    assert entries == [spki_pin(spine)]
    policy = PeerPolicy.from_config(tuple(entries))
    assert policy.allows(spine.public_bytes(serialization.Encoding.DER))
    assert not policy.allows(
        _cert(tmp_path / "pki" / "cpis-batch.pem").public_bytes(serialization.Encoding.DER)
    )


# --- real handshakes --------------------------------------------------------------------------------------


@dataclass
class _EchoServer:
    port: int
    peer_subjects: list[str] = field(default_factory=list)


@asynccontextmanager
async def _echo_server(context: ssl.SSLContext) -> AsyncIterator[_EchoServer]:
    state = _EchoServer(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        state.peer_subjects.append(
            next((value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"), "")
        )
        try:
            writer.write(await reader.readexactly(4))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


async def _exchange(port: int, context: ssl.SSLContext, server_hostname: str = "localhost") -> bytes:
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=server_hostname
        )
        try:
            writer.write(b"ping")
            await writer.drain()
            # With TLS 1.3 a refused client certificate surfaces only on the first read.
            return await reader.readexactly(4)
        finally:
            writer.close()


REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


def _spine_server(pki: DevPki) -> ssl.SSLContext:
    # The simulator's own context stands in for Spine: the client context is checked against another side.
    return sim_tls.server_context(sim_tls.pki_files(pki.directory))


async def test_mutual_tls_handshake_succeeds(pki: DevPki) -> None:
    client = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    async with _echo_server(_spine_server(pki)) as server:
        assert await _exchange(server.port, client) == b"ping"
        assert await _exchange(server.port, client, server_hostname="127.0.0.1") == b"ping"
    assert server.peer_subjects == ["cpis-batch", "cpis-batch"]


async def test_client_without_certificate_is_refused(pki: DevPki) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=pki.ca_cert)
    async with _echo_server(_spine_server(pki)) as server:
        with pytest.raises(REFUSED):
            await _exchange(server.port, anonymous)
    assert server.peer_subjects == []


async def test_client_from_another_ca_is_refused(tmp_path: Path, pki: DevPki) -> None:
    cert, key = make_untrusted_client(tmp_path)
    # It trusts the right CA, so only its own certificate can be the reason for refusal.
    stranger = client_context(cert, key, pki.ca_cert)
    async with _echo_server(_spine_server(pki)) as server:
        with pytest.raises(REFUSED):
            await _exchange(server.port, stranger)
    assert server.peer_subjects == []


async def test_client_refuses_a_server_from_another_ca(tmp_path: Path, pki: DevPki) -> None:
    other = make_dev_pki(tmp_path / "other")
    client = client_context(pki.client_cert, pki.client_key, other.ca_cert)
    async with _echo_server(_spine_server(pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exchange(server.port, client)


async def test_hostname_is_checked_unless_disabled(pki: DevPki) -> None:
    strict = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    relaxed = client_context(pki.client_cert, pki.client_key, pki.ca_cert, check_hostname=False)
    async with _echo_server(_spine_server(pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exchange(server.port, strict, server_hostname="spine.example")
        assert await _exchange(server.port, relaxed, server_hostname="spine.example") == b"ping"
    assert relaxed.verify_mode == ssl.CERT_REQUIRED


def test_contexts_require_tls12_and_certificates(pki: DevPki) -> None:
    client = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    server = _spine_server(pki)
    for context in (client, server):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname


# --- our server context and the cipher list -------------------------------------------------------------

TLS12_SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
}


def _suites(context: ssl.SSLContext) -> tuple[set[str], set[str]]:
    """(TLS 1.2 suites, TLS 1.3 suites) the context would offer."""
    offered = context.get_ciphers()
    tls13 = {c["name"] for c in offered if c["protocol"] == "TLSv1.3"}
    return {c["name"] for c in offered} - tls13, tls13


def test_both_legs_offer_only_ecdhe_aes_gcm_on_tls12_and_tls13(pki: DevPki) -> None:
    assert set(CIPHERS.split(":")) == TLS12_SUITES
    for context in (
        client_context(pki.client_cert, pki.client_key, pki.ca_cert),
        server_context(pki.client_cert, pki.client_key, pki.ca_cert),
    ):
        tls12, tls13 = _suites(context)
        assert tls12 == TLS12_SUITES
        assert tls13 and all(name.startswith("TLS_") for name in tls13)


def test_the_server_context_requires_a_client_certificate_and_issues_no_tickets(pki: DevPki) -> None:
    server = server_context(pki.client_cert, pki.client_key, pki.ca_cert)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.options & ssl.OP_NO_TICKET
    assert server.num_tickets == 0


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_our_server_context_serves_our_client_context(pki: DevPki, version: ssl.TLSVersion) -> None:
    client = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    client.maximum_version = version
    async with _echo_server(server_context(pki.client_cert, pki.client_key, pki.ca_cert)) as server:
        assert await _exchange(server.port, client) == b"ping"
    assert server.peer_subjects == ["spine-sim"]


async def test_the_server_refuses_a_tls12_client_without_forward_secrecy(pki: DevPki) -> None:
    client = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("AES128-GCM-SHA256")  # RSA key exchange: no forward secrecy
    async with _echo_server(server_context(pki.client_cert, pki.client_key, pki.ca_cert)) as server:
        with pytest.raises(REFUSED):
            await _exchange(server.port, client)


async def test_the_server_sends_no_session_ticket(pki: DevPki) -> None:
    client = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    async with _echo_server(server_context(pki.client_cert, pki.client_key, pki.ca_cert)) as server:
        async with asyncio.timeout(SAFETY_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            ssl_object = writer.get_extra_info("ssl_object")
            # A TLS 1.3 ticket would have arrived before the echo; without one the session cannot resume.
            assert ssl_object.version() == "TLSv1.3"
            session = ssl_object.session
            assert session is None or not session.has_ticket
            writer.close()


def test_the_server_context_names_missing_files(tmp_path: Path, pki: DevPki) -> None:
    with pytest.raises(TlsConfigError, match=r"absent\.pem"):
        server_context(pki.client_cert, pki.client_key, tmp_path / "absent.pem")


# --- configuration errors ---------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path: Path, pki: DevPki) -> None:
    missing = tmp_path / "absent.pem"
    for args in (
        (missing, pki.client_key, pki.ca_cert),
        (pki.client_cert, missing, pki.ca_cert),
        (pki.client_cert, pki.client_key, missing),
    ):
        with pytest.raises(TlsConfigError, match=r"absent\.pem"):
            client_context(*args)


def test_unusable_files_are_named(tmp_path: Path, pki: DevPki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match=r"garbage\.pem.*certificate"):
        client_context(garbage, pki.client_key, pki.ca_cert)
    with pytest.raises(TlsConfigError, match=r"garbage\.pem.*certificate"):
        client_context(pki.client_cert, pki.client_key, garbage)
    with pytest.raises(TlsConfigError, match=r"garbage\.pem.*key"):
        client_context(pki.client_cert, garbage, pki.ca_cert)
    with pytest.raises(TlsConfigError, match="does not match"):
        client_context(pki.client_cert, pki.spine_key, pki.ca_cert)


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, pki: DevPki) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
    )
    with pytest.raises(TlsConfigError, match="encrypted") as caught:
        client_context(pki.client_cert, encrypted, pki.ca_cert)
    assert "secret-passphrase" not in str(caught.value)


# --- expiry -----------------------------------------------------------------------------------------------


def test_long_lived_certificate_has_no_warning(pki: DevPki) -> None:
    assert 824 < days_until_expiry(pki.client_cert) <= 825
    assert expiry_warning(pki.client_cert) is None


def test_short_lived_certificate_warns(tmp_path: Path) -> None:
    short = make_dev_pki(tmp_path, days=2)
    message = expiry_warning(short.client_cert)
    assert message is not None
    assert "cpis-batch.pem" in message and "expires in" in message
    assert expiry_warning(short.client_cert, within_days=1) is None


def test_expired_certificate_warns(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10))
        .not_valid_after(now - timedelta(days=3))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "expired.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert days_until_expiry(path) < -2
    message = expiry_warning(path)
    assert message is not None and "expired" in message
