"""Our HTTPS endpoint for Spine's asynchronous replies: mutual TLS, an allow-list of peers, bounded requests.

`serve_inbound` runs `InboundApp` (the ASGI app: one POST path, then the reply workflow) behind
`InboundServer` (batch.inbound.server: TLS, the peer check, limits, uvicorn's HTTP/1.1).
"""

from __future__ import annotations

import logging
import socket
import ssl

import anyio
import anyio.abc

from batch.config import InboundConfig
from batch.inbound.app import InboundApp
from batch.inbound.limits import InboundLimits, Refusal, Refusals
from batch.inbound.server import InboundServer
from batch.peers import PeerPolicy

__all__ = [
    "InboundApp",
    "InboundLimits",
    "InboundServer",
    "Refusal",
    "Refusals",
    "bind_socket",
    "serve_inbound",
]

log = logging.getLogger(__name__)


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


async def serve_inbound(
    app: InboundApp,
    sock: socket.socket,
    ssl_context: ssl.SSLContext,
    peers: PeerPolicy,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[InboundServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on an already listening socket until `stop` is set; the socket is closed on the way out."""
    if peers.any_from_ca:
        log.warning(
            "inbound.allowed_peers is not set: any certificate issued by the CA may post replies"
            " (acceptable only against the simulated Spine)"
        )
    server = InboundServer(
        app, ssl_context=ssl_context, peers=peers, limits=app.limits, refusals=app.refusals
    )
    task_status.started(server)
    await server.serve(sock, stop)
