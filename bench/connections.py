"""What one new inbound connection costs the reply endpoint, apart from the reply it carries.

`python bench/connections.py PKI_DIR N` serves N connections, one after another, each a full TLS handshake,
one small POST answered 202, then closed by the peer (as Spine posts a reply). The peer is a separate
process; the figure is this process's own rusage per connection. Three servers, each with our TLS context:

* `endpoint`: batch.inbound.InboundServer (peer check, limits, uvicorn) with an app that only answers;
* `endpoint_nagle_peer`: the same, the peer with Nagle's algorithm on (no TCP_NODELAY), as the simulator's
  reply poster is, and as any client may be;
* `floor`: a blocking `ssl` server in one thread doing only the handshake, the read and the answer.

A run-wide figure moves ±20 % from run to run on this VM; this one, a single loop of the same work, moves
less, so it is the one to compare the endpoint's connection handling by.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_BODY = b"x" * 3000
_REQUEST = (
    b"POST /cpis/replies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_BODY)
) + _BODY
_ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peer(pki: Path, port: int, count: int, nodelay: bool) -> None:
    """The posting side: `count` connections, one after another."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(pki / "spine.pem", pki / "spine.key")
    context.load_verify_locations(pki / "ca.pem")
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(_REQUEST)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(65536)
                if not chunk:
                    raise SystemExit("the endpoint closed the connection before answering")
                answer += chunk


def _run_peer(pki: Path, port: int, count: int, nodelay: bool) -> None:
    command = [sys.executable, __file__, "peer", str(pki), str(port), str(count), str(int(nodelay))]
    subprocess.run(command, check=True)


def _context(pki: Path) -> ssl.SSLContext:
    from batch.tls import server_context

    return server_context(pki / "cpis-batch.pem", pki / "cpis-batch.key", pki / "ca.pem")


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock, int(sock.getsockname()[1])


def floor(pki: Path, count: int) -> tuple[float, float]:
    """CPU and wall ms per connection of the least a TLS server can do."""
    context = _context(pki)
    sock, port = _listening()

    def serve() -> None:
        for _ in range(count):
            conn, _ = sock.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                # The same prompt ACK as the endpoint's, so that a Nagle peer does not stall this one.
                tls.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", socket.TCP_NODELAY), 1)
                seen = b""
                while len(seen) < len(_REQUEST):
                    seen += tls.recv(65536)
                tls.sendall(_ANSWER)

    server = threading.Thread(target=serve)
    server.start()
    cpu, wall = _cpu_s(), time.perf_counter()
    _run_peer(pki, port, count, nodelay=True)
    server.join()
    sock.close()
    return 1000 * (_cpu_s() - cpu) / count, 1000 * (time.perf_counter() - wall) / count


def endpoint(pki: Path, count: int, nodelay: bool) -> tuple[float, float]:
    """CPU and wall ms per connection of batch.inbound's server."""
    import anyio

    from batch.inbound import InboundLimits, InboundServer, Refusals
    from batch.peers import PeerPolicy

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> tuple[float, float]:
        sock, port = _listening()
        server = InboundServer(
            answer,
            ssl_context=_context(pki),
            peers=PeerPolicy(any_from_ca=True),
            limits=InboundLimits(),
            refusals=Refusals(),
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, sock, stop)
            cpu, wall = _cpu_s(), time.perf_counter()
            await anyio.to_thread.run_sync(_run_peer, pki, port, count, nodelay)
            figures = 1000 * (_cpu_s() - cpu) / count, 1000 * (time.perf_counter() - wall) / count
            stop.set()
        return figures

    return anyio.run(main)


def measure(pki: Path, count: int) -> dict[str, float]:
    cpu, wall = endpoint(pki, count, nodelay=True)
    nagle_cpu, nagle_wall = endpoint(pki, count, nodelay=False)
    floor_cpu, floor_wall = floor(pki, count)
    return {
        "connections": count,
        "endpoint_cpu_ms": round(cpu, 3),
        "endpoint_wall_ms": round(wall, 3),
        "endpoint_nagle_peer_cpu_ms": round(nagle_cpu, 3),
        "endpoint_nagle_peer_wall_ms": round(nagle_wall, 3),
        "floor_cpu_ms": round(floor_cpu, 3),
        "floor_wall_ms": round(floor_wall, 3),
    }


if __name__ == "__main__":
    if sys.argv[1] == "peer":
        peer(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    else:
        print(json.dumps(measure(Path(sys.argv[1]), int(sys.argv[2]))))
