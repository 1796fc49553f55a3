"""The reply endpoint's listener: TLS with a deadline, the peer check, and limits on every connection.

HTTP/1.1 itself is uvicorn's (its httptools protocol); this module owns everything around it:

* accepting: at most `max_handshakes` connections not yet through TLS, each handshake within
  `handshake_timeout_s`, with `batch.tls.server_context` (no session tickets, HTTP/1.1 by ALPN);
* the peer check: asyncio hands a connection to its protocol as soon as the handshake completes, before it
  decrypts a byte of application data. `Connection.connection_made` checks the peer's certificate against
  the allow-list right there and aborts any other peer, so nothing it sent is ever read;
* watching each connection: the HTTP/2 preface refused, the request head and the bytes per request bounded,
  a deadline from a request's first byte to its whole body, and the count of open connections (the app
  answers 503 on a connection beyond the cap);
* stopping: idle connections are aborted at once (no wait for a close_notify that an idle peer never
  sends), requests being answered get `shutdown_grace_s`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Final, cast

import anyio
import anyio.abc
import uvicorn
from uvicorn.server import ServerState

from batch.inbound.limits import InboundLimits, Refusal, Refusals
from batch.peers import PeerPolicy

log = logging.getLogger(__name__)

CONNECTION_STATE_KEY: Final = "batch.inbound.connection"
"""The key of the `Connection` in each request's ASGI `scope["state"]` (uvicorn copies it per request)."""

_HTTP2_PREFACE: Final = b"PRI * HTTP/2.0"
_HEAD_ENDS: Final = (b"\r\n\r\n", b"\n\n")
_ACCEPT_PAUSE_S: Final = 1.0


class _CoalescingTransport(asyncio.Transport):
    """The TLS transport as uvicorn sees it: writes made in one turn of the event loop go out together.

    uvicorn writes a response's head and body separately; joined, they make one TLS record and one send
    instead of two of each (about 50 µs of CPU per reply on a kept-alive connection, measured).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)


def _acknowledge_now(transport: asyncio.BaseTransport) -> None:
    """Send the ACK the kernel is holding back for the peer's last handshake flight, now.

    With no session tickets we send nothing after the handshake, so the peer's Finished is acknowledged only
    when the delayed-ACK timer fires, 40 ms later. A peer with Nagle's algorithm on (any client that does not
    set TCP_NODELAY, the simulator's included) holds its request until then: every reply arrived 40 ms late,
    and each connection cost us ~1.3 ms more CPU than with the ACK sent at once (bench/connections.py).
    """
    sock = transport.get_extra_info("socket")
    quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux only
    if sock is None or quickack is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:
        pass  # the peer has already gone: nothing is waiting for the ACK


class Connection(asyncio.Protocol):
    """One accepted TLS connection: the peer check, then uvicorn's HTTP/1.1 protocol under watch.

    The app reports a request's progress (`request_started`, `body_read`, `request_finished`) through the
    scope state, so the deadline covers the head and the body but not the time we take to answer.
    """

    def __init__(self, server: InboundServer) -> None:
        self._server = server
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._http: asyncio.Protocol | None = None
        self._first_data = True
        self._received = 0
        """Bytes since the last request was answered (or the connection opened)."""
        self._head_pending = False
        self._head_seen = 0
        self._tail = b""
        self._in_request = False
        self._deadline: asyncio.TimerHandle | None = None
        self.over_capacity = False
        """Opened beyond `max_connections`: its requests get 503 and it closes."""
        self.closing = False
        """The server is stopping: answer the request in hand with Connection: close."""

    # -- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
        if not self._server.peers.allows(der):
            # Before any application data is decrypted: the request, head or body, is never read.
            self._server.refuse(Refusal.PEER_NOT_ALLOWED)
            self._transport.abort()
            return
        _acknowledge_now(transport)
        self._server.opened(self)
        if len(self._server.connections) > self._limits.max_connections:
            self.over_capacity = True
            self._server.refuse(Refusal.TOO_MANY_CONNECTIONS)
        self._http = self._server.http_protocol(self)
        self._http.connection_made(_CoalescingTransport(self._transport))
        # The first request must begin within the keep-alive time (uvicorn times out only between requests).
        self._deadline = asyncio.get_running_loop().call_later(self._limits.keep_alive_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        http = self._http
        if http is None:
            return
        if self._first_data:
            self._first_data = False
            self._stop_deadline()
            if data.startswith(_HTTP2_PREFACE[: len(data)]) and len(data) >= 3:
                self._refuse(Refusal.HTTP2)
                return
        self._received += len(data)
        if self._received > self._limits.max_body_bytes + self._limits.max_head_bytes:
            self._refuse(Refusal.TOO_LARGE)
            return
        if not self._in_request and not self._head_pending:
            # A request's first bytes: its head must end within max_head_bytes, its body within the deadline.
            self._head_pending, self._head_seen, self._tail = True, 0, b""
            self._start_deadline()
        if self._head_pending and not self._head_ends(data):
            return
        http.data_received(data)

    def eof_received(self) -> bool | None:
        return self._http.eof_received() if self._http is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        if self._http is not None:
            self._http.connection_lost(exc)
            self._server.closed(self)

    def pause_writing(self) -> None:
        if self._http is not None:
            self._http.pause_writing()

    def resume_writing(self) -> None:
        if self._http is not None:
            self._http.resume_writing()

    @property
    def in_request(self) -> bool:
        """The app is reading or answering a request on this connection."""
        return self._in_request

    # -- reported by the app --------------------------------------------------------------------------------

    def request_started(self) -> None:
        self._in_request, self._head_pending = True, False
        self._start_deadline()

    def body_read(self) -> None:
        self._stop_deadline()

    def request_finished(self) -> None:
        self._in_request = False
        self._received = 0
        self._stop_deadline()

    # -- stopping -------------------------------------------------------------------------------------------

    def shutdown(self) -> bool:
        """Start closing for the server's stop; True when the connection was idle and is aborted now."""
        self.closing = True
        if self._in_request:
            return False
        self.abort()
        return True

    def abort(self) -> None:
        """Close at once: no TLS close_notify, nothing more read or written."""
        self._stop_deadline()
        if self._transport is not None:
            self._transport.abort()

    # -- internals ------------------------------------------------------------------------------------------

    def _head_ends(self, data: bytes) -> bool:
        """Track the pending request head; False (and the connection refused) when it grows too long."""
        window = self._tail + data
        ends = [position for position in (window.find(end) for end in _HEAD_ENDS) if position >= 0]
        limit = self._limits.max_head_bytes
        if ends:
            self._head_pending = False
            if self._head_seen - len(self._tail) + min(ends) > limit:
                self._refuse(Refusal.TOO_LARGE)
                return False
            return True
        self._head_seen += len(data)
        self._tail = window[-3:]
        if self._head_seen > limit:
            self._refuse(Refusal.TOO_LARGE)
            return False
        return True

    def _start_deadline(self) -> None:
        if self._deadline is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._limits.request_timeout_s, self._timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._refuse(Refusal.REQUEST_TIMEOUT)

    def _refuse(self, reason: Refusal) -> None:
        self._server.refuse(reason)
        self.abort()


class InboundServer:
    """Accepts TLS connections on a listening socket and serves an ASGI app on them until stopped."""

    def __init__(
        self,
        app: Any,
        *,
        ssl_context: ssl.SSLContext,
        peers: PeerPolicy,
        limits: InboundLimits,
        refusals: Refusals,
        http: str = "httptools",
    ) -> None:
        self.limits = limits
        self.peers = peers
        self.refusals = refusals
        self._ssl = ssl_context
        self._config = uvicorn.Config(
            app,
            http=http,
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=limits.keep_alive_s,
            h11_max_incomplete_event_size=limits.max_head_bytes,
        )
        self._config.load()
        self._state = ServerState()
        self.connections: set[Connection] = set()
        self._handshakes: dict[anyio.CancelScope, None] = {}
        """Unfinished handshakes, oldest first."""
        self._none_open = asyncio.Event()
        self._none_open.set()
        self.aborted_idle_at_stop = 0
        """Idle connections closed at once by the stop (for tests and figures)."""

    # -- called by Connection -------------------------------------------------------------------------------

    def http_protocol(self, connection: Connection) -> asyncio.Protocol:
        # uvicorn's protocol constructor, as uvicorn's own Server calls it; the state is per connection here.
        protocol_class: Any = self._config.http_protocol_class
        return cast(
            asyncio.Protocol,
            protocol_class(
                config=self._config,
                server_state=self._state,
                app_state={CONNECTION_STATE_KEY: connection},
                _loop=asyncio.get_running_loop(),
            ),
        )

    def opened(self, connection: Connection) -> None:
        self.connections.add(connection)
        self._none_open.clear()

    def closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._none_open.set()

    def refuse(self, reason: Refusal) -> None:
        first = self.refusals.get(reason) == 0
        self.refusals.add(reason)
        # One line per reason; the counts go to the run summary (a flood must not flood the log too).
        (log.warning if first else log.debug)("inbound connection refused: %s", reason.value)

    # -- serving --------------------------------------------------------------------------------------------

    async def serve(self, sock: socket.socket, stop: anyio.Event) -> None:
        """Serve on an already listening socket until `stop` is set; closes the socket."""
        sock.setblocking(False)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._accept, sock, tg)
                await stop.wait()
                # Stops accepting, and aborts every handshake still under way.
                tg.cancel_scope.cancel()
        finally:
            sock.close()
            with anyio.CancelScope(shield=True):
                await self._close_all()

    async def _accept(self, sock: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except (ConnectionAbortedError, ConnectionResetError):
                continue  # gone before it was accepted
            except OSError as exc:
                # Out of descriptors or memory: let connections end rather than spin on the error.
                log.warning("inbound accept failed (%s); pausing", exc.strerror or exc)
                await anyio.sleep(_ACCEPT_PAUSE_S)
                continue
            if len(self._handshakes) >= self.limits.max_handshakes:
                # The oldest unfinished handshake goes, not the newest: whoever holds idle connections open
                # must keep opening new ones faster than a genuine handshake completes to keep Spine out.
                oldest = next(iter(self._handshakes))
                del self._handshakes[oldest]
                oldest.cancel()
                self.refuse(Refusal.TOO_MANY_HANDSHAKES)
            scope = anyio.CancelScope()
            self._handshakes[scope] = None
            tg.start_soon(self._handshake, conn, scope)

    async def _handshake(self, conn: socket.socket, scope: anyio.CancelScope) -> None:
        loop = asyncio.get_running_loop()
        established = False
        try:
            with scope:
                await loop.connect_accepted_socket(
                    lambda: Connection(self),
                    conn,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self.limits.handshake_timeout_s,
                    ssl_shutdown_timeout=self.limits.tls_close_timeout_s,
                )
                established = True
        except ConnectionAbortedError:
            # asyncio's handshake deadline (the only ConnectionAbortedError of a handshake).
            self.refuse(Refusal.TLS_HANDSHAKE_TIMEOUT)
        except OSError:
            # No certificate, one from another CA, a reset, not TLS at all.
            self.refuse(Refusal.TLS_HANDSHAKE_FAILED)
        finally:
            self._handshakes.pop(scope, None)
            if not established:
                # Usually closed by asyncio already; not when cancelled before the handshake began.
                conn.close()

    async def _close_all(self) -> None:
        for connection in list(self.connections):
            if connection.shutdown():
                self.aborted_idle_at_stop += 1
        with anyio.move_on_after(self.limits.shutdown_grace_s):
            await self._none_open.wait()
        for connection in list(self.connections):
            connection.abort()
        tasks = list(self._state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        with anyio.move_on_after(self.limits.shutdown_grace_s):
            await self._none_open.wait()
        log.info(
            "inbound endpoint stopped: %d idle connection(s) closed at once, %d still open",
            self.aborted_idle_at_stop,
            len(self.connections),
        )
        if self.refusals.counts:
            log.warning(
                "inbound refusals: %s",
                ", ".join(f"{reason}={count}" for reason, count in sorted(self.refusals.counts.items())),
            )
