"""The simulated Spine server: accepts CP-IS queries over mutual TLS and answers them asynchronously.

``POST /reliablemessaging/reliablerequest`` takes a ``QUPC_IN000006GB01`` query and answers HTTP 202 with an
empty body (after ``ack_delay_s``); the reply goes to the client's inbound URL over mutual TLS after the
configured latency. ``GET /_sim/stats`` and ``POST /_sim/reset`` expose and zero the counters.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import anyio.abc

from spine_sim.answers import QueryContext, ReplyFactory, SimIdentity
from spine_sim.arrivals import Arrival
from spine_sim.dataset import Dataset
from spine_sim.delivery import Delivery, Dispatcher, ReplyPoster
from spine_sim.ebxml import (
    ACTION_QUERY,
    SERVICE,
    SIGNAL_CONTENT_TYPE,
    EbxmlReadError,
    MessageHeader,
    read_message,
)
from spine_sim.faults import FaultConfig, FaultDecider, FaultDecision
from spine_sim.http11 import Exchange, Request, Response, listen_tcp, serve_tls
from spine_sim.ids import new_id
from spine_sim.query import ParsedQuery, QueryReadError, parse_query
from spine_sim.reply_client import REPLY_CONNECTIONS, ReplyClient, ReplyConnections
from spine_sim.signals import build_soap_fault, build_sync_message_error
from spine_sim.stats import SimStats

log = logging.getLogger(__name__)

QUERY_PATH = "/reliablemessaging/reliablerequest"
STATS_PATH = "/_sim/stats"
RESET_PATH = "/_sim/reset"

# The detector keeps its own literal rather than importing the client's constant: a client bug that changed
# the constant must still be caught here (docs/decisions.md#d1).
_SCHEDULED_CARE = ("false",)
# Spine's query-check error names (docs/protocol.md#p5); both are permanent, so the client does not resend.
_MISSING_DATA_FAULT = "ErrorBase1712.MANDATORY_DATA_MISSING"
_BAD_SENDER_FAULT = "ErrorBase1732.INVALID_COMM_FUNC_SND"
_ASID = re.compile(r"[0-9]{12}", re.ASCII)


@dataclass(frozen=True)
class SimSettings:
    dataset: Dataset
    reply_url: str
    identity: SimIdentity = field(default_factory=SimIdentity)
    latency_s: float = 0.05
    faults: FaultConfig = field(default_factory=FaultConfig)
    host: str = "127.0.0.1"
    port: int = 0
    reply_timeout_s: float = 30.0
    # The 202's way back over the network: the connection is held open this long before it is answered.
    ack_delay_s: float = 0.0
    reply_connections: ReplyConnections = "new"

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.ack_delay_s < 0 or self.reply_timeout_s <= 0:
            raise ValueError("latency_s and ack_delay_s must be >= 0 and reply_timeout_s > 0")
        if not self.reply_url.startswith("https://"):
            raise ValueError("reply_url must be an https:// URL (the reply leg is mutual TLS)")
        if self.reply_connections not in REPLY_CONNECTIONS:
            raise ValueError(f"reply_connections must be one of {', '.join(REPLY_CONNECTIONS)}")


@dataclass(frozen=True)
class HeaderProblem:
    error_code: str
    description: str


class SimServer:
    """One simulated Spine. ``await task_group.start(server.serve)`` returns the bound port.

    ``on_arrival`` is called once for every query POST, as soon as it is known whether it is accepted.
    """

    def __init__(
        self,
        settings: SimSettings,
        *,
        server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext,
        on_arrival: Callable[[Arrival], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = SimStats()
        self.port: int | None = None
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._on_arrival = on_arrival
        self._factory = ReplyFactory(settings.dataset, settings.identity)
        self._decider = FaultDecider(settings.faults)
        self._poster: ReplyPoster | None = None
        self._deliveries: anyio.abc.ObjectSendStream[Delivery] | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not listening yet")
        host = self.settings.host
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def listen(self) -> int:
        """Bind the listening socket now (a failure raises OSError here) and return its port."""
        if self._listener is None:
            self._listener, self.port = await listen_tcp(self.settings.host, self.settings.port)
        assert self.port is not None
        return self.port

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the port once queries can be sent."""
        settings = self.settings
        await self.listen()
        assert self._listener is not None and self.port is not None
        send, receive = anyio.create_memory_object_stream[Delivery](max_buffer_size=1024)
        client = ReplyClient(
            settings.reply_url,
            self._client_ssl,
            connections=settings.reply_connections,
            timeout_s=settings.reply_timeout_s,
        )
        # The send stream outlives the task group, which keeps running after this body has returned.
        try:
            async with send, anyio.create_task_group() as task_group:
                self._poster = ReplyPoster(client, self.stats)
                await task_group.start(Dispatcher(self._poster, settings.faults).run, receive)
                self._deliveries = send
                task_group.start_soon(
                    partial(serve_tls, on_handshake_failure=self.stats.handshake_failed),
                    self._listener,
                    self._server_ssl,
                    self._handle,
                )
                log.info(
                    "simulated Spine ready: %d numbers in the dataset (%d flagged); faults %s; replies on %s "
                    "connections",
                    len(settings.dataset.nhs_numbers()),
                    len(settings.dataset.flagged_numbers()),
                    ", ".join(f"{n}={r}" for n, r in sorted(settings.faults.rates.items()) if r) or "none",
                    settings.reply_connections,
                )
                task_status.started(self.port)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def wait_for_stats(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait until the stats snapshot satisfies ``condition``, and return that snapshot."""
        while True:
            snapshot = self.stats.snapshot()
            if condition(snapshot):
                return snapshot
            changed = anyio.Event()
            self.stats.listeners.append(changed.set)
            try:
                await changed.wait()
            finally:
                self.stats.listeners.remove(changed.set)

    async def _handle(self, request: Request, exchange: Exchange) -> None:
        routes = {QUERY_PATH: "POST", STATS_PATH: "GET", RESET_PATH: "POST"}
        method = routes.get(request.path)
        if method is None:
            await exchange.respond(Response(404, b"not found\n", "text/plain"))
        elif request.method != method:
            await exchange.respond(Response(405, b"method not allowed\n", "text/plain"))
        elif request.path == QUERY_PATH:
            self.stats.query_arrived(anyio.current_time())
            try:
                await self._query(request, exchange)
            finally:
                self.stats.query_done()
        else:
            if request.path == RESET_PATH:
                self.stats.reset()
                log.info("counters reset")
            body = json.dumps(self.stats.snapshot(), indent=2).encode()
            await exchange.respond(Response(200, body, "application/json"))

    def _arrived(
        self,
        request: Request,
        *,
        accepted: bool,
        message_id: str | None = None,
        parsed: ParsedQuery | None = None,
        fault: str | None = None,
    ) -> None:
        if self._on_arrival is not None:
            nhs_number = parsed.nhs_number if parsed is not None else None
            self._on_arrival(Arrival(request.received_at, message_id or None, nhs_number, accepted, fault))

    def _check_header(self, header: MessageHeader) -> HeaderProblem | None:
        identity = self.settings.identity
        if header.to_party != identity.party_key:
            return HeaderProblem("ValueNotRecognized", "501314:Invalid To Party Type attribute")
        if header.cpa_id != identity.cpa_id:
            return HeaderProblem("ValueNotRecognized", "501319:Unknown eb:CPAId")
        if header.service != SERVICE or header.action != ACTION_QUERY:
            return HeaderProblem("NotSupported", "eb:Service/eb:Action not supported")
        if not header.from_party or not header.conversation_id:
            return HeaderProblem("Inconsistent", "eb:From or eb:ConversationId is missing")
        return None

    def _message_error(self, header: MessageHeader, problem: HeaderProblem) -> bytes:
        return build_sync_message_error(
            header.message_id,
            from_party=self.settings.identity.party_key,
            to_party=header.from_party,
            cpa_id=header.cpa_id,
            conversation_id=header.conversation_id,
            error_code=problem.error_code,
            description=problem.description,
            message_id=new_id(),
            now=datetime.now(UTC),
        )

    async def _reject(self, exchange: Exchange, response: Response) -> None:
        self.stats.query_rejected()
        await exchange.respond(response)

    async def _query(self, request: Request, exchange: Exchange) -> None:
        try:
            message = read_message(request.headers.get("content-type", ""), request.body)
        except EbxmlReadError as exc:
            # Without a readable header there is no MessageId to refer a MessageError to.
            log.info("query refused: unreadable ebXML message (%s)", exc)
            self._arrived(request, accepted=False)
            await self._reject(exchange, Response(400, b"unreadable ebXML message\n", "text/plain"))
            return
        header = message.header
        parsed = _read_hl7(message.hl7)
        arrived = partial(self._arrived, request, message_id=header.message_id, parsed=parsed)
        if not header.message_id:
            arrived(accepted=False)
            await self._reject(exchange, Response(400, b"ebXML message without eb:MessageId\n", "text/plain"))
            return
        problem = self._check_header(header)
        if problem is not None:
            log.info("query %s refused: %s", header.message_id, problem.description)
            arrived(accepted=False)
            await self._reject(
                exchange, Response(500, self._message_error(header, problem), SIGNAL_CONTENT_TYPE)
            )
            return
        context = _context(parsed, header)
        if isinstance(context, str):
            log.info("query %s refused: HL7 payload missing, unreadable or incomplete", header.message_id)
            arrived(accepted=False)
            fault = build_soap_fault([context], "HL7 query payload missing, unreadable or incomplete")
            await self._reject(exchange, Response(500, fault, SIGNAL_CONTENT_TYPE))
            return
        assert parsed is not None
        decision = self._decider.decide(
            context.nhs_number, self.stats.occurrence(context.nhs_number, header.message_id)
        )
        self.stats.faults(decision.injected)
        arrived(accepted=decision.reject is None, fault=",".join(decision.injected) or None)
        if decision.reject is not None:
            await self._inject_rejection(exchange, header, decision)
            return
        await self._accept(exchange, context, parsed.scheduled_care_flags, decision)

    async def _inject_rejection(
        self, exchange: Exchange, header: MessageHeader, decision: FaultDecision
    ) -> None:
        self.stats.query_rejected()
        if decision.reject == "connection_reset":
            await exchange.reset()
        elif decision.soap_fault_code is not None:
            fault = build_soap_fault([decision.soap_fault_code], "Simulated Spine processing failure")
            await exchange.respond(Response(500, fault, SIGNAL_CONTENT_TYPE))
        else:
            problem = HeaderProblem("Unknown", "Simulated MessageError (fault injection)")
            body = self._message_error(header, problem)
            await exchange.respond(Response(decision.message_error_status, body, SIGNAL_CONTENT_TYPE))

    async def _accept(
        self, exchange: Exchange, context: QueryContext, flags: tuple[str, ...], decision: FaultDecision
    ) -> None:
        assert self._poster is not None and self._deliveries is not None
        settings = self.settings
        self.stats.query_accepted()
        if flags != _SCHEDULED_CARE:
            # CP-IS would have sent the local authority an Access to Service Notification.
            self.stats.notification()
            log.warning(
                "query %s was not scheduled care: local-authority notification recorded",
                context.header.message_id,
            )
        replies = self._factory.replies_for(context, decision, datetime.now(UTC))
        self.stats.replies_scheduled(len(replies))
        if decision.reply_before_accept:
            await self._poster.post_in_order(replies)
            replies = []
        if decision.slow_accept:
            await anyio.sleep(settings.faults.slow_accept_s)
        # The query is Spine's now: it is answered even when the client gives up waiting for the 202, and its
        # latency runs from here, so a reply may overtake a delayed 202.
        if replies:
            delay = settings.faults.late_delay_s if decision.late_reply else settings.latency_s
            try:
                await self._deliveries.send(Delivery(replies, delay, hold=decision.reorder_replies))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.stats.replies_abandoned(len(replies))
        if settings.ack_delay_s > 0:
            await anyio.sleep(settings.ack_delay_s)
        await exchange.respond(Response(202))


def _read_hl7(hl7: bytes | None) -> ParsedQuery | None:
    if hl7 is None:
        return None
    try:
        return parse_query(hl7)
    except QueryReadError:
        return None


def _context(parsed: ParsedQuery | None, header: MessageHeader) -> QueryContext | str:
    """The accepted query's context, or the SOAP fault code refusing it."""
    if parsed is None or not parsed.nhs_number:
        return _MISSING_DATA_FAULT
    if parsed.sender_asid is None or not _ASID.fullmatch(parsed.sender_asid):
        return _BAD_SENDER_FAULT
    return QueryContext(
        header=header,
        nhs_number=parsed.nhs_number,
        client_asid=parsed.sender_asid,
        hl7_message_id=parsed.message_id or header.message_id,
    )
