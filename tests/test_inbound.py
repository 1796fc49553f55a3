"""The inbound endpoint over real TLS: who may connect, what it answers, keep-alive and stopping."""

from __future__ import annotations

import socket
import ssl
from asyncio.trsock import TransportSocket
from pathlib import Path

import anyio.lowlevel
import httpx
import pytest

from batch.store import Store, StoreError
from spine_sim.reply_client import ReplyClient, ReplyPostError
from tests.inbound_support import (
    SAFETY_S,
    InboundCa,
    client_tls,
    closed_by_peer,
    connect_tls,
    make_inbound_ca,
    read_response,
    reply,
    request_head,
    serving,
)
from tests.pki_support import make_untrusted_client


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> InboundCa:
    return make_inbound_ca(tmp_path_factory.mktemp("ca"))


def _no_cert_context(ca: InboundCa) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pki.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def test_client_without_certificate_is_refused(tmp_path: Path, ca: InboundCa) -> None:
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=_no_cert_context(ca)) as client:
            with pytest.raises(httpx.TransportError):
                await client.post(endpoint.url, content=b"x")
        assert endpoint.app.refusals.counts == {"tls_handshake_failed": 1}


async def test_client_with_certificate_from_another_ca_is_refused(ca: InboundCa, tmp_path: Path) -> None:
    cert, key = make_untrusted_client(tmp_path / "rogue")
    ctx = _no_cert_context(ca)
    ctx.load_cert_chain(cert, key)
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=ctx) as client:
            with pytest.raises(httpx.TransportError):
                await client.post(endpoint.url, content=b"x")
        assert endpoint.app.refusals.counts == {"tls_handshake_failed": 1}


async def test_spine_certificate_is_accepted_and_garbage_gets_500(tmp_path: Path, ca: InboundCa) -> None:
    async with serving(tmp_path, ca, allowed=(ca.spine.pin,)) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(
                endpoint.url, content=b"not mime", headers={"content-type": "text/plain"}
            )
        assert response.status_code == 500
        assert b"Acknowledgment" not in response.content
        assert endpoint.processor.counts == {"unparseable_envelope": 1}


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/cpis/replies", 405), ("POST", "/other", 404)]
)
async def test_only_posts_to_the_path_are_served(
    tmp_path: Path, ca: InboundCa, method: str, path: str, status: int
) -> None:
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.request(method, f"https://127.0.0.1:{endpoint.port}{path}")
        assert response.status_code == status and response.headers["connection"] == "close"
        assert endpoint.app.refusals.counts == {"bad_request": 1}


async def test_orphan_reply_is_stored_acknowledged_and_deduplicated(tmp_path: Path, ca: InboundCa) -> None:
    headers, body, message_id = reply()
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            first = await client.post(endpoint.url, content=body, headers=headers)
            second = await client.post(endpoint.url, content=body, headers=headers)
        assert first.status_code == 200
        assert b"Acknowledgment" in first.content and message_id.encode() in first.content
        assert second.content == first.content  # the stored acknowledgement, byte for byte
        assert endpoint.resolved == []
        assert endpoint.processor.counts == {"orphan": 1, "duplicate": 1}


async def test_wrong_to_party_gets_message_error(tmp_path: Path, ca: InboundCa) -> None:
    headers, body, _ = reply(action="REPC_IN000007GB01", hl7=b"<REPC_IN000007GB01 xmlns='urn:hl7-org:v3'/>")
    body = body.replace(b"SIMCLINIC-0000101", b"SOMEONE-ELSE")
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(endpoint.url, content=body, headers=headers)
        assert response.status_code == 200
        assert b"MessageError" in response.content and b"ValueNotRecognized" in response.content
        assert endpoint.processor.counts == {"rejected": 1}


async def test_store_failure_answers_500_without_acknowledgement(
    tmp_path: Path, ca: InboundCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(Store, "store_inbound", broken)
    headers, body, _ = reply()
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(endpoint.url, content=body, headers=headers)
        assert response.status_code == 500
        assert b"Acknowledgment" not in response.content
        assert endpoint.resolved == []


# --- keep-alive and stopping ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
async def test_the_handshake_is_acknowledged_at_once_for_a_peer_with_nagle_on(
    tmp_path: Path, ca: InboundCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without it the peer's request waits for the delayed ACK of its Finished (40 ms on Linux).
    asked: list[tuple[int, int, int]] = []
    setsockopt = TransportSocket.setsockopt

    def recording(self: TransportSocket, level: int, option: int, value: int) -> None:
        asked.append((level, option, value))
        setsockopt(self, level, option, value)

    monkeypatch.setattr(TransportSocket, "setsockopt", recording)
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        headers, body, _ = reply()
        await stream.send(request_head(len(body), content_type=headers["Content-Type"]) + body)
        assert (await read_response(stream)).status == 200
        await stream.aclose()
    assert asked == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]


async def test_replies_may_share_a_kept_alive_connection(tmp_path: Path, ca: InboundCa) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        for _ in range(3):
            headers, body, message_id = reply()
            await stream.send(request_head(len(body), content_type=headers["Content-Type"]) + body)
            response = await read_response(stream)
            assert response.status == 200 and message_id.encode() in response.body
            assert "connection" not in response.headers
        assert len(endpoint.server.connections) == 1
        await stream.aclose()


async def test_an_idle_kept_alive_connection_from_the_simulator_does_not_hold_the_stop(
    tmp_path: Path, ca: InboundCa
) -> None:
    async with serving(tmp_path, ca) as endpoint:
        client = ReplyClient(endpoint.url, client_tls(ca, ca.spine), connections="reuse", timeout_s=SAFETY_S)
        try:
            headers, body, _ = reply()
            assert (await client.post(body, headers)).status == 200
            # The simulator keeps the connection for its next reply and never reads it meanwhile: a TLS close
            # would wait for a close_notify that never comes. The stop closes it at once instead.
            assert len(endpoint.server.connections) == 1
            await endpoint.stop()
            assert endpoint.server.aborted_idle_at_stop == 1
            assert not endpoint.server.connections
            # The simulator finds its kept connection closed, and the endpoint is gone.
            headers, body, _ = reply()
            with pytest.raises(ReplyPostError):
                await client.post(body, headers)
        finally:
            await client.aclose()


async def test_a_request_in_hand_at_the_stop_is_answered_then_closed(tmp_path: Path, ca: InboundCa) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        headers, body, message_id = reply()
        # Head and half the body: the request is in hand when the stop comes.
        await stream.send(request_head(len(body), content_type=headers["Content-Type"]) + body[:100])
        while not any(connection.in_request for connection in endpoint.server.connections):
            await anyio.lowlevel.checkpoint()
        endpoint.stop_requested.set()
        await stream.send(body[100:])
        response = await read_response(stream)
        assert response.status == 200 and message_id.encode() in response.body
        assert response.headers["connection"] == "close"
        assert await closed_by_peer(stream) == b""
        await stream.aclose()
        await endpoint.stop()
        assert endpoint.server.aborted_idle_at_stop == 0
