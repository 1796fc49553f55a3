"""Shared by the inbound tests: a test CA with extra identities, the endpoint in-process, raw TLS clients."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.abc
import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batch.config import InboundConfig
from batch.correlate import ReplyProcessor, SideQuota
from batch.ebxml import MessageHeader, build_message, utc_timestamp
from batch.ids import new_id
from batch.inbound import InboundApp, InboundLimits, InboundServer, bind_socket, serve_inbound
from batch.peers import PeerPolicy, spki_pin
from batch.pki import DevPki, make_dev_pki
from batch.store import Store
from batch.tls import client_context, server_context

SAFETY_S = 30.0
"""Guards against a hang; never a timing assertion."""
PATH = "/cpis/replies"
OUR_PARTY, SPINE_PARTY, CPA_ID = "SIMCLINIC-0000101", "SIMSPINE-0000001", "S1SIMCPIS0001"
SERVICE = "urn:nhs:names:services:cpisquery"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    @property
    def pin(self) -> str:
        return spki_pin(self.certificate)

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


@dataclass(frozen=True)
class InboundCa:
    pki: DevPki
    spine: Identity
    ours: Identity
    intruder: Identity
    """Issued by the same CA as Spine's certificate, to someone else: the CA vouches for it, we must not."""


def issue(pki: DevPki, common_name: str, directory: Path) -> Identity:
    """A client certificate from the development CA with its own subject and key."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Another NHS-connected system"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    identity = Identity(directory / f"{common_name}.pem", directory / f"{common_name}.key")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity


def make_inbound_ca(directory: Path) -> InboundCa:
    pki = make_dev_pki(directory / "pki")
    return InboundCa(
        pki=pki,
        spine=Identity(pki.spine_cert, pki.spine_key),
        ours=Identity(pki.client_cert, pki.client_key),
        intruder=issue(pki, "intruder.example", directory / "intruder"),
    )


def client_tls(ca: InboundCa, who: Identity) -> ssl.SSLContext:
    return client_context(who.cert, who.key, ca.pki.ca_cert)


@dataclass
class Endpoint:
    port: int
    app: InboundApp
    server: InboundServer
    store: Store
    processor: ReplyProcessor
    state: Path
    resolved: list[tuple[str, str]] = field(default_factory=list)
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    stopped: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{PATH}"

    async def stop(self) -> None:
        """Stop serving, as the job does once every child has an outcome, and wait until serving has ended."""
        self.stop_requested.set()
        with anyio.fail_after(SAFETY_S):
            await self.stopped.wait()


@asynccontextmanager
async def serving(
    directory: Path,
    ca: InboundCa,
    *,
    allowed: tuple[str, ...] | None = None,
    limits: InboundLimits | None = None,
    quota: SideQuota | None = None,
) -> AsyncIterator[Endpoint]:
    """The endpoint with a real store, in this task (a yield fixture would open the task group elsewhere)."""
    state = directory / "state.sqlite"
    resolved: list[tuple[str, str]] = []
    async with Store.open(state) as store:
        processor = ReplyProcessor(
            store,
            our_party_key=OUR_PARTY,
            spine_party_key=SPINE_PARTY,
            spine_cpa_id=CPA_ID,
            not_found_codes=frozenset({"NHSNCC002"}),
            on_resolved=lambda run, nhs: resolved.append((run, nhs)),
            side_quota=quota,
        )
        app = InboundApp(processor, PATH, limits=limits)
        sock = bind_socket(InboundConfig(host="127.0.0.1", port=0, path=PATH))
        port = int(sock.getsockname()[1])
        tls = server_context(ca.ours.cert, ca.ours.key, ca.pki.ca_cert)
        stop, stopped = anyio.Event(), anyio.Event()

        async def serve(*, task_status: anyio.abc.TaskStatus[InboundServer]) -> None:
            try:
                await serve_inbound(
                    app, sock, tls, PeerPolicy.from_config(allowed), stop, task_status=task_status
                )
            finally:
                stopped.set()

        async with anyio.create_task_group() as tg:
            server = await tg.start(serve)
            yield Endpoint(port, app, server, store, processor, state, resolved, stop, stopped)
            stop.set()


def reply(
    *,
    hl7: bytes = b"<QUQI_IN010000UK14 xmlns='urn:hl7-org:v3'/>",
    ref_to: str | None = None,
    conversation: str | None = None,
    from_party: str = SPINE_PARTY,
    cpa_id: str = CPA_ID,
    action: str = "QUQI_IN010000UK14",
    message_id: str | None = None,
) -> tuple[dict[str, str], bytes, str]:
    """An ebXML reply as Spine would post it (by default an orphan: it refers to nothing we sent)."""
    message_id = message_id or new_id()
    header = MessageHeader(
        from_party=from_party,
        to_party=OUR_PARTY,
        cpa_id=cpa_id,
        conversation_id=conversation or new_id(),
        service=SERVICE,
        action=action,
        message_id=message_id,
        timestamp=utc_timestamp(datetime.now(UTC)),
        ref_to_message_id=ref_to or new_id(),
    )
    headers, body = build_message(header, hl7)
    return headers, body, message_id


# --- raw clients ----------------------------------------------------------------------------------------


async def connect_tls(port: int, context: ssl.SSLContext) -> anyio.abc.ByteStream:
    with anyio.fail_after(SAFETY_S):
        return await anyio.connect_tcp("127.0.0.1", port, ssl_context=context, tls_standard_compatible=False)


async def closed_by_peer(stream: anyio.abc.ByteStream) -> bytes:
    """Read until the server ends the connection; returns whatever it sent first."""
    received = bytearray()
    with anyio.fail_after(SAFETY_S):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return bytes(received)


def request_head(
    length: int | None,
    *,
    content_type: str = 'multipart/related; boundary="b"',
    extra: dict[str, str] | None = None,
    chunked: bool = False,
) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(stream: anyio.abc.ByteStream) -> RawResponse:
    """One HTTP/1.1 response, read with h11 (the server's own parser is not the judge of its output)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    status, headers, body = 0, {}, bytearray()
    with anyio.fail_after(SAFETY_S):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                try:
                    client.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    client.receive_data(b"")
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return RawResponse(status, headers, bytes(body))
