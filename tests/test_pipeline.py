"""The query pipeline's rules, with a scripted sender below it and a real SQLite store.

Every wait here ends on an event or on the pipeline's own (short) reply timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from batch.attempts import AttemptIndex
from batch.concurrency import PostConcurrency
from batch.config import JobConfig, load_job
from batch.hl7 import HL7_NS
from batch.ids import new_id
from batch.outbound import QueryBuilder
from batch.pipeline import QueryPipeline
from batch.ratelimit import RateSlot, SlidingWindowLimiter
from batch.states import AttemptStatus, Disposition, Outcome
from batch.store import (
    AttemptRef,
    AwaitedAttempt,
    ChildOutcome,
    ChildProgress,
    InboundRecord,
    Resolution,
    Store,
)
from batch.transport import OutboundQuery, SendAccepted, SendRejected, SendResult, SendUnanswered
from batch.xmlsafe import parse_xml
from spine_sim.jobfile import job_tables, write_job

CHILD = "9991234012"
OTHER = "9991234020"


class ScriptedSender:
    """Answers each POST from a script; records which child each message id asked about, in order."""

    def __init__(self, script: Callable[[int, str], SendResult]) -> None:
        self.script = script
        self.sent: list[tuple[str, str]] = []  # (message id, NHS number)
        self.changed = anyio.Event()

    async def send(self, query: OutboundQuery, slot: RateSlot) -> SendResult:
        slot.sent()
        nhs = _nhs_of(query)
        self.sent.append((query.message_id, nhs))
        self.changed.set()
        self.changed = anyio.Event()
        return self.script(len(self.sent), nhs)

    async def wait_for(self, count: int) -> None:
        while len(self.sent) < count:
            await self.changed.wait()

    def ids_for(self, nhs: str) -> list[str]:
        return [m for m, n in self.sent if n == nhs]


def _nhs_of(query: OutboundQuery) -> str:
    root = parse_xml(query.hl7)
    value = root.find(f".//{{{HL7_NS}}}person.NHSnumber/{{{HL7_NS}}}value")
    assert value is not None
    return str(value.get("extension"))


def _config(tmp_path: Path, **limits: object) -> JobConfig:
    tables = job_tables(
        tmp=tmp_path,
        pki=tmp_path,
        inputs="x.csv",
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=9,
    )
    tables["limits"].update({"reply_timeout_s": 0.2, "rate_per_second": 1000, **limits})
    return load_job(write_job(tmp_path / "job.toml", tables))


def _pipeline(cfg: JobConfig, store: Store, sender: ScriptedSender, run_id: str) -> QueryPipeline:
    limits = cfg.limits
    return QueryPipeline(
        limits=limits,
        store=store,
        sender=sender,
        builder=QueryBuilder(cfg),
        run_id=run_id,
        limiter=SlidingWindowLimiter(limits.rate_per_second),
        concurrency=PostConcurrency(limits.rate_per_second, limits.max_concurrent_posts),
    )


During = Callable[[Store, QueryPipeline], Awaitable[None]]


async def _run(
    tmp_path: Path,
    sender: ScriptedSender,
    children: list[str],
    during: During | None = None,
    progress: list[ChildProgress] | None = None,
    **limits: object,
) -> dict[str, ChildOutcome]:
    cfg = _config(tmp_path, **limits)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="job", input_fingerprint="f", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, children)
        pipeline = _pipeline(cfg, store, sender, run.run_id)
        async with anyio.create_task_group() as tg:
            if during is not None:
                tg.start_soon(during, store, pipeline)
            await pipeline.run(children if progress is None else [], progress or [])
        return {o.nhs_number: o for o in await store.outcomes(run.run_id)}


async def _reply(store: Store, attempt: AttemptRef, resolution: Resolution) -> None:
    record = InboundRecord(
        message_id=new_id(),
        action="QUQI_IN010000UK14",
        ref_to_message_id=attempt.message_id,
        conversation_id=None,
        from_party="SIMSPINE-0000001",
        raw=b"raw",
        ack=b"ack",
    )
    stored = await store.store_inbound(
        record, attempt=attempt, disposition=Disposition.RESOLVED, detail=None, resolution=resolution
    )
    assert stored.disposition is Disposition.RESOLVED


async def _answer(store: Store, pipeline: QueryPipeline, message_id: str, resolution: Resolution) -> None:
    attempt = await store.find_attempt(message_ids=[message_id], conversation_id=None, query_event_ids=[])
    assert attempt is not None
    await _reply(store, attempt, resolution)
    pipeline.on_resolved(attempt.run_id, attempt.nhs_number)


def _statuses(tmp_path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    return conn.execute("SELECT nhs_number, status FROM attempts ORDER BY attempt, sent_at").fetchall()


async def test_no_reply_after_max_attempts_each_with_new_ids(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendAccepted())
    outcomes = await _run(tmp_path, sender, [CHILD], max_attempts=3)
    ids = sender.ids_for(CHILD)
    assert len(set(ids)) == 3
    assert outcomes[CHILD] == ChildOutcome(
        CHILD, Outcome.NO_REPLY, "no reply to 3 queries sent", None, 3, None, None
    )
    assert _statuses(tmp_path) == [(CHILD, AttemptStatus.TIMED_OUT)] * 3


async def test_permanent_rejection_ends_the_child_without_requery(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendRejected("SOAPFault:101", "interaction not supported"))
    outcomes = await _run(tmp_path, sender, [CHILD])
    assert outcomes[CHILD] == ChildOutcome(CHILD, Outcome.ERROR, "SOAPFault:101", None, 1, None, None)
    assert len(sender.sent) == 1
    assert _statuses(tmp_path) == [(CHILD, AttemptStatus.REJECTED)]


async def test_undelivered_attempts_are_requeried_then_reported_and_not_counted(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendUnanswered("connect_failed", maybe_delivered=False))
    outcomes = await _run(tmp_path, sender, [CHILD], max_attempts=3)
    assert outcomes[CHILD] == ChildOutcome(
        CHILD, Outcome.ERROR, "send_failed:connect_failed", None, 0, None, None
    )
    assert len(sender.sent) == 3
    assert _statuses(tmp_path) == [(CHILD, AttemptStatus.NOT_SENT)] * 3


async def test_a_read_timeout_is_waited_for_like_an_accepted_query(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendUnanswered("response_timeout", maybe_delivered=True))
    outcomes = await _run(tmp_path, sender, [CHILD], max_attempts=2)
    assert outcomes[CHILD] == ChildOutcome(
        CHILD, Outcome.NO_REPLY, "no reply to 2 queries sent", None, 2, None, None
    )


async def test_circuit_breaker_stops_sending(tmp_path: Path) -> None:
    children = [f"99912340{i:02d}" for i in range(10)]
    sender = ScriptedSender(lambda n, nhs: SendUnanswered("connect_failed", maybe_delivered=False))
    outcomes = await _run(tmp_path, sender, children, circuit_breaker_failures=4, max_in_flight=1)
    assert len(sender.sent) == 4
    reasons = sorted(o.reason or "" for o in outcomes.values())
    assert reasons == ["spine_unavailable"] * 10
    assert all(o.outcome is Outcome.ERROR for o in outcomes.values())


async def test_an_accepted_send_resets_the_circuit_breaker(tmp_path: Path) -> None:
    # Failures alternate with successes: never `circuit_breaker_failures` in a row.
    children = [f"99912340{i:02d}" for i in range(6)]

    def script(n: int, nhs: str) -> SendResult:
        return SendUnanswered("connect_failed", False) if n % 2 else SendAccepted()

    sender = ScriptedSender(script)
    outcomes = await _run(tmp_path, sender, children, circuit_breaker_failures=2, max_in_flight=1)
    assert "spine_unavailable" not in {o.reason for o in outcomes.values()}
    assert len(sender.sent) > 2 * len(children)


async def test_a_late_reply_to_the_first_attempt_completes_the_child(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendAccepted())

    async def answer_first_attempt_after_the_second_is_sent(store: Store, pipeline: QueryPipeline) -> None:
        await sender.wait_for(2)
        await _answer(store, pipeline, sender.sent[0][0], Resolution(Outcome.NOT_FLAGGED))

    outcomes = await _run(
        tmp_path,
        sender,
        [CHILD],
        during=answer_first_attempt_after_the_second_is_sent,
        max_attempts=3,
        reply_timeout_s=1.0,  # room for the late reply to land before a third attempt would be due
    )
    assert outcomes[CHILD].outcome is Outcome.NOT_FLAGGED
    assert outcomes[CHILD].message_id == sender.sent[0][0]
    assert outcomes[CHILD].attempts == 2
    assert len(sender.sent) == 2  # no third attempt once answered


async def test_a_reply_before_the_202_ends_the_child(tmp_path: Path) -> None:
    holder: dict[str, QueryPipeline | Store] = {}

    class ReplyFirst(ScriptedSender):
        async def send(self, query: OutboundQuery, slot: RateSlot) -> SendResult:
            result = await super().send(query, slot)
            store, pipeline = holder["store"], holder["pipeline"]
            assert isinstance(store, Store) and isinstance(pipeline, QueryPipeline)
            await _answer(store, pipeline, query.message_id, Resolution(Outcome.NOT_FLAGGED))
            return result

    sender = ReplyFirst(lambda n, nhs: SendAccepted())

    async def remember(store: Store, pipeline: QueryPipeline) -> None:
        holder.update(store=store, pipeline=pipeline)

    cfg = _config(tmp_path, reply_timeout_s=60)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="j", input_fingerprint="f", reference_date="d"
        )
        await store.add_children(run.run_id, [CHILD])
        pipeline = _pipeline(cfg, store, sender, run.run_id)
        await remember(store, pipeline)
        # Returns at once: no 60 s wait for a reply that has already come.
        with anyio.fail_after(10):
            await pipeline.run([CHILD])
        outcomes = await store.outcomes(run.run_id)
    assert [(o.outcome, o.attempts) for o in outcomes] == [(Outcome.NOT_FLAGGED, 1)]
    assert _statuses(tmp_path) == [(CHILD, AttemptStatus.ANSWERED)]


async def test_attempts_are_recorded_only_once_their_rate_slot_is_granted(tmp_path: Path) -> None:
    """A kill while queries queue for the limiter must leave no attempt that never left."""
    cfg = _config(tmp_path, max_concurrent_posts=8)
    children = [f"99912340{i:02d}" for i in range(8)]
    gate = anyio.Event()

    class GatedLimiter(SlidingWindowLimiter):
        waiting = 0

        async def acquire(self) -> RateSlot:
            GatedLimiter.waiting += 1
            await gate.wait()
            return await super().acquire()

    sender = ScriptedSender(lambda n, nhs: SendRejected("SOAPFault:101", "x"))
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="j", input_fingerprint="f", reference_date="d"
        )
        await store.add_children(run.run_id, children)
        pipeline = QueryPipeline(
            limits=cfg.limits,
            store=store,
            sender=sender,
            builder=QueryBuilder(cfg),
            run_id=run.run_id,
            limiter=GatedLimiter(1000),
            concurrency=PostConcurrency(1000, 8),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, children)
            while GatedLimiter.waiting < 8:
                await anyio.wait_all_tasks_blocked()
            assert _statuses(tmp_path) == []  # eight senders wait on the limiter; nothing recorded
            gate.set()
    assert len(_statuses(tmp_path)) == 8


async def test_waiting_for_replies_holds_no_sender(tmp_path: Path) -> None:
    """With one sender, every child is still sent before the first reply timeout."""
    children = [f"99912340{i:02d}" for i in range(6)]
    sender = ScriptedSender(lambda n, nhs: SendAccepted())
    outcomes = await _run(
        tmp_path, sender, children, max_concurrent_posts=1, max_attempts=2, reply_timeout_s=0.5
    )
    first_round = [nhs for _, nhs in sender.sent[: len(children)]]
    assert first_round == children  # every child once before any child's second attempt
    assert all(o.outcome is Outcome.NO_REPLY for o in outcomes.values())


async def test_max_in_flight_bounds_queries_awaiting_replies(tmp_path: Path) -> None:
    children = [f"99912340{i:02d}" for i in range(5)]
    sender = ScriptedSender(lambda n, nhs: SendAccepted())

    async def answer_in_turn(store: Store, pipeline: QueryPipeline) -> None:
        for answered in range(len(children)):
            await sender.wait_for(answered + 1)
            await anyio.wait_all_tasks_blocked()
            # Never more than two unanswered queries out.
            assert len(sender.sent) - answered <= 2
            await _answer(store, pipeline, sender.sent[answered][0], Resolution(Outcome.NOT_FLAGGED))

    outcomes = await _run(
        tmp_path, sender, children, during=answer_in_turn, max_in_flight=2, reply_timeout_s=30
    )
    assert all(o.outcome is Outcome.NOT_FLAGGED for o in outcomes.values())
    assert len(sender.sent) == len(children)


@pytest.mark.parametrize("status", [AttemptStatus.ACCEPTED, AttemptStatus.SENDING])
async def test_a_resumed_child_waits_for_its_earlier_query_while_fresh_children_go_first(
    tmp_path: Path, status: AttemptStatus
) -> None:
    """The earlier query's timeout runs from when it was sent; the fresh child is sent straight away."""
    sender = ScriptedSender(lambda n, nhs: SendAccepted())
    earlier = AttemptRef(new_id(), "RUN", CHILD, new_id(), new_id())
    sent = datetime.now(UTC) - timedelta(seconds=0.5)

    async def seed_and_answer(store: Store, pipeline: QueryPipeline) -> None:
        await sender.wait_for(1)
        # Only the fresh child has been sent; the earlier query's reply now arrives: no new query for CHILD.
        assert sender.sent[0][1] == OTHER
        await _reply(store, earlier, Resolution(Outcome.FLAGGED, None, None))
        pipeline.on_resolved("RUN", CHILD)
        await _answer(store, pipeline, sender.sent[0][0], Resolution(Outcome.NOT_FLAGGED))

    cfg = _config(tmp_path, max_attempts=2, reply_timeout_s=30)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="j", input_fingerprint="f", reference_date="d"
        )
        await store.add_children(run.run_id, [CHILD, OTHER])
        await store.record_attempt(earlier, 1, sent.isoformat())
        if status is AttemptStatus.ACCEPTED:
            await store.record_send_result(earlier, status, acked_at=sent.isoformat())
        progress = await store.open_children(run.run_id)
        assert progress.resumed == [
            ChildProgress(CHILD, counted=1, awaited=AwaitedAttempt(earlier.message_id, sent))
        ]
        assert progress.fresh == [OTHER]
        pipeline = _pipeline(cfg, store, sender, run.run_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(seed_and_answer, store, pipeline)
            with anyio.fail_after(10):
                await pipeline.run(progress.fresh, progress.resumed)
        outcomes = {o.nhs_number: o for o in await store.outcomes(run.run_id)}
    assert [nhs for _, nhs in sender.sent] == [OTHER]
    assert (outcomes[CHILD].outcome, outcomes[CHILD].attempts) == (Outcome.FLAGGED, 1)


async def test_a_resumed_query_whose_timeout_has_passed_is_requeried_at_once(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendRejected("SOAPFault:101", "x"))
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    progress = [ChildProgress(CHILD, counted=1, awaited=AwaitedAttempt(new_id(), long_ago))]
    with anyio.fail_after(10):  # reply_timeout_s is 30: waiting it out would fail here
        outcomes = await _run(tmp_path, sender, [CHILD], progress=progress, reply_timeout_s=30)
    assert outcomes[CHILD].outcome is Outcome.ERROR and outcomes[CHILD].reason == "SOAPFault:101"
    assert len(sender.sent) == 1


async def test_a_resumed_child_whose_queries_never_left_is_sent_at_once(tmp_path: Path) -> None:
    sender = ScriptedSender(lambda n, nhs: SendRejected("SOAPFault:101", "x"))
    progress = [ChildProgress(CHILD, unsent=2, last_failure="connect_failed")]
    with anyio.fail_after(10):
        outcomes = await _run(
            tmp_path, sender, [CHILD], progress=progress, reply_timeout_s=30, max_attempts=3
        )
    assert outcomes[CHILD].reason == "SOAPFault:101"


@pytest.mark.parametrize(
    ("progress", "outcome", "reason"),
    [
        (ChildProgress(CHILD, counted=3), Outcome.NO_REPLY, "no reply to 3 queries sent"),
        (
            ChildProgress(CHILD, unsent=3, last_failure="connect_timeout"),
            Outcome.ERROR,
            "send_failed:connect_timeout",
        ),
    ],
)
async def test_a_resumed_child_that_used_up_its_attempts_is_finished_without_sending(
    tmp_path: Path, progress: ChildProgress, outcome: Outcome, reason: str
) -> None:
    sender = ScriptedSender(lambda n, nhs: SendAccepted())
    outcomes = await _run(tmp_path, sender, [CHILD], progress=[progress], max_attempts=3)
    assert (outcomes[CHILD].outcome, outcomes[CHILD].reason) == (outcome, reason)
    assert sender.sent == []


async def test_an_attempt_is_in_the_index_before_its_post_and_leaves_with_its_child(tmp_path: Path) -> None:
    """A reply can beat the 202: by the time the POST starts, the reply workflow must find the attempt."""
    index = AttemptIndex()
    seen: list[str | None] = []

    class Checking(ScriptedSender):
        async def send(self, query: OutboundQuery, slot: RateSlot) -> SendResult:
            found = index.find([query.message_id])
            seen.append(found.message_id if found else None)
            return await super().send(query, slot)

    sender = Checking(lambda n, nhs: SendRejected("SOAPFault:101", "x"))
    cfg = _config(tmp_path)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="j", input_fingerprint="f", reference_date="d"
        )
        await store.add_children(run.run_id, [CHILD, OTHER])
        pipeline = QueryPipeline(
            limits=cfg.limits,
            store=store,
            sender=sender,
            builder=QueryBuilder(cfg),
            run_id=run.run_id,
            limiter=SlidingWindowLimiter(1000),
            concurrency=PostConcurrency(1000, 4),
            index=index,
        )
        await pipeline.run([CHILD, OTHER])
    assert seen == [m for m, _ in sender.sent]
    assert len(index) == 0
