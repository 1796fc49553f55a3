"""The reply processor on its own: an ebXML reply in, a stored and correlated row and our answer out.

Replies are built by the simulator's own ebXML and HL7 code, stored in a real state file, and read back with
plain SQL, so each test sees what a run would: which child a reply resolved, how it was filed, what we answered.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from batch import mime
from batch.attempts import AttemptIndex
from batch.correlate import (
    SIDE_RAW_LIMIT,
    XML_CONTENT_TYPE,
    HttpAnswer,
    ReplyProcessor,
    SideQuota,
    _bounded,
    loggable_id,
)
from batch.ids import new_id
from batch.states import Outcome
from batch.store import AttemptRef, ChildOutcome, InboundRecord, Store, StoredInbound, StoreError
from spine_sim import ebxml as sim_ebxml
from spine_sim.replies import (
    SimLocalAuthority,
    SimPlan,
    SimRecord,
    build_app_acknowledgement,
    build_query_failed,
    build_query_response,
)

OUR_PARTY, SPINE_PARTY, CPA_ID = "SIMCLINIC-0000101", "SIMSPINE-0000001", "S1SIMCPIS0001"
SERVICE = "urn:nhs:names:services:cpisquery"
NHS_A, NHS_B = "9991234012", "9991234020"
SENT = "2026-12-01T01:00:00.000+00:00"
SPINE_ASID, CLIENT_ASID = "999000000001", "999000000101"
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TEXT_PLAIN = "text/plain; charset=UTF-8"
EB = "{http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd}"
LOGGER = "batch.correlate"

QUQI, REPC, MCCI = "QUQI_IN010000UK14", "REPC_IN000007GB01", "MCCI_IN010000UK13"


# --- replies as Spine sends them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    content_type: str
    soap_action: str
    body: bytes
    message_id: str
    conversation_id: str


def message(
    hl7: bytes,
    *,
    action: str = QUQI,
    ref_to: str | None = None,
    conversation: str | None = None,
    message_id: str | None = None,
    from_party: str = SPINE_PARTY,
    to_party: str = OUR_PARTY,
    cpa_id: str = CPA_ID,
) -> Sent:
    header = sim_ebxml.MessageHeader(
        from_party=from_party,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation or new_id(),
        service=SERVICE,
        action=action,
        message_id=message_id or new_id(),
        timestamp="2026-12-01T09:30:00Z",
        ref_to_message_id=ref_to,
    )
    headers, body = sim_ebxml.build_message(header, hl7)
    return Sent(
        headers["Content-Type"], headers["SOAPAction"], body, header.message_id, header.conversation_id
    )


def not_found(
    message_ref: str | None = None, code: str = "NHSNCC002", display: str = "No Record Found"
) -> bytes:
    return build_query_failed(
        reply_id=new_id(),
        message_ref=message_ref or new_id(),
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        issue_code=code,
        issue_display=display,
    )


def app_ack(ack_type: str, message_ref: str | None = None) -> bytes:
    return build_app_acknowledgement(
        reply_id=new_id(),
        message_ref=message_ref or new_id(),
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        ack_type=ack_type,
        detail_code="5000",
        detail_display="Unable to process",
    )


def repc(nhs_number: str) -> bytes:
    la = SimLocalAuthority("E09000033", "Westminster", "020 7946 0001", "07700 900001")
    record = SimRecord(la, (SimPlan("CPP", NOW.date(), None),), "child", "Alexa", "Testcase", NOW.date())
    return build_query_response(
        reply_id=new_id(),
        message_ref=new_id(),
        nhs_number=nhs_number,
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        records=(record,),
        access=(),
    )


def orphan(size: int = 0, **kwargs: Any) -> Sent:
    """A reply that names nothing we sent; `size` pads its HL7 part with a comment to about that many bytes."""
    padding = b"<!--" + b"x" * size + b"-->" if size else b""
    return message(
        b"<QUQI_IN010000UK14 xmlns='urn:hl7-org:v3'>" + padding + b"</QUQI_IN010000UK14>", **kwargs
    )


def bare_envelope(sent: Sent) -> bytes:
    """The ebXML part of a message alone: what a signal without payload looks like."""
    boundary = mime.parse_content_type(sent.content_type).params["boundary"]
    return mime.split_multipart(sent.body, boundary)[0].content


# --- the processor over a real state file ---------------------------------------------------------------


@dataclass
class Bench:
    processor: ReplyProcessor
    store: Store
    state: Path
    run_id: str
    resolved: list[tuple[str, str]] = field(default_factory=list)

    async def attempt(self, nhs: str = NHS_A) -> AttemptRef:
        ref = AttemptRef(new_id(), self.run_id, nhs, new_id(), new_id())
        await self.store.record_attempt(ref, 1, SENT)
        return ref

    async def post(self, sent: Sent, *, soap_action: str | None = None) -> HttpAnswer:
        return await self.processor.handle(sent.content_type, soap_action or sent.soap_action, sent.body)

    def inbound(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.state) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT message_id, action, ref_to_message_id, conversation_id, from_party, attempt_message_id,"
                " run_id, disposition, detail, raw, ack, raw_size FROM inbound ORDER BY received_at, rowid"
            ).fetchall()
        return [dict(row) for row in rows]

    async def outcome(self, nhs: str = NHS_A) -> ChildOutcome:
        return {o.nhs_number: o for o in await self.store.outcomes(self.run_id)}[nhs]


class FailingStore:
    """A store whose writes of inbound messages fail the first `failures` times, then succeed."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store = store
        self.failures = failures

    async def find_attempt(self, **kwargs: Any) -> AttemptRef | None:
        return await self._store.find_attempt(**kwargs)

    async def store_inbound(self, record: InboundRecord, **kwargs: Any) -> StoredInbound:
        if self.failures:
            self.failures -= 1
            raise StoreError("disk full")
        return await self._store.store_inbound(record, **kwargs)


@asynccontextmanager
async def bench(
    tmp_path: Path,
    *,
    quota: SideQuota | None = None,
    index: AttemptIndex | None = None,
    failures: int = 0,
    not_found_codes: frozenset[str] = frozenset({"NHSNCC002"}),
) -> AsyncIterator[Bench]:
    state = tmp_path / "state.sqlite"
    async with Store.open(state) as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, [NHS_A, NHS_B])
        resolved: list[tuple[str, str]] = []
        processor = ReplyProcessor(
            FailingStore(store, failures) if failures else store,  # type: ignore[arg-type]
            our_party_key=OUR_PARTY,
            spine_party_key=SPINE_PARTY,
            spine_cpa_id=CPA_ID,
            not_found_codes=not_found_codes,
            on_resolved=lambda run_id, nhs: resolved.append((run_id, nhs)),
            side_quota=quota,
            index=index,
        )
        yield Bench(processor, store, state, run.run_id, resolved)


def ack_of(answer: HttpAnswer) -> sim_ebxml.MessageHeader:
    """The header of our acknowledgement or MessageError, read by the simulator's own reader."""
    return sim_ebxml.read_message("text/xml", answer.body).header


def error_of(answer: HttpAnswer) -> tuple[str, str]:
    (error,) = etree.fromstring(answer.body).iter(f"{EB}Error")
    return error.get(f"{EB}errorCode") or "", error.findtext(f"{EB}Description") or ""


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- matching a reply to an attempt -----------------------------------------------------------------------


async def test_a_reply_to_an_attempt_resolves_its_child_and_is_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(not_found(), ref_to=ref.message_id)
        answer = await b.post(sent)
        outcome = await b.outcome()
        rows = b.inbound()

    assert answer.status == 200 and answer.content_type == XML_CONTENT_TYPE
    ack = ack_of(answer)
    assert sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert (ack.action, ack.from_party, ack.to_party) == ("Acknowledgment", OUR_PARTY, SPINE_PARTY)
    assert (ack.conversation_id, ack.cpa_id) == (sent.conversation_id, CPA_ID)
    assert b.resolved == [(b.run_id, NHS_A)]
    assert outcome == ChildOutcome(NHS_A, Outcome.NOT_FLAGGED, None, None, 1, ref.message_id, SENT)
    assert rows == [
        {
            "message_id": sent.message_id,
            "action": QUQI,
            "ref_to_message_id": ref.message_id,
            "conversation_id": sent.conversation_id,
            "from_party": SPINE_PARTY,
            "attempt_message_id": ref.message_id,
            "run_id": b.run_id,
            "disposition": "resolved",
            "detail": None,
            "raw": sent.body,
            "ack": answer.body,
            "raw_size": len(sent.body),
        }
    ]
    assert b.processor.counts == {"resolved": 1}
    assert messages(caplog, logging.DEBUG) == [
        f"inbound {QUQI} {sent.message_id} for attempt {ref.message_id}: resolved"
    ]
    assert messages(caplog, logging.WARNING) == []


async def test_an_error_reply_resolves_its_child_with_the_reason(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt(NHS_B)
        answer = await b.post(message(app_ack("AE"), action=MCCI, ref_to=ref.message_id))
        outcome = await b.outcome(NHS_B)
    assert answer.status == 200
    assert b.resolved == [(b.run_id, NHS_B)]
    assert (outcome.outcome, outcome.reason) == (Outcome.ERROR, "MCCI:AE:5000")


async def test_a_reply_is_matched_by_its_hl7_message_ref_when_its_ebxml_reference_names_nothing(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        answer = await b.post(message(not_found(message_ref=ref.message_id), ref_to=new_id()))
        outcome = await b.outcome()
    assert answer.status == 200
    assert b.resolved == [(b.run_id, NHS_A)]
    assert outcome.outcome is Outcome.NOT_FLAGGED


async def test_the_index_of_open_attempts_answers_before_the_state_file(tmp_path: Path) -> None:
    # The index is trusted as it is: here it holds the attempt under the other child, which shows it was asked.
    index = AttemptIndex()
    async with bench(tmp_path, index=index) as b:
        ref = await b.attempt(NHS_A)
        index.add(AttemptRef(ref.message_id, b.run_id, NHS_B, ref.conversation_id, ref.query_event_id))
        await b.post(message(not_found(), ref_to=ref.message_id))
        outcome_b = await b.outcome(NHS_B)
    assert b.resolved == [(b.run_id, NHS_B)]
    assert outcome_b.outcome is Outcome.NOT_FLAGGED


async def test_an_mcci_aa_is_filed_informational_and_resolves_nobody(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(app_ack("AA"), action=MCCI, ref_to=ref.message_id)
        answer = await b.post(sent)
        outcome = await b.outcome()
        (row,) = b.inbound()
    assert answer.status == 200 and sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert b.resolved == []
    assert outcome.outcome is None
    assert (row["disposition"], row["detail"], row["attempt_message_id"]) == (
        "informational",
        "MCCI AA",
        ref.message_id,
    )
    assert b.processor.counts == {"informational": 1}
    assert messages(caplog, logging.WARNING) == []


async def test_a_second_answer_for_a_child_is_superseded_and_resolves_nobody_again(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        first, second = await b.attempt(), await b.attempt()
        await b.post(message(not_found(), ref_to=first.message_id))
        answer = await b.post(message(app_ack("AE"), action=MCCI, ref_to=second.message_id))
        outcome = await b.outcome()
        rows = b.inbound()
    assert answer.status == 200
    assert b.resolved == [(b.run_id, NHS_A)]
    assert outcome.outcome is Outcome.NOT_FLAGGED
    assert [r["disposition"] for r in rows] == ["resolved", "superseded"]
    assert b.processor.counts == {"resolved": 1, "superseded": 1}


async def test_a_reply_naming_another_child_is_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt(NHS_A)
        sent = message(repc(NHS_B), action=REPC, ref_to=ref.message_id)
        answer = await b.post(sent)
        outcome = await b.outcome()
        (row,) = b.inbound()
    assert answer.status == 200 and sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert b.resolved == [] and outcome.outcome is None
    assert (row["disposition"], row["detail"]) == ("quarantined", "reply names a different NHS number")
    assert row["raw"] == sent.body
    assert messages(caplog, logging.WARNING) == [f"inbound {REPC} {sent.message_id} stored as quarantined"]


async def test_a_flagged_child_is_resolved_by_its_repc(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt(NHS_B)
        await b.post(message(repc(NHS_B), action=REPC, ref_to=ref.message_id))
        outcome = await b.outcome(NHS_B)
    assert b.resolved == [(b.run_id, NHS_B)]
    assert outcome.outcome is Outcome.FLAGGED
    assert outcome.result is not None and [p.la_code for p in outcome.result.plans] == ["E09000033"]


async def test_an_unreadable_hl7_part_is_kept_and_leaves_its_child_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(b"<notHL7 xmlns='urn:example'/>", ref_to=ref.message_id)
        answer = await b.post(sent)
        outcome = await b.outcome()
        (row,) = b.inbound()
    assert answer.status == 200 and sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert b.resolved == [] and outcome.outcome is None
    assert row["disposition"] == "unparseable" and row["attempt_message_id"] == ref.message_id
    assert row["detail"] == "no REPC_IN000007GB01, QUQI_IN010000UK14 or MCCI_IN010000UK13 element"
    assert b.processor.counts == {"unparseable": 1}
    assert messages(caplog, logging.WARNING) == [f"inbound {QUQI} {sent.message_id} stored as unparseable"]


async def test_a_message_without_an_hl7_part_is_kept_as_unparseable(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(not_found(), ref_to=ref.message_id)
        body = bare_envelope(sent)
        answer = await b.processor.handle("text/xml; charset=UTF-8", sent.soap_action, body)
        (row,) = b.inbound()
    assert answer.status == 200 and sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert (row["disposition"], row["detail"], row["raw"]) == ("unparseable", "no HL7 part", body)
    assert b.resolved == []


# --- duplicates ------------------------------------------------------------------------------------------


async def test_a_message_seen_before_gets_its_first_acknowledgement_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(not_found(), ref_to=ref.message_id)
        first = await b.post(sent)
        again = await b.post(sent)
        rows = b.inbound()
    assert again == first
    assert len(rows) == 1
    assert b.resolved == [(b.run_id, NHS_A)]
    assert b.processor.counts == {"resolved": 1, "duplicate": 1}
    assert messages(caplog, logging.INFO) == [
        f"duplicate inbound message {sent.message_id} acknowledged again"
    ]


# --- orphans and the quota ----------------------------------------------------------------------------


async def test_an_orphan_is_acknowledged_and_kept_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        sent = orphan(SIDE_RAW_LIMIT)
        answer = await b.post(sent)
        (row,) = b.inbound()
    assert len(sent.body) > SIDE_RAW_LIMIT
    assert answer.status == 200 and answer.content_type == XML_CONTENT_TYPE
    assert sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert row["raw"] == sent.body[:SIDE_RAW_LIMIT] and row["raw_size"] == len(sent.body)
    assert (row["disposition"], row["detail"], row["attempt_message_id"], row["run_id"]) == (
        "orphan",
        None,
        None,
        None,
    )
    assert b.resolved == []
    assert b.processor.counts == {"orphan": 1}
    assert messages(caplog, logging.WARNING) == [f"inbound {QUQI} {sent.message_id} stored as orphan"]
    assert messages(caplog, logging.DEBUG) == [f"inbound {QUQI} {sent.message_id} for attempt -: orphan"]


async def test_orphans_over_the_message_quota_are_counted_and_acknowledged_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    over_quota = "inbound orphans over the storage quota are counted, acknowledged, not stored"
    async with bench(tmp_path, quota=SideQuota(max_messages=2)) as b:
        sent = [orphan() for _ in range(5)]
        answers = [await b.post(s) for s in sent[:3]]
        # Said once, when the first orphan is not stored.
        assert messages(caplog, logging.WARNING)[2:] == [over_quota]
        answers += [await b.post(s) for s in sent[3:]]
        rows = b.inbound()
    assert [a.status for a in answers] == [200] * 5
    assert all(sim_ebxml.acknowledges(a.body, s.message_id) for a, s in zip(answers, sent, strict=True))
    assert [r["message_id"] for r in rows] == [s.message_id for s in sent[:2]]
    assert b.processor.counts == {"orphan": 2, "orphan_not_stored": 3}
    assert messages(caplog, logging.WARNING)[2:] == [over_quota]


async def test_replies_that_reach_a_child_take_nothing_from_the_orphans_quota(tmp_path: Path) -> None:
    first, second = orphan(), orphan()
    async with bench(tmp_path, quota=SideQuota(max_messages=1), failures=1) as b:
        ref = await b.attempt()
        reply = message(not_found(), ref_to=ref.message_id)
        assert (await b.post(reply)).status == 500  # not stored
        await b.post(reply)
        await b.post(reply)  # a duplicate
        await b.post(first)
        await b.post(second)
        rows = b.inbound()
    assert [r["message_id"] for r in rows] == [reply.message_id, first.message_id]
    assert b.processor.counts == {
        "store_failed": 1,
        "resolved": 1,
        "duplicate": 1,
        "orphan": 1,
        "orphan_not_stored": 1,
    }


async def test_the_configured_not_found_codes_decide_a_not_found_answer(tmp_path: Path) -> None:
    async with bench(tmp_path, not_found_codes=frozenset({"LOCAL01"})) as b:
        local, default = await b.attempt(NHS_A), await b.attempt(NHS_B)
        await b.post(message(not_found(code="LOCAL01", display="Query failed"), ref_to=local.message_id))
        await b.post(message(not_found(code="NHSNCC002", display="Query failed"), ref_to=default.message_id))
        a, b_ = await b.outcome(NHS_A), await b.outcome(NHS_B)
    assert (a.outcome, a.reason) == (Outcome.NOT_FLAGGED, None)
    assert (b_.outcome, b_.reason) == (Outcome.ERROR, "QUQI:NHSNCC002")


async def test_orphans_over_the_byte_quota_are_not_stored(tmp_path: Path) -> None:
    first, second = orphan(), orphan()
    async with bench(tmp_path, quota=SideQuota(max_bytes=len(first.body))) as b:
        await b.post(first)
        await b.post(second)
        rows = b.inbound()
    assert [r["message_id"] for r in rows] == [first.message_id]
    assert b.processor.counts == {"orphan": 1, "orphan_not_stored": 1}


async def test_a_duplicate_orphan_gives_its_quota_back(tmp_path: Path) -> None:
    first, later = orphan(), orphan()
    async with bench(tmp_path, quota=SideQuota(max_messages=2)) as b:
        await b.post(first)
        await b.post(first)  # takes the second place while it is stored, then gives it back
        await b.post(later)
        rows = b.inbound()
    assert [r["message_id"] for r in rows] == [first.message_id, later.message_id]
    assert b.processor.counts == {"orphan": 2, "duplicate": 1}


async def test_an_orphan_that_could_not_be_stored_gives_its_quota_back(tmp_path: Path) -> None:
    first, second = orphan(), orphan()
    quota = SideQuota(max_messages=1, max_bytes=len(first.body))
    async with bench(tmp_path, quota=quota, failures=1) as b:
        failed = await b.post(first)
        stored = await b.post(second)
        rows = b.inbound()
    assert failed == HttpAnswer(500, TEXT_PLAIN, b"reply could not be stored\n")
    assert stored.status == 200 and sim_ebxml.acknowledges(stored.body, second.message_id)
    assert [r["message_id"] for r in rows] == [second.message_id]
    assert b.processor.counts == {"store_failed": 1, "orphan": 1}


async def test_a_failed_store_gives_back_exactly_the_place_it_took(tmp_path: Path) -> None:
    sent = [orphan() for _ in range(4)]
    async with bench(tmp_path, quota=SideQuota(max_messages=2), failures=1) as b:
        for s in sent:
            await b.post(s)
        rows = b.inbound()
    assert [r["message_id"] for r in rows] == [s.message_id for s in sent[1:3]]
    assert b.processor.counts == {"store_failed": 1, "orphan": 2, "orphan_not_stored": 1}


async def test_a_reply_that_could_not_be_stored_is_not_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path, failures=1) as b:
        ref = await b.attempt()
        sent = message(not_found(), ref_to=ref.message_id)
        answer = await b.post(sent)
        outcome = await b.outcome()
    assert answer == HttpAnswer(500, TEXT_PLAIN, b"reply could not be stored\n")
    assert b.resolved == [] and outcome.outcome is None
    assert b.processor.counts == {"store_failed": 1}
    assert messages(caplog, logging.ERROR) == [
        f"inbound message {sent.message_id} not stored; no acknowledgement sent"
    ]


async def test_only_the_first_few_of_a_kind_are_logged_as_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        sent = [orphan() for _ in range(22)]
        for s in sent:
            await b.post(s)
    warnings = messages(caplog, logging.WARNING)
    assert warnings == [f"inbound {QUQI} {s.message_id} stored as orphan" for s in sent[:20]] + [
        "further inbound messages filed orphan are logged at debug level only"
    ]
    stored_as = [m for m in messages(caplog, logging.DEBUG) if m.endswith("stored as orphan")]
    assert stored_as == [f"inbound {QUQI} {s.message_id} stored as orphan" for s in sent[20:]]
    assert b.processor.counts == {"orphan": 22}


# --- messages that are not for us ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "description"),
    [
        ({"from_party": "INTRUDER-0000001"}, "eb:From PartyId is not the Spine party this endpoint serves"),
        ({"cpa_id": "S1OTHERCPA"}, "eb:CPAId is not the CPA agreed for this interaction"),
        ({"to_party": "SOMEONE-ELSE"}, "501314:Invalid To Party Type attribute"),
    ],
)
async def test_a_message_not_from_spine_to_us_gets_a_message_error_and_is_filed_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict[str, str], description: str
) -> None:
    async with bench(tmp_path) as b:
        ref = await b.attempt()
        sent = message(not_found(), ref_to=ref.message_id, **fields)
        answer = await b.post(sent)
        outcome = await b.outcome()
        (row,) = b.inbound()
    assert answer.status == 200 and answer.content_type == XML_CONTENT_TYPE
    error = ack_of(answer)
    assert (error.action, error.ref_to_message_id, error.from_party) == (
        "MessageError",
        sent.message_id,
        OUR_PARTY,
    )
    assert error_of(answer) == ("ValueNotRecognized", description)
    assert not sim_ebxml.acknowledges(answer.body, sent.message_id)
    assert b.resolved == [] and outcome.outcome is None
    assert row == {
        "message_id": error.message_id,
        "action": QUQI,
        "ref_to_message_id": ref.message_id,
        "conversation_id": sent.conversation_id,
        "from_party": fields.get("from_party", SPINE_PARTY),
        "attempt_message_id": None,
        "run_id": None,
        "disposition": "rejected",
        "detail": f"ValueNotRecognized: {description}; MessageId {sent.message_id}",
        "raw": sent.body,
        "ack": answer.body,
        "raw_size": len(sent.body),
    }
    assert b.processor.counts == {"rejected": 1}
    assert messages(caplog, logging.WARNING) == [
        f"inbound message {sent.message_id} refused: ValueNotRecognized ({description})"
    ]


async def test_a_rejected_message_is_kept_truncated_with_its_header_fields_bounded(tmp_path: Path) -> None:
    long_party = "P" * 300
    async with bench(tmp_path) as b:
        sent = orphan(SIDE_RAW_LIMIT, from_party=long_party, conversation="C" * 300, action="X" * 300)
        answer = await b.post(sent)
        (row,) = b.inbound()
    assert error_of(answer) == ("NotSupported", "eb:Service/eb:Action not supported by this endpoint")
    assert row["from_party"] == "P" * 200
    assert row["conversation_id"] == "C" * 200
    assert row["action"] == "X" * 200
    assert row["raw"] == sent.body[:SIDE_RAW_LIMIT] and row["raw_size"] == len(sent.body)


async def test_rejected_messages_over_the_quota_are_answered_and_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path, quota=SideQuota(max_messages=1)) as b:
        sent = [orphan(from_party="INTRUDER-0000001") for _ in range(3)]
        answers = [await b.post(s) for s in sent]
        rows = b.inbound()
    assert [error_of(a)[0] for a in answers] == ["ValueNotRecognized"] * 3
    assert all(a.status == 200 and a.content_type == XML_CONTENT_TYPE for a in answers)
    assert len(rows) == 1
    assert b.processor.counts == {"rejected": 3, "rejected_not_stored": 2}
    refused = [
        f"inbound message {s.message_id} refused: ValueNotRecognized"
        " (eb:From PartyId is not the Spine party this endpoint serves)"
        for s in sent
    ]
    assert messages(caplog, logging.WARNING) == [
        *refused[:2],
        "rejected inbound messages over the storage quota are counted, not stored",
        refused[2],
    ]


async def test_a_rejected_message_that_could_not_be_stored_gives_its_quota_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = orphan(from_party="INTRUDER-0000001"), orphan(from_party="INTRUDER-0000001")
    quota = SideQuota(max_messages=1, max_bytes=len(first.body))
    async with bench(tmp_path, quota=quota, failures=1) as b:
        failed = await b.post(first)
        await b.post(second)
        rows = b.inbound()
    assert failed.status == 200 and error_of(failed)[0] == "ValueNotRecognized"
    assert [r["detail"].rsplit(" ", 1)[-1] for r in rows] == [second.message_id]
    assert b.processor.counts == {"rejected": 2, "store_failed": 1}
    assert messages(caplog, logging.ERROR) == [f"rejected inbound message {first.message_id} not stored"]


async def test_only_the_first_few_rejected_messages_are_logged_as_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with bench(tmp_path) as b:
        sent = [orphan(cpa_id="S1OTHERCPA") for _ in range(22)]
        for s in sent:
            await b.post(s)
    refused = [
        f"inbound message {s.message_id} refused: ValueNotRecognized"
        " (eb:CPAId is not the CPA agreed for this interaction)"
        for s in sent
    ]
    assert messages(caplog, logging.WARNING) == [
        *refused[:20],
        "further inbound messages filed rejected are logged at debug level only",
    ]
    assert [m for m in messages(caplog, logging.DEBUG) if "refused" in m] == refused[20:]
    assert b.processor.counts == {"rejected": 22}


# --- what cannot be read at all ------------------------------------------------------------------------


async def test_a_body_that_is_no_ebxml_message_gets_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bench(tmp_path) as b:
        answer = await b.processor.handle('multipart/related; boundary="b"', None, b"not a multipart body")
        rows = b.inbound()
    assert answer == HttpAnswer(500, TEXT_PLAIN, b"unparseable ebXML message\n")
    assert rows == []
    assert b.processor.counts == {"unparseable_envelope": 1}
    assert messages(caplog, logging.WARNING) == [
        "inbound message refused: 'multipart body without parts or without its closing delimiter'"
    ]


async def test_a_body_with_too_many_parts_is_counted_apart(tmp_path: Path) -> None:
    part = b"--b\r\nContent-Type: text/xml\r\n\r\n<x/>\r\n"
    async with bench(tmp_path) as b:
        answer = await b.processor.handle('multipart/related; boundary="b"', None, part * 10 + b"--b--\r\n")
    assert answer.status == 500
    assert b.processor.counts == {"too_many_parts": 1}


# --- small pieces --------------------------------------------------------------------------------------


def test_a_message_id_is_logged_as_it_is_when_it_is_a_uuid_and_quoted_and_cut_otherwise() -> None:
    uuid = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"
    assert loggable_id(uuid) == uuid
    assert loggable_id(uuid.lower()) == uuid.lower()
    assert loggable_id(None) == "-" and loggable_id("") == "-"
    assert loggable_id("forged\nline") == "'forged\\nline'"
    assert loggable_id("a" * 64) == repr("a" * 64)
    assert loggable_id("a" * 65) == repr("a" * 64) + "…"
    assert loggable_id(uuid + "X") == repr(uuid + "X")


def test_a_header_field_is_bounded_and_a_missing_one_stays_missing() -> None:
    assert _bounded(None) is None
    assert _bounded("") == ""
    assert _bounded("x" * 200) == "x" * 200
    assert _bounded("x" * 201) == "x" * 200
