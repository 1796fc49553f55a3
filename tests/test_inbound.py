"""The inbound endpoint over real TLS: who may connect, and what it answers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from batch.config import InboundConfig, TlsPaths
from batch.correlate import ReplyProcessor
from batch.ebxml import MessageHeader, build_message, utc_timestamp
from batch.ids import new_id
from batch.inbound import InboundApp, bind_socket, serve_inbound
from batch.pki import DevPki, make_dev_pki, make_untrusted_client
from batch.store import Store, StoreError
from batch.tls import client_context
from tests.support import free_port

PATH = "/cpis/replies"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def serving(tmp_path: Path, pki: DevPki) -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    # A context manager in the test's own task, not a yield fixture: the task group must open and close there.
    resolved: list[tuple[str, str]] = []
    inbound = InboundConfig(host="127.0.0.1", port=free_port(), path=PATH)
    async with Store.open(tmp_path / "state.sqlite") as store:
        processor = ReplyProcessor(
            store,
            our_party_key="SIMCLINIC-0000101",
            not_found_codes=frozenset({"NHSNCC002"}),
            on_resolved=lambda run, nhs: resolved.append((run, nhs)),
        )
        stop = anyio.Event()
        sock = bind_socket(inbound)
        tls = TlsPaths(cert=pki.client_cert, key=pki.client_key, ca=pki.ca_cert)
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_inbound, InboundApp(processor, PATH), sock, tls, stop)
            yield f"https://127.0.0.1:{inbound.port}{PATH}", resolved
            stop.set()


def _no_cert_context(pki: DevPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _orphan_reply() -> tuple[dict[str, str], bytes, str]:
    message_id = new_id()
    header = MessageHeader(
        from_party="SIMSPINE-0000001",
        to_party="SIMCLINIC-0000101",
        cpa_id="S1SIMCPIS0001",
        conversation_id=new_id(),
        service="urn:nhs:names:services:cpisquery",
        action="QUQI_IN010000UK14",
        message_id=message_id,
        timestamp=utc_timestamp(datetime.now(UTC)),
        ref_to_message_id=new_id(),
    )
    headers, body = build_message(header, b"<QUQI_IN010000UK14 xmlns='urn:hl7-org:v3'/>")
    return headers, body, message_id


async def test_client_without_certificate_is_refused(tmp_path: Path, pki: DevPki) -> None:
    async with serving(tmp_path, pki) as (url, _):
        await _test_client_without_certificate_is_refused(url, _, pki)


async def _test_client_without_certificate_is_refused(url: str, _: list, pki: DevPki) -> None:
    async with httpx.AsyncClient(verify=_no_cert_context(pki)) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(url, content=b"x")


async def test_client_with_certificate_from_another_ca_is_refused(pki: DevPki, tmp_path: Path) -> None:
    cert, key = make_untrusted_client(tmp_path / "rogue")
    async with serving(tmp_path, pki) as (url, _):
        await _refused_with(url, cert, key, pki)


async def _refused_with(url: str, cert: Path, key: Path, pki: DevPki) -> None:
    ctx = _no_cert_context(pki)
    ctx.load_cert_chain(cert, key)
    async with httpx.AsyncClient(verify=ctx) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(url, content=b"x")


async def test_spine_certificate_is_accepted_and_garbage_gets_500(tmp_path: Path, pki: DevPki) -> None:
    async with serving(tmp_path, pki) as (url, _):
        await _test_spine_certificate_is_accepted_and_garbage_gets_500(url, _, pki)


async def _test_spine_certificate_is_accepted_and_garbage_gets_500(url: str, _: list, pki: DevPki) -> None:
    ctx = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    async with httpx.AsyncClient(verify=ctx) as client:
        response = await client.post(url, content=b"not mime", headers={"content-type": "text/plain"})
    assert response.status_code == 500
    assert b"Acknowledgment" not in response.content


async def test_orphan_reply_is_stored_acknowledged_and_deduplicated(tmp_path: Path, pki: DevPki) -> None:
    async with serving(tmp_path, pki) as (url, resolved):
        await _test_orphan_reply_is_stored_acknowledged_and_deduplicated(url, resolved, pki)


async def _test_orphan_reply_is_stored_acknowledged_and_deduplicated(
    url: str, resolved: list, pki: DevPki
) -> None:
    headers, body, message_id = _orphan_reply()
    ctx = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    async with httpx.AsyncClient(verify=ctx) as client:
        first = await client.post(url, content=body, headers=headers)
        second = await client.post(url, content=body, headers=headers)
    assert first.status_code == 200
    assert b"Acknowledgment" in first.content and message_id.encode() in first.content
    assert second.content == first.content  # the stored acknowledgement, byte for byte
    assert resolved == []


async def test_wrong_to_party_gets_message_error(tmp_path: Path, pki: DevPki) -> None:
    async with serving(tmp_path, pki) as (url, _):
        await _test_wrong_to_party_gets_message_error(url, _, pki)


async def _test_wrong_to_party_gets_message_error(url: str, _: list, pki: DevPki) -> None:
    header = MessageHeader(
        from_party="SIMSPINE-0000001",
        to_party="SOMEONE-ELSE",
        cpa_id="S1SIMCPIS0001",
        conversation_id=new_id(),
        service="urn:nhs:names:services:cpisquery",
        action="REPC_IN000007GB01",
        message_id=new_id(),
        timestamp=utc_timestamp(datetime.now(UTC)),
        ref_to_message_id=new_id(),
    )
    headers, body = build_message(header, b"<REPC_IN000007GB01 xmlns='urn:hl7-org:v3'/>")
    ctx = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
    async with httpx.AsyncClient(verify=ctx) as client:
        response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 200
    assert b"MessageError" in response.content and b"ValueNotRecognized" in response.content


async def test_store_failure_answers_500_without_acknowledgement(
    tmp_path: Path, pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(Store, "store_inbound", broken)
    headers, body, _ = _orphan_reply()
    async with serving(tmp_path, pki) as (url, resolved):
        ctx = client_context(pki.spine_cert, pki.spine_key, pki.ca_cert)
        async with httpx.AsyncClient(verify=ctx) as client:
            response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 500
    assert b"Acknowledgment" not in response.content
    assert resolved == []
