"""The query pipeline's retry rules, with a scripted transport below it and a real SQLite store.

Every wait here ends on an event or on the pipeline's own (short) reply timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from batch.config import JobConfig, load_job
from batch.pipeline import QueryPipeline
from batch.store import AttemptRef, InboundRecord, QueryState, Resolution, Store
from batch.transport import SendAccepted, SendRejected, SendResult, SendUnanswered
from batch.xmlsafe import parse_xml
from tests.support import job_tables, write_job

CHILD = "9991234012"
OTHER = "9991234020"


class ScriptedTransport:
    """Answers each POST from a script and records the message ids it was given."""

    def __init__(self, script: Callable[[int], SendResult]) -> None:
        self.script = script
        self.sent: list[str] = []
        self.sent_event = anyio.Event()

    async def send(self, headers: dict[str, str], body: bytes, hl7: bytes) -> SendResult:
        root = parse_xml(hl7)
        self.sent.append(root.find("{urn:hl7-org:v3}id").get("root"))
        self.sent_event.set()
        self.sent_event = anyio.Event()
        return self.script(len(self.sent))


def _config(tmp_path: Path, **limits: object) -> JobConfig:
    tables = job_tables(
        tmp=tmp_path,
        pki=tmp_path,
        inputs="x.csv",
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=9,
    )
    tables["limits"].update({"reply_timeout_s": 0.2, **limits})
    return load_job(write_job(tmp_path / "job.toml", tables))


async def _run(
    tmp_path: Path, transport: ScriptedTransport, children: list[str], during=None, **limits: object
) -> dict[str, dict]:
    cfg = _config(tmp_path, **limits)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="job", input_fingerprint="f", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, children)
        pipeline = QueryPipeline(cfg, store, transport, run.run_id)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            if during is not None:
                tg.start_soon(during, store, pipeline)
            await pipeline.run([QueryState(c, 0, None, None) for c in children])
        return {o["nhs_number"]: o for o in await store.outcomes(run.run_id)}


async def test_no_reply_after_max_attempts_each_with_new_ids(tmp_path: Path) -> None:
    transport = ScriptedTransport(lambda n: SendAccepted())
    outcomes = await _run(tmp_path, transport, [CHILD], max_attempts=3)
    assert outcomes[CHILD]["outcome"] == "no_reply"
    assert outcomes[CHILD]["attempts"] == 3
    assert len(set(transport.sent)) == 3


async def test_permanent_rejection_ends_the_child_without_requery(tmp_path: Path) -> None:
    transport = ScriptedTransport(lambda n: SendRejected("SOAPFault:101", "interaction not supported"))
    outcomes = await _run(tmp_path, transport, [CHILD])
    assert (outcomes[CHILD]["outcome"], outcomes[CHILD]["reason"]) == ("error", "SOAPFault:101")
    assert len(transport.sent) == 1


async def test_undelivered_attempts_are_requeried_then_reported(tmp_path: Path) -> None:
    transport = ScriptedTransport(lambda n: SendUnanswered("connect_failed", maybe_delivered=False))
    outcomes = await _run(tmp_path, transport, [CHILD], max_attempts=3)
    assert (outcomes[CHILD]["outcome"], outcomes[CHILD]["reason"]) == ("error", "send_failed:connect_failed")
    assert len(transport.sent) == 3


async def test_circuit_breaker_stops_sending(tmp_path: Path) -> None:
    children = [f"99912340{i:02d}" for i in range(10)]
    transport = ScriptedTransport(lambda n: SendUnanswered("connect_failed", maybe_delivered=False))
    outcomes = await _run(tmp_path, transport, children, circuit_breaker_failures=4, max_in_flight=1)
    assert len(transport.sent) == 4
    reasons = [o["reason"] for o in outcomes.values()]
    assert reasons.count("spine_unavailable") >= 8
    assert all(o["outcome"] == "error" for o in outcomes.values())


async def test_a_late_reply_to_the_first_attempt_completes_the_child(tmp_path: Path) -> None:
    transport = ScriptedTransport(lambda n: SendAccepted())

    async def answer_first_attempt_after_the_second_is_sent(store: Store, pipeline: QueryPipeline) -> None:
        while len(transport.sent) < 2:
            await transport.sent_event.wait()
        first = transport.sent[0]
        attempt = await store.find_attempt(message_ids=[first], conversation_id=None, query_event_ids=[])
        assert attempt is not None
        await _reply(store, attempt, Resolution("not_flagged", None, None))
        pipeline.on_resolved(attempt.run_id, attempt.nhs_number)

    outcomes = await _run(
        tmp_path,
        transport,
        [CHILD],
        during=answer_first_attempt_after_the_second_is_sent,
        max_attempts=3,
        reply_timeout_s=1.0,  # room for the late reply to land before a third attempt would be due
    )
    assert outcomes[CHILD]["outcome"] == "not_flagged"
    assert outcomes[CHILD]["message_id"] == transport.sent[0]
    assert len(transport.sent) == 2  # no third attempt once answered


async def _reply(store: Store, attempt: AttemptRef, resolution: Resolution) -> None:
    record = InboundRecord(
        message_id=f"{attempt.message_id[:-4]}FFFF",
        action="QUQI_IN010000UK14",
        ref_to_message_id=attempt.message_id,
        conversation_id=None,
        from_party="SIMSPINE-0000001",
        raw=b"raw",
        ack=b"ack",
    )
    await store.store_inbound(
        record, attempt=attempt, disposition="answer", detail=None, resolution=resolution
    )


@pytest.mark.parametrize("accepted", [True, False])
async def test_resumed_child_waits_for_its_reply_before_requerying(tmp_path: Path, accepted: bool) -> None:
    # The resumed child's remaining timeout must comfortably outlast the late answer below.
    cfg = _config(tmp_path, max_attempts=2, reply_timeout_s=2.0)
    transport = ScriptedTransport(lambda n: SendAccepted())
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id="RUN", job_name="job", input_fingerprint="f", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, [CHILD, OTHER])
        # A previous process sent one attempt for CHILD and died.
        earlier = AttemptRef("A" * 8 + "-AAAA-4AAA-8AAA-" + "A" * 12, run.run_id, CHILD, "C" * 36, "Q" * 36)
        await store.record_attempt(earlier, 1)
        if accepted:
            await store.mark_attempt(earlier.message_id, run.run_id, "accepted")
        states = await store.open_children(run.run_id)
        pipeline = QueryPipeline(cfg, store, transport, run.run_id)  # type: ignore[arg-type]

        async def late_answer() -> None:
            # The reply to the earlier attempt arrives while the resumed run waits: no new query for CHILD.
            while not transport.sent:
                await transport.sent_event.wait()
            await _reply(store, earlier, Resolution("flagged", None, {"plans": []}))
            pipeline.on_resolved(run.run_id, CHILD)

        async with anyio.create_task_group() as tg:
            tg.start_soon(late_answer)
            await pipeline.run(states)
        outcomes = {o["nhs_number"]: o for o in await store.outcomes(run.run_id)}
    assert outcomes[CHILD]["outcome"] == "flagged"
    assert outcomes[CHILD]["attempts"] == 1
    assert outcomes[OTHER]["outcome"] == "no_reply"
