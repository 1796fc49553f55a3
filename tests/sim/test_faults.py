"""Every injected fault, one at a time at rate 1.0, and the deterministic decider."""

from __future__ import annotations

import random

import anyio
import httpx
import pytest

from batch.ebxml import EB_NS, Rejected, classify_sync_answer
from batch.hl7 import AppAcknowledgement
from batch.pki import DevPki
from batch.xmlsafe import XmlError, parse_xml
from spine_sim.dataset import (
    generate_dataset,
)
from spine_sim.faults import FAULT_NAMES, FaultConfig, FaultConfigError, FaultDecider, parse_fault_option
from tests.sim.harness import (
    FLAGGED,
    NOT_ON_CPIS,
    WAIT_S,
    accepted,
    fault_codes,
    only,
    reply_of,
    running_spine,
    send_query,
)

# --- faults, one at a time at rate 1.0 ---------------------------------------------------------------------


async def test_drop_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("drop_reply")) as spine:
        accepted(await send_query(spine.http, FLAGGED))
        # Replies are scheduled before the 202 goes out, so nothing pending now means nothing will come.
        stats = await spine.stats()
    assert stats["faults_injected"] == {"drop_reply": 1}
    assert stats["queries_accepted"] == 1
    assert (stats["replies_pending"], stats["replies_sent"], stats["replies_failed"]) == (0, 0, 0)
    assert spine.receiver.received == []


async def test_duplicate_reply_has_the_same_message_id(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("duplicate_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        first, second = await spine.receiver.next(), await spine.receiver.next()
    assert first.header.message_id == second.header.message_id
    assert first.body == second.body
    assert first.header.ref_to_message_id == sent.message_id


async def test_duplicate_reply_new_id(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("duplicate_reply_new_id")) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS)
        first, second = await spine.receiver.next(), await spine.receiver.next()
    assert first.header.message_id != second.header.message_id
    assert first.header.ref_to_message_id == second.header.ref_to_message_id == sent.message_id
    assert reply_of(first).message_ref == reply_of(second).message_ref == sent.message_id


async def test_reorder_replies(pki: DevPki) -> None:
    faults = only("reorder_replies", reorder_window=2, reorder_hold_s=WAIT_S)
    async with running_spine(pki, faults=faults) as spine:
        first = await send_query(spine.http, FLAGGED)
        second = await send_query(spine.http, NOT_ON_CPIS)
        arrivals = [await spine.receiver.next(), await spine.receiver.next()]
    assert [r.header.ref_to_message_id for r in arrivals] == [second.message_id, first.message_id]


async def test_reordered_reply_is_overtaken_by_a_normal_one(pki: DevPki) -> None:
    # Pick a seed at which the first number is reordered and the second is not, so the second overtakes.
    config = FaultConfig(rates={"reorder_replies": 0.5}, reorder_hold_s=WAIT_S)
    seed = next(
        s
        for s in range(1000)
        if (d := FaultDecider(FaultConfig(rates=config.rates, seed=s))).decide(FLAGGED, 0).reorder_replies
        and not d.decide(NOT_ON_CPIS, 0).reorder_replies
    )
    faults = FaultConfig(rates=config.rates, seed=seed, reorder_hold_s=WAIT_S)
    async with running_spine(pki, faults=faults) as spine:
        held = await send_query(spine.http, FLAGGED)
        normal = await send_query(spine.http, NOT_ON_CPIS)
        arrivals = [await spine.receiver.next(), await spine.receiver.next()]
    assert [r.header.ref_to_message_id for r in arrivals] == [normal.message_id, held.message_id]


async def test_late_reply_waits_late_delay(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("late_reply", late_delay_s=0.3)) as spine:
        sent = await send_query(spine.http, FLAGGED)
        accepted_at = anyio.current_time()
        received = await spine.receiver.next()
        arrived_at = anyio.current_time()
    assert received.header.ref_to_message_id == sent.message_id
    # A lower bound only: the reply cannot come before its delay, however slow the machine.
    assert arrived_at - accepted_at >= 0.3 - 0.05


async def test_reply_before_accept(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("reply_before_accept"), latency_s=5.0) as spine:
        sent = await send_query(spine.http, FLAGGED)
        # No waiting: the reply was delivered and acknowledged before the 202 was written.
        assert [r.header.ref_to_message_id for r in spine.receiver.received] == [sent.message_id]
        accepted(sent)
        stats = await spine.stats()
    assert stats["replies_sent"] == 1


@pytest.mark.parametrize(("fault", "codes", "retriable"), [
    ("soap_fault_retriable", {"200", "206", "208"}, True),
    ("soap_fault_permanent", {"101"}, False),
])  # fmt: skip
async def test_soap_faults(pki: DevPki, fault: str, codes: set[str], retriable: bool) -> None:
    async with running_spine(pki, faults=only(fault)) as spine:
        sent = await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    assert sent.response.status_code == 500
    (code,) = fault_codes(sent.response.content)
    assert code in codes
    answer = classify_sync_answer(500, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected)
    assert answer.retriable is retriable
    # Not processed: no reply, no notification, nothing accepted.
    assert (stats["queries_accepted"], stats["replies_pending"], stats["replies_sent"]) == (0, 0, 0)
    assert stats["faults_injected"] == {fault: 1}


async def test_retriable_fault_codes_cover_all_three() -> None:
    decider = FaultDecider(only("soap_fault_retriable"))
    codes = {decider.decide(FLAGGED, n).soap_fault_code for n in range(60)}
    assert codes == {"200", "206", "208"}


async def test_message_error_fault(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("message_error")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    status = sent.response.status_code
    assert status in (200, 500)
    answer = classify_sync_answer(status, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected) and not answer.retriable
    root = parse_xml(sent.response.content)
    assert root.findtext(".//eb:RefToMessageId", namespaces={"eb": EB_NS}) == sent.message_id
    assert stats["queries_accepted"] == 0


async def test_message_error_uses_both_statuses() -> None:
    decider = FaultDecider(only("message_error"))
    assert {decider.decide(FLAGGED, n).message_error_status for n in range(40)} == {200, 500}


async def test_mcci_error_reply_replaces_the_business_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("mcci_error_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        received = await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
    assert received.header.action == "MCCI_IN010000UK13"
    reply = reply_of(received)
    assert isinstance(reply, AppAcknowledgement)
    assert (reply.ack_type, reply.message_ref) == ("AE", sent.message_id)
    assert stats["replies_sent"] == 1


async def test_malformed_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("malformed_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        received = await spine.receiver.next()
    assert received.header.ref_to_message_id == sent.message_id
    assert received.message.hl7
    with pytest.raises(XmlError):
        parse_xml(received.message.hl7)


async def test_unknown_reply_comes_in_addition_to_the_real_one(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("unknown_reply")) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS)
        real, unknown = await spine.receiver.next(), await spine.receiver.next()
    assert real.header.ref_to_message_id == reply_of(real).message_ref == sent.message_id
    assert unknown.header.ref_to_message_id not in (None, sent.message_id)
    assert reply_of(unknown).message_ref == unknown.header.ref_to_message_id
    assert unknown.header.conversation_id != sent.conversation_id


async def test_connection_reset(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("connection_reset")) as spine:
        with pytest.raises(httpx.TransportError):
            await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    assert stats["queries_received"] == 1
    assert stats["queries_accepted"] == 0
    assert stats["faults_injected"] == {"connection_reset": 1}
    assert stats["replies_pending"] == 0


async def test_slow_accept(pki: DevPki) -> None:
    async with running_spine(pki, faults=only("slow_accept", slow_accept_s=0.3)) as spine:
        started = anyio.current_time()
        sent = await send_query(spine.http, FLAGGED)
        elapsed = anyio.current_time() - started
        received = await spine.receiver.next()
    accepted(sent)
    assert elapsed >= 0.3 - 0.05  # lower bound only
    assert received.header.ref_to_message_id == sent.message_id


def test_every_fault_has_a_test() -> None:
    covered = {
        "drop_reply", "duplicate_reply", "duplicate_reply_new_id", "reorder_replies", "late_reply",
        "reply_before_accept", "soap_fault_retriable", "soap_fault_permanent", "message_error",
        "mcci_error_reply", "malformed_reply", "unknown_reply", "connection_reset", "slow_accept",
    }  # fmt: skip
    assert covered == FAULT_NAMES


# --- the decider ----------------------------------------------------------------------------------------------


def test_decider_is_deterministic_and_ignores_arrival_order() -> None:
    rates = {name: 0.2 for name in FAULT_NAMES}
    keys = [(n, k) for n in generate_dataset(50, seed=3).nhs_numbers() for k in range(3)]
    first = {key: FaultDecider(FaultConfig(rates=rates, seed=11)).decide(*key) for key in keys}
    shuffled = keys[:]
    random.Random(5).shuffle(shuffled)
    decider = FaultDecider(FaultConfig(rates=rates, seed=11))
    second = {key: decider.decide(*key) for key in shuffled}
    assert first == second
    other_seed = FaultDecider(FaultConfig(rates=rates, seed=12))
    assert any(other_seed.decide(*key) != first[key] for key in keys)
    # The occurrence matters: a re-query of the same number is decided afresh.
    assert any(first[(n, 0)] != first[(n, 1)] for n, _ in keys)


def test_decider_rates() -> None:
    numbers = generate_dataset(400, seed=9).nhs_numbers()
    hits = sum(
        FaultDecider(FaultConfig(rates={"drop_reply": 0.3}, seed=1)).decide(n, 0).drop_reply for n in numbers
    )
    assert 0.2 * len(numbers) < hits < 0.4 * len(numbers)
    never = FaultDecider(FaultConfig(rates={"drop_reply": 0.0}))
    assert all(never.decide(n, 0).injected == () for n in numbers)


def test_rejecting_faults_preempt_reply_faults() -> None:
    decision = FaultDecider(FaultConfig(rates=dict.fromkeys(FAULT_NAMES, 1.0))).decide(FLAGGED, 0)
    assert decision.injected == ("connection_reset",)


def test_fault_options() -> None:
    assert parse_fault_option("drop_reply=0.25") == ("drop_reply", 0.25)
    for bad in ("drop_reply", "nonsense=0.1", "drop_reply=2", "drop_reply=x"):
        with pytest.raises(FaultConfigError):
            parse_fault_option(bad)
    with pytest.raises(FaultConfigError):
        FaultConfig(rates={"drop_reply": -0.1})
