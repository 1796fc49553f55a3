"""The simulated Spine over real mutual TLS: ground truth, the notification detector, header checks, stats."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from lxml import etree

from batch.ebxml import EB_NS, SERVICE, Rejected, classify_sync_answer
from batch.hl7 import AppAcknowledgement, QueryFailed, QueryResponse, parse_reply
from batch.ids import new_id
from batch.pki import DevPki
from batch.tls import client_context
from batch.xmlsafe import parse_xml
from spine_sim.arrivals import Arrival
from spine_sim.faults import FaultConfig, FaultDecider
from spine_sim.server import QUERY_PATH, RESET_PATH, STATS_PATH
from spine_sim.stats import SimStats
from tests.pki_support import make_untrusted_client
from tests.sim.harness import (
    CLIENT_PARTY,
    FLAGGED,
    MCCI_ERROR,
    NF_NUMBER,
    NOT_ON_CPIS,
    QUQI_ERROR,
    SENDER,
    SIM,
    TWO_RECORDS,
    UNBORN,
    UNLISTED,
    WAIT_S,
    SentQuery,
    accepted,
    fault_codes,
    reply_of,
    running_spine,
    send_query,
    small_dataset,
)

# --- the happy paths against ground truth -------------------------------------------------------------------


async def test_flagged_child_gets_a_repc_matching_the_dataset(pki: DevPki) -> None:
    dataset = small_dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        sent = await send_query(spine.http, FLAGGED)
        accepted(sent)
        received = await spine.receiver.next()

    header = received.header
    assert header.action == "REPC_IN000007GB01"
    assert header.service == SERVICE
    assert header.from_party == SIM.party_key
    assert header.to_party == CLIENT_PARTY
    assert header.cpa_id == SIM.cpa_id
    assert header.ref_to_message_id == sent.message_id
    assert header.conversation_id == sent.conversation_id
    assert header.message_id != sent.message_id
    assert received.message.soap_action == f"{SERVICE}/REPC_IN000007GB01"

    reply = reply_of(received)
    assert isinstance(reply, QueryResponse)
    assert reply.message_id == header.message_id
    expected = dataset.expected(FLAGGED)
    assert expected.outcome == "flagged"
    assert [
        (p.plan_type, p.start.date() if p.start else None, p.end.date() if p.end else None)
        for _, p in reply.plans
    ] == [(p.type, p.start, p.end) for p in expected.plans]
    (record,) = reply.records
    la = expected.records[0].local_authority
    assert (record.local_authority.code, record.local_authority.name) == (la.code, la.name)
    assert (record.local_authority.office_phone, record.local_authority.emergency_phone) == (
        la.office_phone,
        la.emergency_phone,
    )
    assert record.subject_kind == "child"
    assert FLAGGED in record.subject_ids
    assert reply.total_access_records == len(reply.access) == 1
    assert reply.access[0].organisation == "Northbridge General Hospital (simulated)"


async def test_two_records_and_unborn_child(pki: DevPki) -> None:
    dataset = small_dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        accepted(await send_query(spine.http, TWO_RECORDS))
        two = reply_of(await spine.receiver.next())
        accepted(await send_query(spine.http, UNBORN))
        unborn = reply_of(await spine.receiver.next())

    assert isinstance(two, QueryResponse)
    assert [r.local_authority.code for r in two.records] == ["SIMLA01", "SIMLA02"]
    assert [p.plan_type for _, p in two.plans] == [p.type for p in dataset.expected(TWO_RECORDS).plans]
    assert isinstance(unborn, QueryResponse)
    assert [(r.subject_kind, [p.plan_type for p in r.plans]) for r in unborn.records] == [("unborn", ["UCP"])]


@pytest.mark.parametrize("number", [NOT_ON_CPIS, UNLISTED])
async def test_not_found_gives_quqi_nhsncc002(pki: DevPki, number: str) -> None:
    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, number)
        accepted(sent)
        received = await spine.receiver.next()

    assert received.header.action == "QUQI_IN010000UK14"
    reply = reply_of(received)
    assert isinstance(reply, QueryFailed)
    assert reply.message_ref == sent.message_id
    assert reply.response_code == "ID"
    assert [(i.code, i.display_name) for i in reply.issues] == [("NHSNCC002", "No Record Found")]
    assert reply.not_found
    assert small_dataset().expected(number).outcome == "not_flagged"


async def test_nf_variant_is_not_found_by_its_response_code_alone(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        accepted(await send_query(spine.http, NF_NUMBER))
        received = await spine.receiver.next()

    assert received.message.hl7 is not None
    reply = parse_reply(received.message.hl7, not_found_codes=frozenset())
    assert isinstance(reply, QueryFailed)
    assert reply.response_code == "NF"
    assert reply.not_found
    assert [i.code for i in reply.issues] == ["SIMNF01"]


async def test_error_numbers(pki: DevPki) -> None:
    dataset = small_dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        quqi_sent = await send_query(spine.http, QUQI_ERROR)
        quqi = await spine.receiver.next()
        mcci_sent = await send_query(spine.http, MCCI_ERROR)
        mcci = await spine.receiver.next()

    quqi_reply = reply_of(quqi)
    assert isinstance(quqi_reply, QueryFailed)
    assert not quqi_reply.not_found
    assert quqi_reply.message_ref == quqi_sent.message_id
    assert [i.code for i in quqi_reply.issues] == ["SIMQE01"]
    assert dataset.expected(QUQI_ERROR).error_codes == ("SIMQE01",)

    assert mcci.header.action == "MCCI_IN010000UK13"
    mcci_reply = reply_of(mcci)
    assert isinstance(mcci_reply, AppAcknowledgement)
    assert mcci_reply.ack_type == "AE"
    assert mcci_reply.message_ref == mcci_sent.message_id
    assert [d.code for d in mcci_reply.details] == ["SIMAE01"]
    assert dataset.expected(MCCI_ERROR).outcome == "error"


async def test_hl7_acknowledgements_refer_to_the_hl7_message_id(pki: DevPki) -> None:
    hl7_id = new_id()

    def other_hl7_id(hl7: bytes) -> bytes:
        root = parse_xml(hl7)
        root.find("{urn:hl7-org:v3}id").set("root", hl7_id)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS, edit_hl7=other_hl7_id)
        received = await spine.receiver.next()
    assert received.header.ref_to_message_id == sent.message_id
    assert reply_of(received).message_ref == hl7_id


# --- docs/decisions.md#d1: the local-authority notification detector ----------------------------------------


def _edit_flag(change: Callable[[etree._Element, etree._Element], None]) -> Callable[[bytes], bytes]:
    def edit(hl7: bytes) -> bytes:
        root = parse_xml(hl7)
        (flag,) = root.iter("{urn:hl7-org:v3}accessEventType")
        change(flag, flag.getparent())
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    return edit


def _remove(flag: etree._Element, parent: etree._Element) -> None:
    parent.remove(flag)


def _set_true(flag: etree._Element, parent: etree._Element) -> None:
    flag[0].set("value", "true")


def _duplicate(flag: etree._Element, parent: etree._Element) -> None:
    parent.append(etree.fromstring(etree.tostring(flag)))


async def test_control_query_without_flag_counts_exactly_one_notification(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        assert (await spine.stats())["notifications"] == 0

        accepted(await send_query(spine.http, FLAGGED, edit_hl7=_edit_flag(_remove)))
        # Still answered normally.
        assert (await spine.receiver.next()).header.action == "REPC_IN000007GB01"
        stats = await spine.stats()
    assert stats["notifications"] == 1
    assert stats["queries_accepted"] == 2


@pytest.mark.parametrize("change", [_set_true, _duplicate], ids=["value-true", "flag-twice"])
async def test_any_flag_but_one_false_is_a_notification(pki: DevPki, change: Callable[..., None]) -> None:
    async with running_spine(pki) as spine:
        accepted(await send_query(spine.http, NOT_ON_CPIS, edit_hl7=_edit_flag(change)))
        await spine.receiver.next()
        assert (await spine.stats())["notifications"] == 1


# --- mutual TLS ---------------------------------------------------------------------------------------------


async def test_client_without_a_certificate_from_the_ca_is_refused(pki: DevPki, tmp_path: Path) -> None:
    untrusted_cert, untrusted_key = make_untrusted_client(tmp_path)
    async with running_spine(pki) as spine:
        contexts = [
            client_context(untrusted_cert, untrusted_key, pki.ca_cert),
            ssl.create_default_context(cafile=pki.ca_cert),  # no client certificate at all
        ]
        for context in contexts:
            async with httpx.AsyncClient(verify=context, base_url=spine.server.url) as stranger:
                with pytest.raises(httpx.TransportError):
                    await send_query(stranger, FLAGGED)
        stats = await spine.stats()
    assert stats["queries_received"] == 0
    assert spine.receiver.received == []


async def test_reply_leg_uses_spines_certificate(pki: DevPki) -> None:
    # The receiver requires a client certificate from the CA; a delivered reply proves the sim presented one.
    async with running_spine(pki) as spine:
        accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_sent"] == 1)
    assert stats["replies_failed"] == 0


# --- header checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "code", "description"),
    [
        ({"cpa_id": "WRONGCPA"}, "ValueNotRecognized", "501319:Unknown eb:CPAId"),
        ({"to_party": "SOMEONE-ELSE"}, "ValueNotRecognized", "501314:Invalid To Party Type attribute"),
        ({"action": "QUPC_IN000008GB01"}, "NotSupported", None),
    ],
    ids=["wrong-cpa-id", "wrong-to-party", "wrong-action"],
)
async def test_bad_envelope_gets_a_message_error(
    pki: DevPki, envelope: dict[str, str], code: str, description: str | None
) -> None:
    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, FLAGGED, **envelope)
        stats = await spine.stats()
    assert sent.response.status_code == 500
    root = parse_xml(sent.response.content)
    ns = {"eb": EB_NS}
    (error,) = root.findall(".//eb:ErrorList/eb:Error", ns)
    assert error.get(f"{{{EB_NS}}}errorCode") == code
    if description is not None:
        assert error.findtext("eb:Description", namespaces=ns) == description
    assert root.findtext(".//eb:MessageData/eb:RefToMessageId", namespaces=ns) == sent.message_id
    assert root.findtext(".//eb:Action", namespaces=ns) == "MessageError"
    answer = classify_sync_answer(500, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected) and not answer.retriable
    assert stats["queries_accepted"] == 0
    assert stats["queries_rejected"] == 1


async def test_unreadable_message_is_refused(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        response = await spine.http.post(QUERY_PATH, content=b"hello", headers={"content-type": "text/plain"})
        missing_hl7 = await send_query(spine.http, FLAGGED, edit_hl7=lambda _: b"<not-a-query/>")
        bad_asid = await send_query(
            spine.http, FLAGGED, edit_hl7=lambda h: h.replace(SENDER.asid.encode(), b"12")
        )
        stats = await spine.stats()
    assert response.status_code == 400
    for sent, code in ((missing_hl7, "ErrorBase1712"), (bad_asid, "ErrorBase1732")):
        assert sent.response.status_code == 500
        assert fault_codes(sent.response.content)[0].startswith(code)
        answer = classify_sync_answer(500, "text/xml", sent.response.content)
        assert isinstance(answer, Rejected) and not answer.retriable
    assert stats["queries_received"] == 3
    assert stats["queries_accepted"] == 0


# --- stats --------------------------------------------------------------------------------------------------


async def test_stats_endpoint_and_reset(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        for number in (FLAGGED, FLAGGED, NOT_ON_CPIS):
            accepted(await send_query(spine.http, number))
            await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_sent"] == 3)
        served = await spine.stats()
        reset = await spine.http.post(RESET_PATH)
        after = await spine.stats()
        wrong_method = await spine.http.post(STATS_PATH)
    assert served["queries_by_nhs_number"] == {FLAGGED: 2, NOT_ON_CPIS: 1}
    assert (stats["queries_received"], stats["queries_accepted"], stats["replies_sent"]) == (3, 3, 3)
    assert stats["notifications"] == 0
    assert 1 <= served["max_queries_in_1s_window"] <= 3
    assert served["in_flight_max"] >= 1
    assert set(served) >= {
        "queries_received", "queries_accepted", "replies_sent", "replies_failed", "notifications",
        "queries_by_nhs_number", "faults_injected", "max_queries_in_1s_window", "in_flight_max",
    }  # fmt: skip
    assert reset.status_code == 200
    assert after["queries_received"] == after["replies_sent"] == 0
    assert after["queries_by_nhs_number"] == {}
    assert wrong_method.status_code == 405


def test_rate_window_is_sliding() -> None:
    stats = SimStats()
    for t in (0.0, 0.5, 0.9, 1.0, 1.45, 1.95):
        stats.query_arrived(t)
    # (0.45, 1.45] holds 0.5, 0.9, 1.0, 1.45; a fixed 1 s bucket would have seen at most 3.
    assert stats.max_queries_in_1s_window == 4


# --- acknowledgement delay ----------------------------------------------------------------------------------


async def test_ack_delay_holds_the_202_while_other_connections_are_served(pki: DevPki) -> None:
    outcome: list[SentQuery] = []
    async with running_spine(pki, ack_delay_s=WAIT_S * 10) as spine, anyio.create_task_group() as task_group:

        async def held_query() -> None:
            async with spine.client() as other:
                outcome.append(await send_query(other, FLAGGED))

        task_group.start_soon(held_query)
        with anyio.fail_after(WAIT_S):
            await spine.server.wait_for_stats(lambda s: s["queries_accepted"] == 1)
        # The query is Spine's: its reply (latency 0) overtakes the 202 still held on the first connection.
        reply = await spine.receiver.next()
        # Another connection is served in full meanwhile.
        stats = await spine.stats()
        assert outcome == []
        task_group.cancel_scope.cancel()
    assert stats["in_flight"] == 1
    assert reply.header.action == "REPC_IN000007GB01"


async def test_ack_delay_still_answers_202(pki: DevPki) -> None:
    async with running_spine(pki, ack_delay_s=0.05) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS)
        received = await spine.receiver.next()
    accepted(sent)
    assert received.header.ref_to_message_id == sent.message_id


# --- the arrival log ----------------------------------------------------------------------------------------


async def test_every_query_post_is_one_arrival(pki: DevPki) -> None:
    faults = FaultConfig(rates={"connection_reset": 0.5, "drop_reply": 0.5}, seed=3)
    decider = FaultDecider(faults)
    reset = next(n for n in (FLAGGED, NOT_ON_CPIS, UNBORN, TWO_RECORDS) if decider.decide(n, 0).reject)
    fine = next(n for n in (FLAGGED, NOT_ON_CPIS, UNBORN, TWO_RECORDS) if not decider.decide(n, 0).injected)
    async with running_spine(pki, faults=faults) as spine:
        before = time.time()
        ok = await send_query(spine.http, fine)
        unreadable = await spine.http.post(
            QUERY_PATH, content=b"hello", headers={"content-type": "text/plain"}
        )
        wrong_cpa = await send_query(spine.http, fine, cpa_id="WRONGCPA")
        with pytest.raises(httpx.TransportError):
            await send_query(spine.http, reset)
        after = time.time()
    accepted(ok)
    assert unreadable.status_code == 400
    assert wrong_cpa.response.status_code == 500
    first, second, third, fourth = spine.arrivals
    assert first == Arrival(first.t, ok.message_id, fine, True, None)
    assert second == Arrival(second.t, None, None, False, None)
    assert third == Arrival(third.t, wrong_cpa.message_id, fine, False, None)
    assert (fourth.nhs_number, fourth.accepted, fourth.fault) == (reset, False, "connection_reset")
    assert before <= first.t <= second.t <= third.t <= fourth.t <= after


async def test_an_accepted_query_with_reply_faults_names_them(pki: DevPki) -> None:
    async with running_spine(
        pki, faults=FaultConfig(rates={"drop_reply": 1.0, "slow_accept": 1.0}, slow_accept_s=0)
    ) as spine:
        sent = await send_query(spine.http, FLAGGED)
    accepted(sent)
    assert [(a.message_id, a.accepted, a.fault) for a in spine.arrivals] == [
        (sent.message_id, True, "drop_reply,slow_accept")
    ]


def test_arrival_lines_round_trip() -> None:
    arrival = Arrival(
        1767225600.25, "6C7F3F5B-0E0A-4D9B-9C7A-2B8F1D3E4A51", FLAGGED, False, "soap_fault_retriable"
    )
    line = arrival.to_line()
    assert line.startswith("arrival {") and "\n" not in line
    assert Arrival.from_line(line) == arrival
    assert Arrival.from_line("cpis-batch sim listening on https://127.0.0.1:1") is None
