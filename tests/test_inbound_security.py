"""The reply endpoint against someone other than Spine, and against floods: real TLS, real HTTP, real SQLite.

Every refusal is awaited as an event (the server closing, an answer arriving); safety timeouts only guard
against a hang.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.streams.tls import TLSAttribute
from cryptography.hazmat.primitives import serialization

from batch.correlate import SIDE_RAW_LIMIT, SideQuota, loggable_id
from batch.ids import new_id
from batch.inbound import InboundLimits
from batch.mime import MAX_PARTS
from batch.peers import PeerPolicy, PeerPolicyError, spki_pin
from batch.store import AttemptRef
from spine_sim.replies import build_query_failed
from tests.inbound_support import (
    SPINE_PARTY,
    Endpoint,
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


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> InboundCa:
    return make_inbound_ca(tmp_path_factory.mktemp("inbound-ca"))


def _rows(state: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(state) as conn:
        return conn.execute(sql).fetchall()


async def _attempt(endpoint: Endpoint, nhs: str = "9990000018") -> AttemptRef:
    """A query we sent, as the pipeline records it before its POST."""
    store = endpoint.store
    run = await store.begin_or_resume_run(
        run_id=new_id(), job_name="job", input_fingerprint=new_id(), reference_date="2027-01-20"
    )
    await store.add_children(run.run_id, [nhs])
    ref = AttemptRef(new_id(), run.run_id, nhs, new_id(), new_id())
    await store.record_attempt(ref, 1, datetime.now(UTC).isoformat())
    return ref


def _not_found(attempt: AttemptRef) -> bytes:
    return build_query_failed(
        reply_id=new_id(),
        message_ref=attempt.message_id,
        spine_asid="999000000001",
        client_asid="999000000101",
        now=datetime.now(UTC),
        issue_code="NHSNCC002",
        issue_display="No Record Found",
    )


# --- the allow-list -------------------------------------------------------------------------------------


def test_a_pin_or_an_exact_subject_lets_a_peer_in(ca: InboundCa) -> None:
    spine_der = ca.spine.certificate.public_bytes(serialization.Encoding.DER)
    intruder_der = ca.intruder.certificate.public_bytes(serialization.Encoding.DER)
    for entry in (ca.spine.pin, ca.spine.subject):
        policy = PeerPolicy.from_config((entry,))
        assert policy.allows(spine_der)
        assert not policy.allows(intruder_der)
        assert not policy.allows(None)
    # Both forms at once; and no list at all (the simulated profile) lets in anyone the CA vouches for.
    assert PeerPolicy.from_config((ca.intruder.pin, ca.spine.subject)).allows(intruder_der)
    assert PeerPolicy.from_config(None).allows(intruder_der)


def test_a_subject_matches_exactly_in_rfc4514_order_and_case(ca: InboundCa) -> None:
    spine_der = ca.spine.certificate.public_bytes(serialization.Encoding.DER)
    subject = ca.spine.subject  # "CN=spine-sim,O=cpis-batch development PKI (not for production)"
    assert subject.startswith("CN=spine-sim,O=")
    cn, organisation = subject.split(",", 1)
    for near_miss in (f"{organisation},{cn}", subject.replace("spine-sim", "SPINE-SIM"), cn):
        assert not PeerPolicy.from_config((near_miss,)).allows(spine_der), near_miss


@pytest.mark.parametrize(
    "entries",
    [(), ("sha256:abc",), ("sha256:" + "AB" * 32,), ("msg.spine.example",), ("cn=lower",), ("CN=",)],
)
def test_unusable_allow_lists_are_refused(entries: tuple[str, ...]) -> None:
    with pytest.raises(PeerPolicyError):
        PeerPolicy.from_config(entries)


def test_the_pin_is_the_sha256_of_the_subject_public_key_info(ca: InboundCa) -> None:
    spki = ca.spine.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_pin(ca.spine.certificate) == "sha256:" + hashlib.sha256(spki).hexdigest()


async def test_a_peer_outside_the_allow_list_is_closed_before_it_can_send(
    ca: InboundCa, tmp_path: Path
) -> None:
    async with serving(tmp_path, ca, allowed=(ca.spine.pin,)) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.intruder))
        # Nothing sent: the server ends the connection on its own, right after the handshake.
        assert await closed_by_peer(stream) == b""
        assert endpoint.app.refusals.counts == {"peer_not_allowed": 1}

        # The same with a forged "no record" for a real query: refused, nothing read, stored or resolved.
        attempt = await _attempt(endpoint)
        headers, body, _ = reply(hl7=_not_found(attempt), ref_to=attempt.message_id)
        async with httpx.AsyncClient(verify=client_tls(ca, ca.intruder)) as client:
            with pytest.raises(httpx.TransportError):
                await client.post(endpoint.url, content=body, headers=headers)
        assert endpoint.app.refusals.counts == {"peer_not_allowed": 2}
        assert endpoint.processor.counts == {}
        assert endpoint.resolved == []

        # Spine itself is let in, with the genuine answer.
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(endpoint.url, content=body, headers=headers)
        assert response.status_code == 200 and b"Acknowledgment" in response.content
        assert endpoint.resolved == [(attempt.run_id, attempt.nhs_number)]
    assert _rows(endpoint.state, "SELECT disposition FROM inbound") == [("resolved",)]


async def test_without_an_allow_list_any_certificate_from_the_ca_may_post(
    ca: InboundCa, tmp_path: Path
) -> None:
    async with serving(tmp_path, ca, allowed=None) as endpoint:
        headers, body, _ = reply()
        async with httpx.AsyncClient(verify=client_tls(ca, ca.intruder)) as client:
            response = await client.post(endpoint.url, content=body, headers=headers)
        assert response.status_code == 200
        assert endpoint.processor.counts == {"orphan": 1}


# --- From party and CPA id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("from_party", "SOMEONE-ELSE-0000001"), ("cpa_id", "S1OTHERCPA0001")]
)
async def test_a_genuine_peer_with_another_party_or_cpa_gets_a_message_error_and_flags_nobody(
    ca: InboundCa, tmp_path: Path, field: str, value: str
) -> None:
    async with serving(tmp_path, ca, allowed=(ca.spine.pin,)) as endpoint:
        attempt = await _attempt(endpoint)
        headers, forged, message_id = reply(
            hl7=_not_found(attempt), ref_to=attempt.message_id, **{field: value}
        )
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(endpoint.url, content=forged, headers=headers)
            assert response.status_code == 200
            assert b"MessageError" in response.content and b"ValueNotRecognized" in response.content
            assert b"Acknowledgment" not in response.content
            assert endpoint.resolved == []
            # The genuine reply, with the same MessageId, is still processed: the rejection took no key.
            headers, body, _ = reply(
                hl7=_not_found(attempt), ref_to=attempt.message_id, message_id=message_id
            )
            response = await client.post(endpoint.url, content=body, headers=headers)
        assert b"Acknowledgment" in response.content
        assert endpoint.resolved == [(attempt.run_id, attempt.nhs_number)]
        assert endpoint.processor.counts == {"rejected": 1, "resolved": 1}
    rejected = _rows(
        endpoint.state,
        "SELECT message_id, from_party, detail, length(raw), raw_size, attempt_message_id FROM inbound"
        " WHERE disposition = 'rejected'",
    )
    assert len(rejected) == 1
    key, from_party, detail, stored, size, attempt_id = rejected[0]
    assert key != message_id and attempt_id is None
    assert from_party == (value if field == "from_party" else SPINE_PARTY)
    assert "ValueNotRecognized" in str(detail) and message_id in str(detail)
    assert stored == size == len(forged)


def test_logged_message_ids_are_uuids_or_quoted() -> None:
    uuid = new_id()
    assert loggable_id(uuid) == uuid
    forged = "x\n2026-01-01T00:00:00 INFO batch run=- all replies received"
    assert "\n" not in loggable_id(forged) and loggable_id(forged).startswith("'x\\n")
    assert loggable_id("a" * 500).endswith("…") and len(loggable_id("a" * 500)) < 80
    assert loggable_id("") == "-"


# --- floods ---------------------------------------------------------------------------------------------


async def test_a_declared_2_mib_body_is_refused_before_it_is_sent(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        await stream.send(request_head(2 << 20))  # and not a byte of the body
        response = await read_response(stream)
        assert response.status == 413 and response.headers["connection"] == "close"
        assert endpoint.app.refusals.counts == {"too_large": 1}
        assert endpoint.processor.counts == {}


async def test_a_chunked_body_over_1_mib_is_refused_while_it_is_read(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        await stream.send(request_head(None, chunked=True))
        chunk = b"x" * 65536
        for _ in range(16):
            await stream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await stream.send(b"3e8\r\n" + b"y" * 1000 + b"\r\n")  # 1 MiB and 1,000 bytes: one over
        response = await read_response(stream)
        assert response.status == 413
        assert endpoint.app.refusals.counts == {"too_large": 1}
        assert endpoint.processor.counts == {}


async def test_a_10000_part_multipart_is_refused_unread(ca: InboundCa, tmp_path: Path) -> None:
    part = b"--b\r\nContent-Type: text/xml\r\n\r\n\r\n"
    body = part * 10_000 + b"--b--\r\n"
    assert len(body) < 1 << 20
    async with serving(tmp_path, ca) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            response = await client.post(
                endpoint.url, content=body, headers={"Content-Type": 'multipart/related; boundary="b"'}
            )
        assert response.status_code == 500 and b"Acknowledgment" not in response.content
        assert endpoint.processor.counts == {"too_many_parts": 1}
    assert MAX_PARTS == 4
    assert _rows(endpoint.state, "SELECT COUNT(*) FROM inbound") == [(0,)]


async def test_orphans_beyond_the_quota_are_acknowledged_but_not_stored(
    ca: InboundCa, tmp_path: Path
) -> None:
    quota = SideQuota(max_messages=20, max_bytes=16 << 20)
    padding = b"<!--" + b"p" * (200 << 10) + b"-->"
    hl7 = b"<QUQI_IN010000UK14 xmlns='urn:hl7-org:v3'>" + padding + b"</QUQI_IN010000UK14>"
    async with serving(tmp_path, ca, quota=quota) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            for _ in range(200):
                headers, body, message_id = reply(hl7=hl7)
                response = await client.post(endpoint.url, content=body, headers=headers)
                assert response.status_code == 200
                assert b"Acknowledgment" in response.content and message_id.encode() in response.content
        assert endpoint.processor.counts == {"orphan": 20, "orphan_not_stored": 180}
    rows = _rows(endpoint.state, "SELECT length(raw), raw_size FROM inbound WHERE disposition = 'orphan'")
    assert len(rows) == 20
    assert all(stored == SIDE_RAW_LIMIT and size == len(body) for stored, size in rows)
    # 200 bodies of about 200 KiB arrived; the state holds 20 truncated ones.
    (stored_bytes,) = _rows(endpoint.state, "SELECT SUM(length(raw) + length(ack)) FROM inbound")[0]
    assert isinstance(stored_bytes, int) and stored_bytes < 20 * (SIDE_RAW_LIMIT + 4096)


async def test_rejected_messages_share_the_quota(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca, quota=SideQuota(max_messages=3)) as endpoint:
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            for _ in range(5):
                headers, body, _ = reply(from_party="NOT-SPINE-0000001")
                response = await client.post(endpoint.url, content=body, headers=headers)
                assert b"MessageError" in response.content
        assert endpoint.processor.counts == {"rejected": 5, "rejected_not_stored": 2}
    assert _rows(endpoint.state, "SELECT COUNT(*) FROM inbound WHERE disposition = 'rejected'") == [(3,)]


async def test_300_idle_connections_are_closed_after_the_handshake_timeout(
    ca: InboundCa, tmp_path: Path
) -> None:
    limits = InboundLimits(handshake_timeout_s=1.0)
    async with serving(tmp_path, ca, limits=limits) as endpoint:
        idle = [await anyio.connect_tcp("127.0.0.1", endpoint.port) for _ in range(300)]
        # Spine still gets in while they are held.
        headers, body, _ = reply()
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            assert (await client.post(endpoint.url, content=body, headers=headers)).status_code == 200
        for stream in idle:
            assert await closed_by_peer(stream) == b""
        refused = endpoint.app.refusals.counts
        # Each ended by its deadline, or evicted (oldest first) to keep at most max_handshakes pending.
        assert refused.get("tls_handshake_timeout", 0) + refused.get("too_many_handshakes", 0) == 300
        assert refused.get("too_many_handshakes", 0) <= 300 + 1 - limits.max_handshakes  # and Spine's


async def test_the_oldest_pending_handshake_makes_room_for_a_new_one(ca: InboundCa, tmp_path: Path) -> None:
    limits = InboundLimits(max_handshakes=5)
    async with serving(tmp_path, ca, limits=limits) as endpoint:
        idle = [await anyio.connect_tcp("127.0.0.1", endpoint.port) for _ in range(5)]
        # A sixth connection evicts the first, not itself: Spine gets through a full queue.
        headers, body, _ = reply()
        async with httpx.AsyncClient(verify=client_tls(ca, ca.spine)) as client:
            assert (await client.post(endpoint.url, content=body, headers=headers)).status_code == 200
        assert await closed_by_peer(idle[0]) == b""
        assert endpoint.app.refusals.counts == {"too_many_handshakes": 1}
        for stream in idle[1:]:
            await stream.aclose()


async def test_the_http2_preface_is_refused(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        await stream.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert await closed_by_peer(stream) == b""
        assert endpoint.app.refusals.counts == {"http2": 1}


async def test_an_h2c_upgrade_is_refused(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        upgrade = {
            "Connection": "Upgrade, HTTP2-Settings",
            "Upgrade": "h2c",
            "HTTP2-Settings": "AAMAAABkAAQAAP__",
        }
        await stream.send(request_head(0, extra=upgrade))
        response = await read_response(stream)
        assert response.status == 400 and response.headers["connection"] == "close"
        assert endpoint.app.refusals.counts == {"upgrade": 1}


async def test_the_server_offers_only_http_1_1(ca: InboundCa, tmp_path: Path) -> None:
    context = client_tls(ca, ca.spine)
    context.set_alpn_protocols(["h2", "http/1.1"])
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, context)
        ssl_object = stream.extra(TLSAttribute.ssl_object)
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        await stream.aclose()


@pytest.mark.parametrize("what", ["body", "head", "nothing"])
async def test_a_slow_request_is_cut_off(ca: InboundCa, tmp_path: Path, what: str) -> None:
    limits = InboundLimits(request_timeout_s=1.0, keep_alive_s=1)
    async with serving(tmp_path, ca, limits=limits) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        if what == "body":
            await stream.send(request_head(100) + b"x")
        elif what == "head":
            await stream.send(request_head(100)[:40])
        assert await closed_by_peer(stream) == b""
        assert endpoint.app.refusals.counts == {"request_timeout": 1}
        assert endpoint.processor.counts == {}


async def test_a_request_head_over_the_limit_is_refused(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca) as endpoint:
        stream = await connect_tls(endpoint.port, client_tls(ca, ca.spine))
        await stream.send(request_head(10, extra={f"X-Filler-{i}": "f" * 1000 for i in range(70)}))
        await closed_by_peer(stream)
        assert endpoint.app.refusals.counts == {"too_large": 1}


async def test_connections_beyond_the_cap_get_503(ca: InboundCa, tmp_path: Path) -> None:
    async with serving(tmp_path, ca, limits=InboundLimits(max_connections=2)) as endpoint:
        headers, body, _ = reply()
        head = request_head(len(body), content_type=headers["Content-Type"])
        streams = [await connect_tls(endpoint.port, client_tls(ca, ca.spine)) for _ in range(3)]
        statuses = []
        for stream in streams:
            await stream.send(head + body)
            statuses.append((await read_response(stream)).status)
        assert statuses == [200, 200, 503]
        assert endpoint.app.refusals.counts == {"too_many_connections": 1}
        # The kept-alive ones still serve, and the refused one is closed.
        await streams[0].send(head + body)
        assert (await read_response(streams[0])).status == 200
        assert await closed_by_peer(streams[2]) == b""
