"""An httpx transport for POSTing queries to Spine: kept-alive TLS connections, one request at a time each.

Why not httpx's default transport: its connection pool checks every pooled connection for expiry on every
request (a socket probe and a peer-name lookup each) and takes several locks and cancel scopes per request;
measured, that was a quarter of the client's CPU per child. Spine is one origin, POSTs carry small bodies and
answers are small, so a plain pool of idle connections (last used first) with h11 framing does the same work
for much less. It speaks the same trace protocol as httpcore (`request.extensions["trace"]`), so the rate
limiter's gate and round-trip timing work with either transport.

Errors are httpx's own exception types, raised as httpcore's would be: `ConnectError`/`ConnectTimeout` when no
connection could be made, `WriteError`/`WriteTimeout`, `ReadTimeout`, `RemoteProtocolError` when the peer
closed or broke the exchange.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import h11
import httpx

Trace = Callable[[str, dict[str, Any]], Awaitable[None]]

_READ_SIZE = 65536
_IDLE_EXPIRY_S = 4.0  # below common server keep-alive timeouts (5 s and up): reuse never meets a closing peer
_NOT_ALLOWED = frozenset({"connection", "content-length", "host", "transfer-encoding"})


async def _no_trace(event: str, info: dict[str, Any]) -> None:
    return None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_READ_SIZE)
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.h11.our_state is h11.IDLE
            and time.monotonic() - self.idle_since < _IDLE_EXPIRY_S
        )

    def close(self) -> None:
        self.writer.transport.abort()  # no TLS close_notify wait: the peer may be gone


class SpineHTTPTransport(httpx.AsyncBaseTransport):
    """POSTs to one https origin; at most `max_connections` connections, each used by one request at a time."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_body: int,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("the Spine URL must be https://host[:port]/path")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._authority = parts.netloc.encode("ascii")
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._max_body = max_body
        self._idle: list[_Connection] = []
        self._slots = anyio.Semaphore(max_connections)
        self.connections_made = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace: Trace = request.extensions.get("trace", _no_trace)
        body = request.content  # always in memory: the transport is for prepared messages
        head = [
            (b"Host", self._authority),
            (b"Content-Length", str(len(body)).encode("ascii")),
            *((k, v) for k, v in request.headers.raw if k.lower().decode("latin-1") not in _NOT_ALLOWED),
        ]
        async with self._slots:
            connection = await self._connection(request)
            try:
                response = await self._exchange(connection, request, head, body, trace)
            except BaseException:
                connection.close()
                raise
        return response

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connection(self, request: httpx.Request) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        try:
            with anyio.fail_after(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, server_hostname=self._host, limit=_READ_SIZE
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connecting to Spine timed out", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to Spine: {exc}", request=request) from None
        self.connections_made += 1
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        head: list[tuple[bytes, bytes]],
        body: bytes,
        trace: Trace,
    ) -> httpx.Response:
        conn = connection.h11
        data = (
            conn.send(h11.Request(method=request.method, target=request.url.raw_path, headers=head))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        await trace("http11.send_request_headers.started", {"request": request})
        try:
            with anyio.fail_after(self._read_timeout):
                connection.writer.write(data)
                await connection.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending to Spine timed out", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(f"sending to Spine failed: {exc}", request=request) from None
        try:
            with anyio.fail_after(self._read_timeout):
                response = await self._read_response(connection, request, trace)
        except TimeoutError:
            raise httpx.ReadTimeout("Spine did not answer in time", request=request) from None
        except OSError as exc:
            raise httpx.ReadError(f"reading Spine's answer failed: {exc}", request=request) from None
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(
                f"Spine's answer was not HTTP/1.1: {exc}", request=request
            ) from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _read_response(
        self, connection: _Connection, request: httpx.Request, trace: Trace
    ) -> httpx.Response:
        conn = connection.h11
        head: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await connection.reader.read(_READ_SIZE)
                if not data and head is None:
                    raise httpx.RemoteProtocolError(
                        "Spine closed the connection without answering", request=request
                    )
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
                await trace("http11.receive_response_headers.complete", {"request": request})
            elif isinstance(event, h11.Data):
                size += len(event.data)
                chunks.append(event.data)
                if size > self._max_body:
                    # Enough to show the answer is too large; the connection cannot be reused.
                    connection.close()
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
        if head is None:
            raise httpx.RemoteProtocolError("Spine closed the connection without answering", request=request)
        return httpx.Response(
            head.status_code,
            headers=[(k, v) for k, v in head.headers],
            content=b"".join(chunks),
            request=request,
        )
