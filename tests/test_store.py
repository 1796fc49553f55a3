"""The SQLite state file: real files, real WAL, group commits, migrations."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import polars as pl
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
    QueryReason,
    Resolution,
    Run,
    RunCounts,
    Store,
    StoredInbound,
    StoreError,
    state_file,
)
from batch.store.writer import MAX_GROUP, GroupWriter, WriteFailed, apply_group

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


async def test_a_correlated_message_that_says_nothing_about_the_child_changes_no_child(
    tmp_path: Path,
) -> None:
    # An MCCI AA names its attempt but decides nothing: it is filed, and the child is still open.
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        stored = await store.store_inbound(
            _inbound(ref.message_id),
            attempt=ref,
            disposition=Disposition.INFORMATIONAL,
            detail=None,
            resolution=None,
        )
        outcomes = {o.nhs_number: o for o in await store.outcomes(run_id)}
        counts = await store.run_counts(run_id)
    assert stored == StoredInbound(Disposition.INFORMATIONAL, b"ack")
    assert outcomes[NHS_A].outcome is None
    assert counts.inbound == {Disposition.INFORMATIONAL: 1}


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


# --- what each write leaves in the audit trail, and how failures read -----------------------------------


def _audit_rows(path: Path) -> list[tuple[str | None, str, str | None, str | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT run_id, event, message_id, detail FROM audit ORDER BY id").fetchall()


async def test_a_run_is_started_resumed_and_ended_in_the_audit_trail(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        started = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-01"
        )
        await store.end_run(started.run_id, RunStatus.FAILED)
        resumed = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-02"
        )
        await store.end_run(started.run_id, RunStatus.COMPLETE, '{"n": 1}\n')
        found = await store.find_run("job", started.run_id)
    assert resumed == replace(started, resumed=True)
    assert [(run_id, event) for run_id, event, _, _ in _audit_rows(path)] == [
        (started.run_id, "run_started"),
        (started.run_id, "run_failed"),
        (started.run_id, "run_resumed"),
        (started.run_id, "run_complete"),
    ]
    assert found is not None and found.summary_json == '{"n": 1}\n' and found.status is RunStatus.COMPLETE


async def test_a_send_that_failed_is_in_the_audit_trail_and_one_that_left_is_not(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run_id = await _new_run(store)
        sent, unsent = _ref(run_id, NHS_A), _ref(run_id, NHS_B)
        await store.record_attempt(sent, 1, SENT)
        await store.record_attempt(unsent, 1, SENT)
        await store.record_send_result(sent, AttemptStatus.ACCEPTED, acked_at=ACKED)
        await store.record_send_result(unsent, AttemptStatus.NOT_SENT, "connect_failed")
    assert [row for row in _audit_rows(path) if row[1] not in ("run_started", "query_sent")] == [
        (run_id, "send_failed", unsent.message_id, "connect_failed")
    ]


async def test_an_event_outside_a_run_is_audited_with_its_detail(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        await store.audit_event("audit_exported", "entries=3")
    assert _audit_rows(path) == [(None, "audit_exported", None, "entries=3")]


async def test_a_failed_write_is_a_store_error_naming_sqlites_reason(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        ref = _ref(run_id, NHS_A)
        await store.record_attempt(ref, 1, SENT)
        with pytest.raises(
            StoreError, match=r"^state database write failed: UNIQUE constraint failed"
        ) as caught:
            await store.record_attempt(ref, 2, SENT)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)


async def test_a_failed_read_is_a_store_error_naming_sqlites_reason(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        await _new_run(store)
        with sqlite3.connect(path) as other:
            other.execute("ALTER TABLE attempts RENAME TO attempts_elsewhere")
        with pytest.raises(
            StoreError, match=r"^state database read failed: no such table: attempts$"
        ) as caught:
            await store.find_attempt(message_ids=[new_id()], conversation_id=None, query_event_ids=[])
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


@pytest.mark.parametrize(
    ("suffix", "what"),
    [("", "state file"), ("-wal", "state WAL file"), ("-shm", "state shared-memory file")],
)
async def test_a_symlink_beside_the_state_file_is_named_in_the_refusal(
    tmp_path: Path, suffix: str, what: str
) -> None:
    (tmp_path / f"state.sqlite{suffix}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=rf"state\.sqlite{suffix}: the {what} is a symbolic link$"):
        async with Store.open(tmp_path / "state.sqlite"):
            pass


async def test_the_previous_complete_run_is_the_one_that_finished_last_before(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        first = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-11-01"
        )
        assert await store.previous_complete_run(first.run_id) is None
        await store.end_run(first.run_id, RunStatus.COMPLETE)
        other_job = await store.begin_or_resume_run(
            run_id=new_id(), job_name="other", input_fingerprint="f1", reference_date="2026-11-02"
        )
        await store.end_run(other_job.run_id, RunStatus.COMPLETE)
        failed = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f2", reference_date="2026-11-03"
        )
        await store.end_run(failed.run_id, RunStatus.FAILED)
        second = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f3", reference_date="2026-11-04"
        )
        before_second = await store.previous_complete_run(second.run_id)
        await store.end_run(second.run_id, RunStatus.COMPLETE)
        third = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f4", reference_date="2026-11-05"
        )
        before_third = await store.previous_complete_run(third.run_id)
        # A complete run looks back from when it finished, not from now.
        after_second = await store.previous_complete_run(second.run_id)
    assert before_second == Run(first.run_id, "job", "2026-11-01", first.started_at, resumed=False)
    assert before_third == Run(second.run_id, "job", "2026-11-04", second.started_at, resumed=False)
    assert after_second == before_second


async def test_children_keep_why_they_are_queried_and_an_earlier_versions_child_gains_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    reason = QueryReason(NHS_A, "clinic.csv", 7, "Eye clinic", "2026-12-03", 2)
    async with Store.open(path) as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, [NHS_A, NHS_B])
        await store.add_children(run.run_id, [reason, NHS_B])
        await store.add_children(run.run_id, [QueryReason(NHS_A, "other.csv", 1, None, None, 1)])
        open_children = await store.open_children(run.run_id)
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT nhs_number, source_file, source_row, clinic, appointment_date, input_rows FROM queries"
            " ORDER BY nhs_number"
        ).fetchall()
    assert rows == [
        (NHS_A, "clinic.csv", 7, "Eye clinic", "2026-12-03", 2),
        (NHS_B, None, None, None, None, None),
    ]
    assert open_children.fresh == [NHS_A, NHS_B]


async def test_children_from_a_generator_are_added_a_transaction_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run's children come from a generator, written a few at a time; every one of them arrives.
    monkeypatch.setattr(state_file, "_ADD_ROWS", 2)
    numbers = [f"99912340{i:02d}" for i in range(5)]
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-01"
        )
        groups = store.commit_groups
        await store.add_children(
            run.run_id, (QueryReason(n, "list.csv", i, None, None, 1) for i, n in enumerate(numbers))
        )
        assert store.commit_groups - groups == 3
        open_children = await store.open_children(run.run_id)
    assert open_children.fresh == numbers


async def test_a_run_of_as_many_children_as_outcome_columns_reads_back_by_row(tmp_path: Path) -> None:
    # Seven rows of seven columns: polars could read them either way round, so the frame is built by row.
    numbers = [f"99912340{i:02d}" for i in range(7)]
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, numbers)
        for nhs in numbers[:3]:
            await store.finish_child(run.run_id, nhs, Outcome.NO_REPLY, "no_reply")
        outcomes = await store.outcomes(run.run_id)
    assert outcomes == [
        ChildOutcome(
            nhs, Outcome.NO_REPLY if i < 3 else None, "no_reply" if i < 3 else None, None, 0, None, None
        )
        for i, nhs in enumerate(numbers)
    ]


async def test_each_group_commit_is_counted_once(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    assert writer.groups == 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for key in range(3):  # one after another: a group each
            assert (
                await writer.write(lambda c, k=key: c.execute("INSERT INTO t VALUES (?)", (k,)).rowcount) == 1
            )
        writer.close()
    assert writer.groups == 3


async def test_a_group_holds_at_most_max_group_writes(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    results: list[int] = []

    async def insert(key: int) -> None:
        results.append(await writer.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (key,)).rowcount))

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as writes:
            for key in range(MAX_GROUP + 1):
                writes.start_soon(insert, key)
            await anyio.wait_all_tasks_blocked()  # every write is queued before the writer takes the first
            tg.start_soon(writer.run)
        writer.close()
    assert results == [1] * (MAX_GROUP + 1)
    assert writer.groups == 2
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (MAX_GROUP + 1,)


async def test_an_accepted_post_is_noted_without_overwriting_a_reply(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run_id = await _new_run(store)
        accepted, answered = _ref(run_id, NHS_A), _ref(run_id, NHS_B)
        await store.record_attempt(accepted, 1, SENT)
        await store.record_attempt(answered, 1, SENT)
        await store.record_send_result(accepted, AttemptStatus.UNANSWERED, "read_timeout")
        await _answer(store, answered, Resolution(Outcome.NOT_FLAGGED))
        await store.note_accepted(accepted, ACKED)
        await store.note_accepted(answered, ACKED)
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT message_id, status, acked_at, detail FROM attempts").fetchall()
    assert sorted(rows) == sorted(
        [(accepted.message_id, "accepted", ACKED, None), (answered.message_id, "answered", ACKED, None)]
    )


async def test_outcomes_are_read_in_whole_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batch.store.state_file._PAGE_ROWS", 2)
    numbers = [f"99912340{i:02d}" for i in range(5)]
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await store.begin_or_resume_run(
            run_id=new_id(), job_name="job", input_fingerprint="f1", reference_date="2026-12-01"
        )
        await store.add_children(run.run_id, numbers[:4])
        four = await store.outcomes(run.run_id)  # two whole pages
        await store.add_children(run.run_id, numbers[4:])
        five = await store.outcomes(run.run_id)
    assert [o.nhs_number for o in four] == numbers[:4]
    assert [o.nhs_number for o in five] == numbers


async def test_group_commits_run_on_the_writers_own_thread(tmp_path: Path) -> None:
    writer = GroupWriter(_conn(tmp_path))
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        names = [await writer.write(lambda _c: threading.current_thread().name) for _ in range(2)]
        writer.close()
    assert all(name.startswith("state-writer_") for name in names), names


async def test_a_group_under_way_finishes_when_the_writer_is_cancelled(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    entered, release = threading.Event(), threading.Event()
    results: list[int] = []

    def slow_insert(c: sqlite3.Connection) -> int:
        entered.set()
        release.wait(30)  # a guard against a hang, never a timing assertion
        return c.execute("INSERT INTO t VALUES (1)").rowcount

    async def write() -> None:
        results.append(await writer.write(slow_insert))

    writer_scope = anyio.CancelScope()

    async def run_writer() -> None:
        with writer_scope:
            await writer.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_writer)
        tg.start_soon(write)
        await anyio.to_thread.run_sync(entered.wait)
        writer_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert results == []  # the write is not reported done while its group is still under way
        release.set()
    assert results == [1]
    assert conn.execute("SELECT k FROM t").fetchall() == [(1,)]


async def test_the_outcomes_of_some_children_are_those_of_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reports read a slice of input rows' answers at a time; pages of 2 make each read take several.
    monkeypatch.setattr(state_file, "_PAGE_ROWS", 2)
    numbers = [f"999000{n:04d}" for n in range(7)]
    async with Store.open(tmp_path / "state.sqlite") as store:
        run_id = await _new_run(store)
        await store.add_children(run_id, numbers)
        other = await _new_run(store, fingerprint="f2")
        await store.add_children(other, numbers)
        whole = await store.outcome_frame(run_id)
        wanted = [numbers[5], NHS_B, numbers[0], numbers[3], "9990009999", numbers[6]]
        some = await store.outcome_frame(run_id, wanted)
        none = await store.outcome_frame(run_id, [])
    assert whole.height == len(numbers) + 2
    assert some.equals(whole.filter(pl.col("nhs_number").is_in(wanted)))
    assert some.get_column("nhs_number").to_list() == sorted(n for n in wanted if n != "9990009999")
    assert none.is_empty() and none.schema == whole.schema
