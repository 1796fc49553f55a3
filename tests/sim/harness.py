"""A simulated Spine in the test's own event loop, driven by the client's real builders and parsers.

The product's code plays cpis-batch (query builder, ebXML envelope, reply parser, acknowledgement); the
simulator's own code plays Spine. Each side checks the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import anyio
import anyio.abc
import httpx

from batch.ebxml import (
    ACTION_QUERY,
    SERVICE,
    EbxmlMessage,
    MessageHeader,
    build_acknowledgement,
    build_message,
    parse_message,
    utc_timestamp,
)
from batch.hl7 import Sender, build_query, parse_reply
from batch.ids import new_id
from batch.pki import DevPki
from batch.tls import client_context
from batch.xmlsafe import parse_xml
from spine_sim import tls as sim_tls
from spine_sim.answers import SimIdentity
from spine_sim.arrivals import Arrival
from spine_sim.dataset import (
    LOCAL_AUTHORITIES,
    Access,
    AppAckError,
    Child,
    ChildRecord,
    Dataset,
    Plan,
    QueryFailed,
    check_digit,
)
from spine_sim.faults import FaultConfig
from spine_sim.http11 import Exchange, Request, Response, listen_tcp, serve_tls
from spine_sim.reply_client import ReplyConnections
from spine_sim.server import QUERY_PATH, STATS_PATH, SimServer, SimSettings

CLIENT_PARTY = "TESTCLIENT-0000001"
SIM = SimIdentity()
SENDER = Sender(
    asid="999000000002",
    ods_code="X99TST",
    organisation_name="Test Clinic Trust (simulated)",
    responsible_person_name="Dr Ada Testperson",
    role_code="R8000",
    role_name="Clinical Practitioner Access Role",
)
WAIT_S = 20.0  # upper bound for awaited events, so that a broken test fails instead of hanging


def number(stem: str) -> str:
    digit = check_digit(stem)
    assert digit is not None
    return f"{stem}{digit}"


FLAGGED = number("999123401")
TWO_RECORDS = number("999123402")
UNBORN = number("999123403")
NOT_ON_CPIS = number("999123404")
NF_NUMBER = number("999123405")
QUQI_ERROR = number("999123406")
MCCI_ERROR = number("999123407")
UNLISTED = number("999123409")
ACCESS_ID = "0F5E2C1A-7B3D-4E9F-8A6B-1C2D3E4F5A6B"


def small_dataset() -> Dataset:
    las = {la.code: la for la in LOCAL_AUTHORITIES[:2]}
    access = (
        Access(datetime(2026, 3, 1, 10, 15), "Northbridge General Hospital (simulated)", "Nurse", ACCESS_ID),
    )
    children = {
        FLAGGED: Child(
            FLAGGED,
            "Ada",
            "Simwell",
            date(2019, 5, 4),
            (
                ChildRecord(
                    "SIMLA01",
                    "child",
                    (Plan("CPP", date(2024, 1, 15), None), Plan("LAC", date(2023, 2, 1), date(2025, 6, 30))),
                ),
            ),
            access,
        ),
        TWO_RECORDS: Child(
            TWO_RECORDS,
            "Bryn",
            "Testbury",
            date(2020, 8, 9),
            (
                ChildRecord("SIMLA01", "child", (Plan("CPP", date(2025, 3, 1), date(2027, 9, 30)),)),
                ChildRecord("SIMLA02", "child", (Plan("LAC", date(2022, 7, 7), None),)),
            ),
        ),
        UNBORN: Child(
            UNBORN,
            "Cora",
            "Mockford",
            date(1996, 2, 2),
            (ChildRecord("SIMLA02", "unborn", (Plan("UCP", date(2026, 5, 1), date(2027, 1, 31)),)),),
        ),
        NOT_ON_CPIS: Child(NOT_ON_CPIS, "Dara", "Fakeham", date(2018, 1, 1)),
    }
    errors: dict[str, QueryFailed | AppAckError] = {
        QUQI_ERROR: QueryFailed(code="SIMQE01", display="Simulated query processing error"),
        MCCI_ERROR: AppAckError(code="SIMAE01", display="Simulated application rejection"),
    }
    not_found = {NF_NUMBER: QueryFailed(code="SIMNF01", display="Query returned no data", response_code="NF")}
    return Dataset(las, children, errors, not_found)


# --- a tiny inbound endpoint playing cpis-batch's receiver -------------------------------------------------


@dataclass
class Received:
    message: EbxmlMessage
    body: bytes

    @property
    def header(self) -> MessageHeader:
        return self.message.header


@dataclass
class Receiver:
    """Acknowledges every reply (or answers ``status`` without one) and hands each to the test in order.

    ``keep_alive`` False answers ``Connection: close``, as cpis-batch's endpoint does today; ``drop_after``
    closes the connection (with a reset) right after answering, as a keep-alive timeout would, unannounced.
    """

    ssl_context: Any
    status: int = 200
    keep_alive: bool = True
    drop_after: bool = False
    received: list[Received] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Received](max_buffer_size=100)

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        await serve_tls(_Counting(listener, self), self.ssl_context, self.handle)

    async def handle(self, request: Request, exchange: Exchange) -> None:
        message = parse_message(
            request.headers.get("content-type", ""), request.body, request.headers.get("soapaction")
        )
        item = Received(message, request.body)
        self.received.append(item)
        await self._send.send(item)
        close = not self.keep_alive
        if self.status != 200:
            await exchange.respond(Response(self.status, b"refused\n", "text/plain", close=close))
        else:
            ack = build_acknowledgement(
                message.header, our_party_key=CLIENT_PARTY, ack_message_id=new_id(), now=datetime.now(UTC)
            )
            await exchange.respond(Response(200, ack, "text/xml; charset=UTF-8", close=close))
        if self.drop_after:
            await exchange.reset()

    async def next(self) -> Received:
        with anyio.fail_after(WAIT_S):
            return await self._receive.receive()


class _Counting(anyio.abc.Listener[anyio.abc.SocketStream]):
    """Counts the TCP connections the receiver accepts, to tell a new connection from a reused one."""

    def __init__(self, inner: anyio.abc.Listener[anyio.abc.SocketStream], receiver: Receiver) -> None:
        self._inner = inner
        self._receiver = receiver

    async def serve(
        self,
        handler: Callable[[anyio.abc.SocketStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        async def counted(stream: anyio.abc.SocketStream) -> None:
            self._receiver.connections += 1
            await handler(stream)

        await self._inner.serve(counted, task_group)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self._inner.extra_attributes


@dataclass
class Harness:
    server: SimServer
    receiver: Receiver
    http: httpx.AsyncClient
    pki: DevPki
    arrivals: list[Arrival]

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(STATS_PATH)
        response.raise_for_status()
        return dict(response.json())

    def client(self) -> httpx.AsyncClient:
        """Another client, on connections of its own."""
        return spine_client(self.pki, self.server.url)


def spine_client(pki: DevPki, url: str) -> httpx.AsyncClient:
    """cpis-batch's side of the query leg: its certificate, trusting the CA."""
    verify = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    return httpx.AsyncClient(verify=verify, base_url=url, timeout=WAIT_S)


def sim_server(pki: DevPki, settings: SimSettings, arrivals: list[Arrival] | None = None) -> SimServer:
    files = sim_tls.pki_files(pki.directory)
    return SimServer(
        settings,
        server_ssl=sim_tls.server_context(files),
        client_ssl=sim_tls.client_context(files),
        on_arrival=None if arrivals is None else arrivals.append,
    )


def receiver_for(pki: DevPki, **options: Any) -> Receiver:
    files = sim_tls.TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert)
    return Receiver(sim_tls.server_context(files), **options)


@asynccontextmanager
async def running_spine(
    pki: DevPki,
    *,
    dataset: Dataset | None = None,
    faults: FaultConfig | None = None,
    latency_s: float = 0.0,
    ack_delay_s: float = 0.0,
    reply_connections: ReplyConnections = "new",
    receiver_status: int = 200,
    receiver_keep_alive: bool = True,
    receiver_drop_after: bool = False,
) -> AsyncIterator[Harness]:
    receiver = receiver_for(
        pki, status=receiver_status, keep_alive=receiver_keep_alive, drop_after=receiver_drop_after
    )
    arrivals: list[Arrival] = []
    async with anyio.create_task_group() as task_group:
        listener, receiver_port = await listen_tcp("127.0.0.1", 0)
        task_group.start_soon(receiver.serve, listener)
        settings = SimSettings(
            dataset=dataset or small_dataset(),
            reply_url=f"https://127.0.0.1:{receiver_port}/cpis/inbound",
            latency_s=latency_s,
            faults=faults or FaultConfig(),
            ack_delay_s=ack_delay_s,
            reply_connections=reply_connections,
        )
        server = sim_server(pki, settings, arrivals)
        await task_group.start(server.serve)
        async with spine_client(pki, server.url) as http:
            yield Harness(server, receiver, http, pki, arrivals)
        task_group.cancel_scope.cancel()


# --- queries as cpis-batch builds them ---------------------------------------------------------------------


@dataclass(frozen=True)
class SentQuery:
    message_id: str
    conversation_id: str
    response: httpx.Response


def query_hl7(nhs_number: str, message_id: str) -> bytes:
    return build_query(
        nhs_number=nhs_number,
        message_id=message_id,
        query_id=new_id(),
        sender=SENDER,
        spine_asid=SIM.asid,
        now=datetime.now(UTC),
    )


def envelope(
    hl7: bytes, message_id: str, conversation_id: str, *, to_party: str = SIM.party_key, cpa_id: str = SIM.cpa_id,
    action: str = ACTION_QUERY,
) -> tuple[dict[str, str], bytes]:  # fmt: skip
    header = MessageHeader(
        from_party=CLIENT_PARTY,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation_id,
        service=SERVICE,
        action=action,
        message_id=message_id,
        timestamp=utc_timestamp(datetime.now(UTC)),
    )
    return build_message(header, hl7)


async def send_query(
    http: httpx.AsyncClient,
    nhs_number: str,
    *,
    edit_hl7: Callable[[bytes], bytes] | None = None,
    **envelope_fields: str,
) -> SentQuery:
    message_id, conversation_id = new_id(), new_id()
    hl7 = query_hl7(nhs_number, message_id)
    if edit_hl7 is not None:
        hl7 = edit_hl7(hl7)
    headers, body = envelope(hl7, message_id, conversation_id, **envelope_fields)
    response = await http.post(QUERY_PATH, content=body, headers=headers)
    return SentQuery(message_id, conversation_id, response)


def accepted(sent: SentQuery) -> None:
    assert sent.response.status_code == 202
    assert sent.response.content == b""


def fault_codes(body: bytes) -> list[str]:
    """The nasp:errorCode values of a SOAP fault, read off the wire."""
    ns = {"nasp": "http://national.carerecords.nhs.uk/schema/"}
    return [e.text or "" for e in parse_xml(body).iterfind(".//nasp:errorList/nasp:error/nasp:errorCode", ns)]


def reply_of(received: Received) -> Any:
    assert received.message.hl7 is not None
    return parse_reply(received.message.hl7)


def only(name: str, **settings: Any) -> FaultConfig:
    """Exactly one fault, hitting every query."""
    return FaultConfig(rates={name: 1.0}, seed=7, **settings)
