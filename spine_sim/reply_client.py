"""HTTP/1.1 POSTs of replies to the client's endpoint over mutual TLS (anyio + h11).

``new`` opens a fresh connection for every reply, as Spine does; ``reuse`` keeps a connection for the next
reply when the receiver allows keep-alive (it does not when it answers ``Connection: close``). Nothing is ever
resent: the CP-IS reply route is express, so a POST that fails is simply lost (ebxml-transport §1).
"""

from __future__ import annotations

import logging
import select
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute

log = logging.getLogger(__name__)

ReplyConnections = Literal["new", "reuse"]
REPLY_CONNECTIONS: Final = ("new", "reuse")
MAX_RESPONSE_BYTES: Final = 1024 * 1024
_READ_SIZE: Final = 65536
_FAILURES: Final = (
    TimeoutError,
    OSError,  # refused, reset, and ssl.SSLError
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h11.ProtocolError,
)


class ReplyPostError(Exception):
    """The POST got no complete HTTP response: refused, reset, timed out or garbled."""


@dataclass(frozen=True)
class ReplyResponse:
    status: int
    body: bytes


@dataclass
class _Connection:
    stream: anyio.abc.ByteStream
    http: h11.Connection

    def looks_closed(self) -> bool:
        """True when an idle connection has something to read, which can only be its end (or garbage)."""
        raw = self.stream.extra(SocketAttribute.raw_socket, None)  # noqa: S610 - anyio, not Django
        if raw is None:
            return True
        readable, _, _ = select.select([raw], [], [], 0)
        return bool(readable)


class ReplyClient:
    """One receiving URL, one TLS context, at most ``max_connections`` POSTs at a time."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        *,
        connections: ReplyConnections = "new",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 20,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("the reply URL must be an https:// URL")
        if connections not in REPLY_CONNECTIONS:
            raise ValueError(f"connections must be one of {', '.join(REPLY_CONNECTIONS)}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._host_header = parts.netloc.rpartition("@")[2]
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl_context
        self._reuse = connections == "reuse"
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._slots = anyio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, headers: Mapping[str, str]) -> ReplyResponse:
        async with self._slots:
            connection: _Connection | None = None
            try:
                with anyio.fail_after(self._timeout_s):
                    connection = await self._take_idle() or await self._connect()
                    response = await self._exchange(connection, body, headers)
            except _FAILURES as exc:
                await self._discard(connection)
                raise ReplyPostError(type(exc).__name__) from exc
            except BaseException:
                await self._discard(
                    connection
                )  # cancelled mid-exchange: the connection is in an unknown state
                raise
            await self._release(connection)
            return response

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await anyio.aclose_forcefully(connection.stream)

    async def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.looks_closed():
                return connection
            # Closed by the receiver while idle (e.g. its keep-alive timeout): dropped before any POST uses it.
            await anyio.aclose_forcefully(connection.stream)
        return None

    async def _connect(self) -> _Connection:
        with anyio.fail_after(self._connect_timeout_s):
            stream = await anyio.connect_tcp(
                self._host,
                self._port,
                ssl_context=self._ssl,
                tls_hostname=self._host,
                # No close_notify is required of the receiver, nor sent to it: the HTTP framing says when a
                # response is complete.
                tls_standard_compatible=False,
            )
        return _Connection(stream, h11.Connection(h11.CLIENT))

    async def _exchange(
        self, connection: _Connection, body: bytes, headers: Mapping[str, str]
    ) -> ReplyResponse:
        http = connection.http
        fields = [("Host", self._host_header), *headers.items(), ("Content-Length", str(len(body)))]
        if not self._reuse:
            fields.append(("Connection", "close"))
        data = http.send(h11.Request(method="POST", target=self._target, headers=fields))
        data = (
            (data or b"") + (http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b"")
        )
        await connection.stream.send(data)
        status: int | None = None
        content = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await connection.stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    chunk = b""
                http.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                content += event.data
                if len(content) > MAX_RESPONSE_BYTES:
                    raise h11.RemoteProtocolError("response body too large")
            elif isinstance(event, h11.EndOfMessage) and status is not None:
                return ReplyResponse(status, bytes(content))
            elif isinstance(event, h11.ConnectionClosed):
                raise anyio.EndOfStream

    async def _release(self, connection: _Connection) -> None:
        http = connection.http
        if self._reuse and http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
            self._idle.append(connection)
        else:
            await anyio.aclose_forcefully(connection.stream)

    async def _discard(self, connection: _Connection | None) -> None:
        if connection is not None:
            await anyio.aclose_forcefully(connection.stream)
