"""The ASGI app of the reply endpoint: one POST path, bounded bodies, then the reply workflow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from batch.correlate import HttpAnswer, ReplyProcessor
from batch.inbound.limits import InboundLimits, Refusal, Refusals
from batch.inbound.server import CONNECTION_STATE_KEY, Connection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = "text/plain; charset=UTF-8"


class _TooLarge(Exception):
    pass


def _plain(status: int, text: str) -> HttpAnswer:
    return HttpAnswer(status, _TEXT, text.encode("ascii"))


class InboundApp:
    """Accepts POSTs on the configured path and hands them to the reply processor.

    Anything refused here (wrong path or method, an upgrade, a body over the limit) is answered with
    `Connection: close`, so no unread body is ever taken for the next request. Replies keep the connection.
    """

    def __init__(self, processor: ReplyProcessor, path: str, *, limits: InboundLimits | None = None) -> None:
        self.processor = processor
        self.limits = limits or InboundLimits()
        self.refusals = Refusals()
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        connection: Connection | None = (scope.get("state") or {}).get(CONNECTION_STATE_KEY)
        if connection is not None:
            connection.request_started()
        try:
            answer, close = await self._answer(scope, receive, connection)
            if answer is not None:
                closing = close or (
                    connection is not None and (connection.closing or connection.over_capacity)
                )
                await _respond(send, answer, close=closing)
        finally:
            if connection is not None:
                connection.request_finished()

    async def _answer(
        self, scope: Scope, receive: Receive, connection: Connection | None
    ) -> tuple[HttpAnswer | None, bool]:
        if connection is not None and connection.over_capacity:
            return _plain(503, "too many connections\n"), True
        if scope.get("http_version") not in ("1.1", "1.0"):
            return self._refuse(Refusal.HTTP2, 505, "HTTP/1.1 only\n")
        headers = _headers(scope)
        if "upgrade" in headers:
            return self._refuse(Refusal.UPGRADE, 400, "no protocol upgrade here\n")
        if scope["path"] != self._path:
            return self._refuse(Refusal.BAD_REQUEST, 404, "not found\n")
        if scope["method"] != "POST":
            return self._refuse(Refusal.BAD_REQUEST, 405, "POST only\n")
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return self._refuse(Refusal.BAD_REQUEST, 400, "bad Content-Length\n")
            if int(declared) > self.limits.max_body_bytes:
                return self._refuse(Refusal.TOO_LARGE, 413, "too large\n")
        try:
            body = await _read_body(receive, self.limits.max_body_bytes)
        except _TooLarge:
            return self._refuse(Refusal.TOO_LARGE, 413, "too large\n")
        if body is None:
            return None, True  # the peer went away
        if connection is not None:
            connection.body_read()
        answer = await self.processor.handle(headers.get("content-type", ""), headers.get("soapaction"), body)
        return answer, False

    def _refuse(self, reason: Refusal, status: int, text: str) -> tuple[HttpAnswer, bool]:
        self.refusals.add(reason)
        return _plain(status, text), True


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise _TooLarge
        if not message.get("more_body"):
            return bytes(body)


async def _respond(send: Send, answer: HttpAnswer, *, close: bool) -> None:
    headers = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(answer.body)).encode("ascii")),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
