"""The SQLite state file: real files, real WAL, group commits."""

from pathlib import Path

import anyio
import pytest

from batch.ids import new_id
from batch.store import AttemptRef, InboundRecord, Resolution, Store, StoreError

NHS_A = "9991234012"
NHS_B = "9991234020"


def _ref(run_id: str, nhs: str) -> AttemptRef:
    return AttemptRef(new_id(), run_id, nhs, new_id(), new_id())


def _inbound(ref_to: str | None, message_id: str | None = None) -> InboundRecord:
    return InboundRecord(
        message_id=message_id or new_id(),
        action="REPC_IN000007GB01",
        ref_to_message_id=ref_to,
        conversation_id=None,
        from_party="SIMSPINE-0000001",
        raw=b"raw",
        ack=b"ack",
    )


async def _new_run(store: Store, fingerprint: str = "f1") -> str:
    run = await store.begin_or_resume_run(
        run_id=new_id(), job_name="job", input_fingerprint=fingerprint, reference_date="2026-12-01"
    )
    await store.add_children(run.run_id, [NHS_A, NHS_B])
    return run.run_id


async def test_first_answer_wins_and_later_ones_are_superseded(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        first, second = _ref(run_id, NHS_A), _ref(run_id, NHS_A)
        await store.record_attempt(first, 1)
        await store.record_attempt(second, 2)
        fresh, disposition = await store.store_inbound(
            _inbound(second.message_id),
            attempt=second,
            disposition="answer",
            detail=None,
            resolution=Resolution("not_flagged", None, None),
        )
        assert (fresh, disposition) == (True, "resolved")
        fresh, disposition = await store.store_inbound(
            _inbound(first.message_id),
            attempt=first,
            disposition="answer",
            detail=None,
            resolution=Resolution("flagged", None, {"plans": []}),
        )
        assert (fresh, disposition) == (True, "superseded")
        # We never overwrite a reply's outcome with our own.
        assert not await store.finish_child(run_id, NHS_A, "no_reply", None)
        outcomes = {o["nhs_number"]: o for o in await store.outcomes(run_id)}
        assert outcomes[NHS_A]["outcome"] == "not_flagged"
        assert outcomes[NHS_A]["message_id"] == second.message_id
        assert outcomes[NHS_B]["outcome"] is None


async def test_duplicate_message_id_is_not_applied_twice(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1)
        record = _inbound(ref.message_id)
        first = await store.store_inbound(
            record,
            attempt=ref,
            disposition="answer",
            detail=None,
            resolution=Resolution("not_flagged", None, None),
        )
        again = await store.store_inbound(
            record, attempt=ref, disposition="answer", detail=None, resolution=Resolution("error", "x", None)
        )
        assert first == (True, "resolved")
        assert again == (False, "duplicate")
        assert await store.stored_ack(record.message_id.lower()) == b"ack"
        outcomes = {o["nhs_number"]: o for o in await store.outcomes(run_id)}
        assert outcomes[NHS_A]["outcome"] == "not_flagged"


async def test_correlation_by_message_conversation_or_query_id(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_B)
        await store.record_attempt(ref, 1)
        by_m = await store.find_attempt(
            message_ids=[ref.message_id.lower()], conversation_id=None, query_event_ids=[]
        )
        by_c = await store.find_attempt(
            message_ids=[new_id()], conversation_id=ref.conversation_id, query_event_ids=[]
        )
        by_q = await store.find_attempt(
            message_ids=[], conversation_id=None, query_event_ids=[ref.query_event_id]
        )
        none = await store.find_attempt(message_ids=[new_id()], conversation_id=new_id(), query_event_ids=[])
        assert by_m == by_c == by_q == ref
        assert none is None


async def test_resume_finds_the_running_run_and_its_attempts(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1)
        await store.mark_attempt(ref.message_id, run_id, "accepted")
    async with Store.open(path) as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
        assert run.resumed and run.run_id == run_id and run.reference_date == "2026-12-01"
        states = {s.nhs_number: s for s in await store.open_children(run_id)}
        assert states[NHS_A].attempts == 1 and states[NHS_A].last_sent_at is not None
        assert states[NHS_B].attempts == 0
        await store.complete_run(run_id)
        other = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
        assert not other.resumed


async def test_concurrent_writers_share_commits(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        refs = [_ref(run_id, NHS_A) for _ in range(200)]
        async with anyio.create_task_group() as tg:
            for i, ref in enumerate(refs):
                tg.start_soon(store.record_attempt, ref, i)
        counts = await store.run_counts(run_id)
        assert counts["attempts"] == 200


async def test_a_failed_write_is_reported_and_does_not_poison_the_batch(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1)
        with pytest.raises(StoreError):
            await store.record_attempt(ref, 1)  # same message id: primary key violation
        assert (await store.run_counts(run_id))["attempts"] == 1


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable state database"):
        async with Store.open(path):
            pass
