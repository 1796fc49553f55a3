"""The SQLite state file: real files, real WAL, group commits, migrations."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from batch.files import UnsafePathError
from batch.ids import new_id
from batch.states import AttemptStatus, Disposition, Outcome, RunStatus
from batch.store import (
    SCHEMA_VERSION,
    AttemptRef,
    AwaitedAttempt,
    ChildOutcome,
    ChildProgress,
    FlagResult,
    InboundRecord,
    PlanRow,
    Resolution,
    RunCounts,
    Store,
    StoredInbound,
    StoreError,
)
from batch.store.writer import GroupWriter, WriteFailed, apply_group

NHS_A = "9991234012"
NHS_B = "9991234020"
SENT = "2026-12-01T01:00:00.000+00:00"
ACKED = "2026-12-01T01:00:00.200+00:00"

FLAG = FlagResult(
    plans=(PlanRow("CPP", "2026-01-02", None, "E09000001", "City LA", "0300 1", "0300 2", "child"),),
    access_count=3,
    child_records=1,
    last_access_at="2026-11-30T10:00",
    last_access_organisation="RAA",
    warnings=("w",),
)


def _ref(run_id: str, nhs: str) -> AttemptRef:
    return AttemptRef(new_id(), run_id, nhs, new_id(), new_id())


def _inbound(ref_to: str | None, message_id: str | None = None, ack: bytes = b"ack") -> InboundRecord:
    return InboundRecord(
        message_id=message_id or new_id(),
        action="REPC_IN000007GB01",
        ref_to_message_id=ref_to,
        conversation_id=None,
        from_party="SIMSPINE-0000001",
        raw=b"raw",
        ack=ack,
    )


async def _new_run(store: Store, fingerprint: str = "f1") -> str:
    run = await store.begin_or_resume_run(
        run_id=new_id(), job_name="job", input_fingerprint=fingerprint, reference_date="2026-12-01"
    )
    await store.add_children(run.run_id, [NHS_A, NHS_B])
    return run.run_id


async def _answer(store: Store, ref: AttemptRef, resolution: Resolution, message_id: str | None = None):
    return await store.store_inbound(
        _inbound(ref.message_id, message_id),
        attempt=ref,
        disposition=Disposition.RESOLVED,
        detail=None,
        resolution=resolution,
    )


async def test_first_answer_wins_and_later_ones_are_superseded(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        first, second = _ref(run_id, NHS_A), _ref(run_id, NHS_A)
        await store.record_attempt(first, 1, SENT)
        await store.record_attempt(second, 2, ACKED)
        assert await _answer(store, second, Resolution(Outcome.NOT_FLAGGED)) == StoredInbound(
            Disposition.RESOLVED, b"ack"
        )
        assert await _answer(store, first, Resolution(Outcome.FLAGGED, None, FLAG)) == StoredInbound(
            Disposition.SUPERSEDED, b"ack"
        )
        # We never overwrite a reply's outcome with our own.
        assert not await store.finish_child(run_id, NHS_A, Outcome.NO_REPLY, "x")
        outcomes = {o.nhs_number: o for o in await store.outcomes(run_id)}
    assert outcomes == {
        NHS_A: ChildOutcome(NHS_A, Outcome.NOT_FLAGGED, None, None, 2, second.message_id, ACKED),
        NHS_B: ChildOutcome(NHS_B, None, None, None, 0, None, None),
    }


async def test_a_flag_result_survives_the_store_whole(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_B)
        await store.record_attempt(ref, 1, SENT)
        await _answer(store, ref, Resolution(Outcome.FLAGGED, None, FLAG))
        outcomes = {o.nhs_number: o for o in await store.outcomes(run_id)}
    assert outcomes[NHS_B] == ChildOutcome(NHS_B, Outcome.FLAGGED, None, FLAG, 1, ref.message_id, SENT)


async def test_duplicate_message_id_is_not_applied_twice(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        message_id = new_id()
        first = await store.store_inbound(
            _inbound(ref.message_id, message_id, ack=b"first ack"),
            attempt=ref,
            disposition=Disposition.RESOLVED,
            detail=None,
            resolution=Resolution(Outcome.NOT_FLAGGED),
        )
        again = await store.store_inbound(
            _inbound(ref.message_id, message_id.lower(), ack=b"second ack"),
            attempt=ref,
            disposition=Disposition.RESOLVED,
            detail=None,
            resolution=Resolution(Outcome.ERROR, "x"),
        )
        assert first == StoredInbound(Disposition.RESOLVED, b"first ack")
        assert again == StoredInbound(Disposition.DUPLICATE, b"first ack")
        assert again.duplicate and not first.duplicate
        outcomes = {o.nhs_number: o for o in await store.outcomes(run_id)}
        counts = await store.run_counts(run_id)
    assert outcomes[NHS_A].outcome is Outcome.NOT_FLAGGED
    assert counts.inbound == {Disposition.RESOLVED: 1}


async def test_an_answer_without_an_attempt_changes_no_child(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        stored = await store.store_inbound(
            _inbound(None), attempt=None, disposition=Disposition.ORPHAN, detail="d", resolution=None
        )
        outcomes = await store.outcomes(run_id)
    assert stored == StoredInbound(Disposition.ORPHAN, b"ack")
    assert all(o.outcome is None for o in outcomes)


async def test_correlation_by_message_conversation_or_query_id(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref, other = _ref(run_id, NHS_B), _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        await store.record_attempt(other, 1, SENT)
        by_m = await store.find_attempt(
            message_ids=[ref.message_id.lower()], conversation_id=None, query_event_ids=[]
        )
        by_c = await store.find_attempt(
            message_ids=[new_id()], conversation_id=ref.conversation_id.lower(), query_event_ids=[]
        )
        by_q = await store.find_attempt(
            message_ids=[], conversation_id=None, query_event_ids=[ref.query_event_id]
        )
        # M outranks C, and C outranks Q, whatever order the rows are in.
        m_first = await store.find_attempt(
            message_ids=[ref.message_id],
            conversation_id=other.conversation_id,
            query_event_ids=[other.query_event_id],
        )
        c_first = await store.find_attempt(
            message_ids=[], conversation_id=other.conversation_id, query_event_ids=[ref.query_event_id]
        )
        none = await store.find_attempt(message_ids=[new_id()], conversation_id=new_id(), query_event_ids=[])
        nothing = await store.find_attempt(message_ids=[], conversation_id=None, query_event_ids=[])
    assert by_m == by_c == by_q == m_first == ref
    assert c_first == other
    assert none is None and nothing is None


async def test_resume_finds_the_running_run_and_what_each_child_did(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run_id = await _new_run(store)
        timed_out, accepted, unsent = _ref(run_id, NHS_A), _ref(run_id, NHS_A), _ref(run_id, NHS_B)
        await store.record_attempt(timed_out, 1, SENT)
        await store.record_send_result(timed_out, AttemptStatus.ACCEPTED, acked_at=SENT)
        await store.mark_timed_out(timed_out.message_id)
        await store.record_attempt(accepted, 2, SENT)
        await store.record_send_result(accepted, AttemptStatus.ACCEPTED, acked_at=ACKED)
        await store.record_attempt(unsent, 1, SENT)
        await store.record_send_result(unsent, AttemptStatus.NOT_SENT, "connect_failed")
    async with Store.open(path) as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
        assert run.resumed and run.run_id == run_id and run.reference_date == "2026-12-01"
        progress = {p.nhs_number: p for p in (await store.open_children(run_id)).all()}
        assert progress == {
            NHS_A: ChildProgress(
                NHS_A,
                counted=2,
                unsent=0,
                awaited=AwaitedAttempt(accepted.message_id, datetime.fromisoformat(ACKED)),
            ),
            NHS_B: ChildProgress(NHS_B, counted=0, unsent=1, last_failure="connect_failed"),
        }
        counts = await store.run_counts(run_id)
        assert counts == RunCounts(attempts=2, send_failures=1, inbound={})
        await store.end_run(run_id, RunStatus.COMPLETE)
        other = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
        assert not other.resumed


async def test_recent_sends_are_the_jobs_latest_across_runs(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        first, second = await _new_run(store, "f1"), await _new_run(store, "f2")
        times = [f"2026-12-01T01:00:0{i}.000+00:00" for i in range(4)]
        acked = "2026-12-01T01:00:03.500+00:00"
        for i, run_id in enumerate([first, second, first, second]):
            ref = _ref(run_id, NHS_A)
            await store.record_attempt(ref, i + 1, times[i])
            if i == 3:
                await store.record_send_result(ref, AttemptStatus.ACCEPTED, acked_at=acked)
        other = await store.begin_or_resume_run(
            run_id=new_id(), job_name="other", input_fingerprint="f", reference_date="2026-12-01"
        )
        await store.record_attempt(_ref(other.run_id, NHS_A), 1, "2026-12-01T02:00:00.000+00:00")
        recent = await store.recent_sends("job", 3)
    parse = datetime.fromisoformat
    assert recent == [(parse(times[3]), parse(acked)), (parse(times[2]), None), (parse(times[1]), None)]


async def test_a_sending_attempt_is_awaited_from_when_it_was_sent(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        progress = {p.nhs_number: p for p in (await store.open_children(run_id)).all()}
    assert progress[NHS_A] == ChildProgress(
        NHS_A, counted=1, awaited=AwaitedAttempt(ref.message_id, datetime(2026, 12, 1, 1, tzinfo=UTC))
    )


async def test_a_failed_run_is_resumed(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        await store.end_run(run_id, RunStatus.FAILED)
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
    assert run.resumed and run.run_id == run_id


async def test_a_reply_before_the_202_is_not_overwritten_by_the_send_result(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        await _answer(store, ref, Resolution(Outcome.NOT_FLAGGED))
        await store.record_send_result(ref, AttemptStatus.ACCEPTED, acked_at=ACKED)
        await store.mark_timed_out(ref.message_id)
        progress = (await store.open_children(run_id)).all()
    # The child is answered, so only NHS_B is open; the answered attempt was neither re-marked nor timed out.
    assert [p.nhs_number for p in progress] == [NHS_B]
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    assert conn.execute("SELECT status, acked_at FROM attempts").fetchall() == [("answered", ACKED)]


async def test_concurrent_writers_share_commits(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        before = store.commit_groups
        refs = [_ref(run_id, NHS_A) for _ in range(200)]
        async with anyio.create_task_group() as tg:
            for i, ref in enumerate(refs):
                tg.start_soon(store.record_attempt, ref, i, SENT)
        counts = await store.run_counts(run_id)
        groups = store.commit_groups - before
    assert counts.attempts == 200
    assert groups < 200


def _conn(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "w.sqlite", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    return conn


async def test_a_failed_write_is_reported_and_does_not_poison_its_group(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    results: dict[int, object] = {}

    async def insert(key: int, tag: str) -> None:
        try:
            results[key if tag == "a" else -key] = await writer.write(
                lambda c: c.execute("INSERT INTO t VALUES (?)", (key,)).rowcount
            )
        except WriteFailed as exc:
            results[-key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        async with anyio.create_task_group() as writers:
            writers.start_soon(insert, 1, "a")
            writers.start_soon(insert, 1, "b")  # same key: fails alone
            writers.start_soon(insert, 2, "a")
        writer.close()
    assert results[1] == 1 and results[2] == 1
    assert isinstance(results[-1], WriteFailed) and "UNIQUE" in str(results[-1])
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]


def test_a_failed_commit_fails_every_write_of_the_group(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    conn.execute("CREATE TABLE parent (k INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (k INTEGER REFERENCES parent (k) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("PRAGMA foreign_keys=ON")
    from batch.store.writer import _Op

    ok = _Op(lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount)
    dangling = _Op(lambda c: c.execute("INSERT INTO child VALUES (7)").rowcount)  # fails only at COMMIT
    apply_group(conn, [ok, dangling])
    assert isinstance(ok.error, sqlite3.IntegrityError) and isinstance(dangling.error, sqlite3.IntegrityError)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    assert not conn.in_transaction


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"state\.sqlite: not a usable state database"):
        async with Store.open(path):
            pass


async def test_a_state_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=rf"written by a newer cpis-batch \(schema {SCHEMA_VERSION + 1}"):
        async with Store.open(path):
            pass


async def test_a_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="no cpis-batch schema version"):
        async with Store.open(path):
            pass


async def test_purge_drops_old_raw_messages_and_keeps_outcomes_and_audit(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        await _answer(store, ref, Resolution(Outcome.NOT_FLAGGED))
        await store.store_inbound(
            _inbound(None), attempt=None, disposition=Disposition.ORPHAN, detail=None, resolution=None
        )
        now = datetime.now(UTC)
        # Runs and messages newer than the cutoff keep their raw messages.
        assert await store.purge_raw(now - timedelta(hours=1)) == 0
        assert await store.purge_raw(now + timedelta(hours=1)) == 2
        assert await store.purge_raw(now + timedelta(hours=1)) == 0  # nothing left to drop
        outcomes = {o.nhs_number: o.outcome for o in await store.outcomes(run_id)}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT length(raw), raw_size FROM inbound").fetchall() == [(0, 3), (0, 3)]
    assert outcomes[NHS_A] is Outcome.NOT_FLAGGED
    audit = [d.split()[0] for (d,) in conn.execute("SELECT detail FROM audit WHERE event = 'raw_purged'")]
    assert audit == ["messages=0", "messages=2", "messages=0"]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
async def test_a_symlinked_state_file_is_refused(tmp_path: Path, suffix: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / f"state.sqlite{suffix}").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        async with Store.open(tmp_path / "state.sqlite"):
            pass
    assert victim.read_bytes() == b"precious"


async def test_a_read_sees_every_write_committed_before_it_even_among_overlapping_reads(
    tmp_path: Path,
) -> None:
    """Reads share one connection; a statement left mid-way there would pin its snapshot for the reads that
    overlap it (an attempt committed before its reply would then not be found, and the reply filed as an
    orphan). Each read runs whole in one call to the reader's thread."""
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        missing: list[str] = []

        async def record_then_find(i: int) -> None:
            ref = _ref(run_id, NHS_A)
            await store.record_attempt(ref, i, SENT)
            found = await store.find_attempt(
                message_ids=[ref.message_id], conversation_id=None, query_event_ids=[]
            )
            if found != ref:
                missing.append(ref.message_id)

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(record_then_find, i)
    assert missing == []
