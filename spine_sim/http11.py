"""A small HTTP/1.1 server over mutual TLS (anyio + h11), close enough to the socket for fault injection.

A full framework would hide what the simulator needs to control: delaying a response while the connection
stays open, and dropping a connection with a TCP reset instead of answering.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024
IDLE_TIMEOUT_S = 75.0
HANDSHAKE_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
_READ_SIZE = 65536
_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ssl.SSLError,
    OSError,
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    # Lower-case names; repeated headers joined with ", ".
    headers: Mapping[str, str]
    body: bytes
    # Wall-clock time at which the request head had been read, before the body (for the arrival log).
    received_at: float


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    # Send "Connection: close" and close the connection after this response.
    close: bool = False


class Exchange:
    """One request's way back to the client: answer it once, or drop the connection without answering."""

    def __init__(self, stream: anyio.abc.ByteStream, connection: h11.Connection) -> None:
        self._stream = stream
        self._connection = connection
        self.answered = False
        self.dropped = False

    async def respond(self, response: Response) -> bool:
        """Send the response; False when the client has already gone (the caller carries on regardless)."""
        if self.answered or self.dropped:
            raise RuntimeError("this request has already been answered or dropped")
        self.answered = True
        headers = [("content-length", str(len(response.body)))]
        if response.content_type:
            headers.append(("content-type", response.content_type))
        if response.close:
            headers.append(("connection", "close"))
        try:
            data = self._connection.send(h11.Response(status_code=response.status, headers=headers))
            if response.body:
                data += self._connection.send(h11.Data(data=response.body))
            data += self._connection.send(h11.EndOfMessage())
            await self._stream.send(data)
        except (*_STREAM_ERRORS, h11.LocalProtocolError):
            self.dropped = True
            return False
        return True

    async def reset(self) -> None:
        """Close the TCP connection abruptly (RST) with no HTTP response, as a failing load balancer would."""
        self.dropped = True
        raw = self._stream.extra(SocketAttribute.raw_socket, None)  # noqa: S610 - anyio, not Django
        if raw is not None:
            # Linger on with a zero timeout turns close() into a reset instead of an orderly FIN.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await anyio.aclose_forcefully(self._stream)


Handler = Callable[[Request, Exchange], Awaitable[None]]


async def _next_request(
    stream: anyio.abc.ByteStream, connection: h11.Connection, max_body: int
) -> Request | Response | None:
    """The next complete request; a Response to send before closing when it is unacceptable; None at EOF."""
    head: h11.Request | None = None
    received_at = 0.0
    body = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            return Response(exc.error_status_hint, b"bad request\n", "text/plain")
        if event is h11.NEED_DATA:
            with anyio.move_on_after(IDLE_TIMEOUT_S if head is None else BODY_TIMEOUT_S):
                try:
                    data = await stream.receive(_READ_SIZE)
                except _STREAM_ERRORS:
                    data = b""
                connection.receive_data(data)
                continue
            return None
        if isinstance(event, h11.Request):
            head, received_at = event, time.time()
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                return Response(413, b"request body too large\n", "text/plain")
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers: dict[str, str] = {}
            for name, value in head.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            path = head.target.decode("latin-1").split("?", 1)[0]
            return Request(head.method.decode("ascii", "replace"), path, headers, bytes(body), received_at)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def serve_connection(
    stream: anyio.abc.ByteStream, handler: Handler, *, max_body: int = MAX_BODY_BYTES
) -> None:
    """Serve requests on one connection (keep-alive) until the client closes it or it must close."""
    connection = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next_request(stream, connection, max_body)
            if request is None:
                return
            exchange = Exchange(stream, connection)
            if isinstance(request, Response):
                await exchange.respond(request)
                return
            try:
                await handler(request, exchange)
            except Exception:
                # One broken request must not take the listener (and every other connection) down with it.
                log.exception("request handler failed")
                if not exchange.answered and not exchange.dropped:
                    await exchange.respond(Response(500, b"internal error\n", "text/plain"))
                return
            if exchange.dropped:
                return
            if not exchange.answered:
                await exchange.respond(Response(500, b"no response\n", "text/plain"))
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()
    finally:
        await anyio.aclose_forcefully(stream)


async def listen_tcp(host: str, port: int) -> tuple[anyio.abc.Listener[anyio.abc.SocketStream], int]:
    """Bind host:port (0 picks a free port) and return the listener with the port it got.

    Separate from serving so that a bind failure surfaces as a plain OSError, not from inside a task group.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    return listener, listener.extra(SocketAttribute.local_port)  # noqa: S610 - anyio, not Django


async def serve_tls(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    ssl_context: ssl.SSLContext,
    handler: Handler,
    *,
    on_handshake_failure: Callable[[], None] | None = None,
) -> None:
    """Serve HTTPS on a bound listener until cancelled; every client must pass the context's certificate check."""

    async def on_connection(raw: anyio.abc.SocketStream) -> None:
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                stream = await TLSStream.wrap(raw, ssl_context=ssl_context, standard_compatible=False)
        except (TimeoutError, *_STREAM_ERRORS) as exc:
            # A client without a certificate from our CA ends here: refused before any HTTP is read.
            if on_handshake_failure is not None:
                on_handshake_failure()
            log.warning("TLS handshake refused: %s", getattr(exc, "reason", None) or type(exc).__name__)
            await anyio.aclose_forcefully(raw)
            return
        await serve_connection(stream, handler)

    async with listener:
        await listener.serve(on_connection)
