"""Outbound leg: one mutual-TLS HTTP client per run that POSTs ebXML messages to Spine.

The transport resends the identical bytes (same M) after connect failures, retriable SOAP faults and
502/503/504, with exponential back-off and jitter (docs/decisions.md#d10), each resend in its own rate slot.
It never resends after a read timeout: Spine may already hold the query, so the reply timeout decides.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import stamina

from batch.config import HttpConfig, SpineConfig
from batch.ebxml import Accepted, classify_sync_answer
from batch.hl7 import assert_scheduled_care
from batch.ratelimit import RateSlot, SlidingWindowLimiter
from batch.spine_http import SpineHTTPTransport

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class OutboundQuery:
    """One attempt's ebXML message, ready to POST."""

    message_id: str
    headers: dict[str, str]
    body: bytes
    hl7: bytes


@dataclass(frozen=True)
class SendAccepted:
    """Spine took the query (HTTP 202 or an MSH acknowledgement)."""


@dataclass(frozen=True)
class SendRejected:
    """Spine answered with a permanent error: the child ends as `error` with this code."""

    code: str
    description: str


@dataclass(frozen=True)
class SendUnanswered:
    """No usable HTTP answer. `maybe_delivered` means the request went out (read timeout)."""

    reason: str
    maybe_delivered: bool


SendResult = SendAccepted | SendRejected | SendUnanswered


class SpineSender(Protocol):
    """What the query pipeline needs from the outbound leg."""

    async def send(self, query: OutboundQuery, slot: RateSlot) -> SendResult:
        """POST the query in `slot` (resends take slots of their own) and say what Spine made of it.

        Raises UnsafeQueryError, without sending, for a query lacking the scheduled-care flag.
        """
        ...


class _Retry(Exception):
    """Raised inside the retry loop for an outcome worth resending; carries the last result."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(type(result).__name__)
        self.result = result


class _Trace:
    """httpcore trace hook for one POST: holds the request at its rate slot's gate just before the head goes
    out, and reports the round trip when Spine's answer head has arrived."""

    __slots__ = ("_slot",)

    def __init__(self, slot: RateSlot) -> None:
        self._slot = slot

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_headers.started":
            await self._slot.go()
        elif event == "http11.receive_response_headers.complete" and self._slot.sent_at is not None:
            self._slot.answered(anyio.current_time() - self._slot.sent_at)


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The answer's body, or None when it is larger than MAX_ANSWER_BYTES (read no further than that)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class SpineTransport:
    """Posts prepared ebXML messages; paced by the shared limiter."""

    def __init__(
        self,
        *,
        spine: SpineConfig,
        http: HttpConfig,
        ssl_context: ssl.SSLContext,
        limiter: SlidingWindowLimiter,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._spine = spine
        self._http = http
        self._limiter = limiter
        # The transport is called directly, not through httpx.AsyncClient: nothing here wants cookies, auth,
        # redirects, default headers or proxy variables (which must never reroute patient queries), and the
        # client's per-request work was about a tenth of this process's CPU per child.
        self._transport = transport or SpineHTTPTransport(
            spine.url,
            ssl_context,
            max_connections=max_connections,
            connect_timeout_s=http.connect_timeout_s,
            read_timeout_s=http.response_timeout_s,
            max_body=MAX_ANSWER_BYTES,
        )
        self._url = httpx.URL(spine.url)
        self.posts_made = 0

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> SpineTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, query: OutboundQuery, slot: RateSlot) -> SendResult:
        # Fail closed: nothing leaves without the scheduled-care flag set to false (docs/decisions.md#d1).
        assert_scheduled_care(query.hl7)
        next_slot: RateSlot | None = slot
        try:
            async for attempt in stamina.retry_context(
                on=_Retry,
                attempts=self._http.transport_retries + 1,
                wait_initial=self._http.backoff_s,
                wait_exp_base=2.0,
                wait_jitter=0.2 * self._http.backoff_s,
                wait_max=30 * self._http.backoff_s,
                timeout=None,
            ):
                with attempt:
                    current = next_slot or await self._limiter.acquire()
                    next_slot = None
                    result, retriable = await self._post_once(query, current)
                    if retriable:
                        raise _Retry(result)
                    return result
        except _Retry as exc:
            return exc.result
        raise AssertionError("unreachable: retry_context always returns or raises")

    async def _post_once(self, query: OutboundQuery, slot: RateSlot) -> tuple[SendResult, bool]:
        self.posts_made += 1
        request = httpx.Request(
            "POST", self._url, headers=query.headers, content=query.body, extensions={"trace": _Trace(slot)}
        )
        try:
            response = await self._transport.handle_async_request(request)
            try:
                body = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.ConnectError:
            return SendUnanswered("connect_failed", maybe_delivered=False), True
        except httpx.ConnectTimeout:
            return SendUnanswered("connect_timeout", maybe_delivered=False), True
        except (httpx.ReadTimeout, httpx.WriteTimeout):
            return SendUnanswered("response_timeout", maybe_delivered=True), False
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            # The connection dropped mid-exchange: Spine may or may not have the query. Resending the same
            # M is what docs/decisions.md#d10 allows for a connection failure.
            return SendUnanswered("connection_lost", maybe_delivered=False), True
        except httpx.HTTPError as exc:
            return SendUnanswered(type(exc).__name__, maybe_delivered=False), True
        finally:
            # A request that failed before its head went out still used its slot.
            slot.sent()
        if body is None:
            # Spine's synchronous answers are a few kilobytes; this is not one, and proves nothing.
            return SendRejected("oversized_response", f"answer over {MAX_ANSWER_BYTES} bytes"), False
        answer = classify_sync_answer(response.status_code, response.headers.get("content-type"), body)
        if isinstance(answer, Accepted):
            return SendAccepted(), False
        if answer.retriable:
            return SendUnanswered(f"retriable:{answer.code}", maybe_delivered=False), True
        return SendRejected(answer.code, answer.description), False
