"""HTTP/1.1 POSTs of replies to the client's endpoint over mutual TLS, on blocking sockets in worker threads.

``new`` opens a fresh connection for every reply, as Spine does; ``reuse`` keeps a connection for the next
reply when the receiver allows keep-alive (it does not when it answers ``Connection: close``). Nothing is ever
resent: the CP-IS reply route is express, so a POST that fails is simply lost (docs/protocol.md#p2).

Blocking sockets in threads rather than the event loop's streams: the TLS handshake and record layer then run
in C without the GIL, which costs the simulator about half the CPU per reply (a handshake per reply is most of
its work) and lets handshakes overlap with serving queries.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import h11

ReplyConnections = Literal["new", "reuse"]
REPLY_CONNECTIONS: Final = ("new", "reuse")
MAX_RESPONSE_BYTES: Final = 1024 * 1024
_READ_SIZE: Final = 65536
_FAILURES: Final = (OSError, h11.ProtocolError)  # OSError covers refused, reset, timeouts and ssl.SSLError


class ReplyPostError(Exception):
    """The POST got no complete HTTP response: refused, reset, timed out or garbled."""


@dataclass(frozen=True)
class ReplyResponse:
    status: int
    body: bytes


@dataclass(eq=False)  # compared (and hashed) by identity
class _Connection:
    sock: ssl.SSLSocket
    http: h11.Connection

    def looks_closed(self) -> bool:
        """True when an idle connection has something to read, which can only be its end (or garbage)."""
        if self.sock.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


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
        # The pool's size is the limit on POSTs at a time. Its queue is a C SimpleQueue: handing a reply to
        # a thread this way costs less than anyio.to_thread's condition-variable queue, once per reply.
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="spine-sim-reply")
        # Shared with the worker threads.
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._active: set[_Connection] = set()
        self._closed = False

    async def post(self, body: bytes, headers: Mapping[str, str]) -> ReplyResponse:
        # The simulator runs on anyio's asyncio backend. A cancelled wait abandons the thread's POST;
        # aclose() then shuts its socket, so the thread ends at once.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._post, body, dict(headers))

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            active = list(self._active)
        for connection in idle:
            connection.close()
        for connection in active:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _post(self, body: bytes, headers: dict[str, str]) -> ReplyResponse:
        deadline = time.monotonic() + self._timeout_s
        connection: _Connection | None = None
        try:
            connection = self._take_idle() or self._connect()
            with self._lock:
                self._active.add(connection)
            response = self._exchange(connection, body, headers, deadline)
        except _FAILURES as exc:
            if connection is not None:
                self._forget(connection)
                connection.close()
            raise ReplyPostError(type(exc).__name__) from exc
        self._release(connection)
        return response

    def _take_idle(self) -> _Connection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            if not connection.looks_closed():
                return connection
            # Closed by the receiver while idle (e.g. its keep-alive timeout): dropped before any POST uses it.
            connection.close()

    def _connect(self) -> _Connection:
        raw = socket.create_connection((self._host, self._port), timeout=self._connect_timeout_s)
        try:
            sock = self._ssl.wrap_socket(raw, server_hostname=self._host)
        except BaseException:
            raw.close()
            raise
        return _Connection(sock, h11.Connection(h11.CLIENT))

    def _exchange(
        self, connection: _Connection, body: bytes, headers: dict[str, str], deadline: float
    ) -> ReplyResponse:
        sock, http = connection.sock, connection.http
        fields = [("Host", self._host_header), *headers.items(), ("Content-Length", str(len(body)))]
        if not self._reuse:
            fields.append(("Connection", "close"))
        data = http.send(h11.Request(method="POST", target=self._target, headers=fields)) or b""
        data += (http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b"")
        _set_timeout(sock, deadline)
        sock.sendall(data)
        status: int | None = None
        content = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                _set_timeout(sock, deadline)
                http.receive_data(sock.recv(_READ_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                content += event.data
                if len(content) > MAX_RESPONSE_BYTES:
                    raise h11.RemoteProtocolError("response body too large")
            elif isinstance(event, h11.EndOfMessage) and status is not None:
                return ReplyResponse(status, bytes(content))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("connection closed before a complete response")

    def _release(self, connection: _Connection) -> None:
        http = connection.http
        keep = self._reuse and http.our_state is h11.DONE and http.their_state is h11.DONE
        with self._lock:
            self._active.discard(connection)
            if keep and not self._closed:
                http.start_next_cycle()
                self._idle.append(connection)
                return
        connection.close()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._active.discard(connection)


def _set_timeout(sock: ssl.SSLSocket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("reply POST timed out")
    sock.settimeout(remaining)
