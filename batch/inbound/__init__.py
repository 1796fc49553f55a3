"""Our HTTPS endpoint for Spine's asynchronous replies: an ASGI app served by Hypercorn with mutual TLS."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config

from batch.config import InboundConfig, TlsPaths
from batch.correlate import HttpAnswer, ReplyProcessor

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 << 20  # CP-IS replies are kilobytes; anything near this is not a reply


class InboundApp:
    """Accepts POSTs on the configured path and hands them to the reply processor."""

    def __init__(self, processor: ReplyProcessor, path: str) -> None:
        self._processor = processor
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != self._path:
            await _respond(send, HttpAnswer(404, "text/plain; charset=UTF-8", b"not found\n"))
            return
        if scope["method"] != "POST":
            await _respond(send, HttpAnswer(405, "text/plain; charset=UTF-8", b"POST only\n"))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, HttpAnswer(413, "text/plain; charset=UTF-8", b"too large\n"))
                return
            if not message.get("more_body"):
                break
        answer = await self._processor.handle(
            headers.get("content-type", ""), headers.get("soapaction"), bytes(body)
        )
        await _respond(send, answer)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, answer: HttpAnswer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", answer.content_type.encode("latin-1")),
                (b"content-length", str(len(answer.body)).encode("ascii")),
                # One reply per connection, as Spine sends them. An idle kept-alive TLS connection would
                # hold shutdown for asyncio's 30 s close_notify wait when the peer never reads again.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


def bind_socket(inbound: InboundConfig) -> socket.socket:
    """Bind and listen before serving, so a busy port fails at startup and replies queue from then on."""
    family = socket.AF_INET6 if ":" in inbound.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((inbound.host, inbound.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def hypercorn_config(fd: int, tls: TlsPaths) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.certfile = str(tls.cert)
    config.keyfile = str(tls.key)
    config.ca_certs = str(tls.ca)
    # Spine must present a certificate from the configured CA (ebxml-transport §5).
    config.verify_mode = ssl.VerifyMode.CERT_REQUIRED
    config.accesslog = None
    config.errorlog = logging.getLogger("batch.inbound.server")
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = 30.0
    config.alpn_protocols = ["http/1.1"]
    return config


async def serve_inbound(app: InboundApp, sock: socket.socket, tls: TlsPaths, stop: anyio.Event) -> None:
    """Serve on an already listening socket until `stop` is set."""
    # Hypercorn wraps the descriptor in its own socket object and closes it on shutdown.
    config = hypercorn_config(sock.detach(), tls)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
