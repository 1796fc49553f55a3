"""Each numbered migration, from a file of the version before it, through `Store.open`."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from batch.states import AttemptStatus, Disposition, Outcome, RunStatus
from batch.store import (
    SCHEMA_VERSION,
    AuditEntry,
    AwaitedAttempt,
    ChildProgress,
    Store,
    StoredRun,
    StoreError,
)
from batch.store.schema import MIGRATIONS

RUN = "11111111-1111-4111-8111-111111111111"


def _file_at(path: Path, version: int) -> sqlite3.Connection:
    """A state file as cpis-batch at `version` left it (built by that version's migrations)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in range(version):
        MIGRATIONS[step](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
    return conn


def test_every_version_up_to_the_current_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


async def test_version_1_attempts_get_their_new_meaning(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = _file_at(path, 1)
    conn.execute(
        "INSERT INTO runs VALUES (?, 'job', 'fp', '2026-11-30', '2026-11-30T01:00:00.000+00:00', NULL, 'running')",
        (RUN,),
    )
    children = ["9990000018", "9990000026", "9990000034", "9990000042"]
    conn.executemany("INSERT INTO queries (run_id, nhs_number) VALUES (?, ?)", [(RUN, n) for n in children])
    # (child, attempt, created_at, sent_at (the 202 in version 1), status, detail)
    attempts = [
        (children[0], 1, "2026-11-30T01:00:00.000+00:00", None, "created", None),
        (children[1], 1, "2026-11-30T01:00:01.000+00:00", None, "failed", "connect_failed"),
        (children[2], 1, "2026-11-30T01:00:02.000+00:00", None, "failed", "SOAPFault:101"),
        (children[3], 1, "2026-11-30T01:00:03.000+00:00", "2026-11-30T01:00:03.500+00:00", "timed_out", None),
        (children[3], 2, "2026-11-30T01:01:04.000+00:00", "2026-11-30T01:01:04.500+00:00", "accepted", None),
    ]
    for i, (nhs, number, created, sent, status, detail) in enumerate(attempts):
        conn.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (f"M{i}", f"C{i}", f"Q{i}", RUN, nhs, number, created, sent, status, detail),
        )
    conn.execute(
        "INSERT INTO inbound VALUES ('I1', 't', 'REPC_IN000007GB01', NULL, NULL, 'P', NULL, NULL, 'orphan',"
        " NULL, x'00', x'01')"
    )
    conn.close()

    async with Store.open(path) as store:
        progress = {p.nhs_number: p for p in (await store.open_children(RUN)).all()}
        run = await store.begin_or_resume_run(
            run_id="other", job_name="job", input_fingerprint="fp", reference_date="2026-12-01"
        )
        counts = await store.run_counts(RUN)
        # The new states are accepted by the migrated tables' checks.
        await store.end_run(RUN, RunStatus.FAILED)
        assert await store.finish_child(RUN, children[2], Outcome.ERROR, "SOAPFault:101")

    assert run.resumed and run.run_id == RUN
    assert progress == {
        children[0]: ChildProgress(
            children[0], counted=1, awaited=AwaitedAttempt("M0", datetime.fromisoformat(attempts[0][2]))
        ),
        children[1]: ChildProgress(children[1], counted=0, unsent=1, last_failure="connect_failed"),
        children[2]: ChildProgress(children[2], counted=1),
        children[3]: ChildProgress(
            children[3], counted=2, awaited=AwaitedAttempt("M4", datetime.fromisoformat(attempts[4][3]))
        ),
    }
    assert counts.attempts == 4 and counts.send_failures == 1
    assert counts.inbound == {}  # the orphan belongs to no run
    check = sqlite3.connect(path)
    statuses = dict(check.execute("SELECT message_id, status FROM attempts").fetchall())
    assert statuses == {
        "M0": AttemptStatus.SENDING,
        "M1": AttemptStatus.NOT_SENT,
        "M2": AttemptStatus.REJECTED,
        "M3": AttemptStatus.TIMED_OUT,
        "M4": AttemptStatus.ACCEPTED,
    }
    assert check.execute("SELECT disposition FROM inbound").fetchall() == [(Disposition.ORPHAN.value,)]
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        check.execute("UPDATE attempts SET status = 'created' WHERE message_id = 'M0'")


async def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = _file_at(path, 1)
    # A version 1 status that the new checks cannot hold makes the migration fail part way.
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute(
        "INSERT INTO attempts VALUES ('M', 'C', 'Q', 'R', '9990000018', 1, 't', NULL, 'bogus', NULL)"
    )
    conn.close()
    with pytest.raises(StoreError, match="not a usable state database"):
        async with Store.open(path):
            pass
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    assert check.execute("SELECT status FROM attempts").fetchall() == [("bogus",)]


async def test_version_3_audit_rows_are_kept_gain_their_child_and_cannot_change(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = _file_at(path, 3)
    conn.execute(
        "INSERT INTO runs VALUES (?, 'job', 'fp', '2026-11-30', '2026-11-30T01:00:00.000+00:00', NULL, 'running')",
        (RUN,),
    )
    conn.execute("INSERT INTO queries (run_id, nhs_number) VALUES (?, '9990000018')", (RUN,))
    conn.execute(
        "INSERT INTO attempts VALUES ('M1', 'C1', 'Q1', ?, '9990000018', 1, '2026-11-30T01:00:01.000+00:00',"
        " NULL, 'accepted', NULL)",
        (RUN,),
    )
    audit = [
        ("2026-11-30T01:00:00.000+00:00", RUN, "run_started", None, None),
        ("2026-11-30T01:00:01.000+00:00", RUN, "query_sent", "M1", None),
        ("2026-11-30T01:05:00.000+00:00", None, "raw_purged", None, "messages=0 before=x"),
    ]
    conn.executemany(
        "INSERT INTO audit (at, run_id, event, message_id, detail) VALUES (?, ?, ?, ?, ?)", audit
    )
    conn.close()

    async with Store.open(path) as store:
        entries = [e async for batch in store.audit_entries("2026-11-30", "2026-12-01") for e in batch]
        await store.end_run(RUN, RunStatus.COMPLETE, '{"run_id": "x"}\n')
        stored = await store.find_run("job")

    assert entries == [
        AuditEntry(
            "2026-11-30T01:00:01.000+00:00",
            RUN,
            "M1",
            "9990000018",
            *(None,) * 10,
            "accepted",
            None,
            None,
        )
    ]
    assert stored is not None and stored.finished_at is not None
    assert replace(stored, finished_at=None) == StoredRun(
        RUN,
        "job",
        "2026-11-30",
        "2026-11-30T01:00:00.000+00:00",
        None,
        RunStatus.COMPLETE,
        '{"run_id": "x"}\n',
    )
    check = sqlite3.connect(path, isolation_level=None)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
    kept = check.execute(
        "SELECT at, run_id, event, message_id, detail, nhs_number FROM audit ORDER BY id"
    ).fetchall()
    assert kept[:3] == [(*row, "9990000018" if row[2] == "query_sent" else None) for row in audit]
    assert [row[2] for row in kept[3:]] == ["run_complete"]
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        check.execute("UPDATE audit SET detail = 'changed' WHERE event = 'raw_purged'")
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        check.execute("DELETE FROM audit WHERE event = 'query_sent'")
    assert check.execute("SELECT COUNT(*) FROM audit").fetchone() == (4,)
    assert check.execute("SELECT COUNT(*) FROM run_inputs").fetchone() == (0,)


async def test_a_file_whose_references_do_not_hold_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = _file_at(path, 3)
    # Written with foreign keys off: a child of a run that does not exist.
    conn.execute("INSERT INTO queries (run_id, nhs_number) VALUES ('NO-SUCH-RUN', '9990000018')")
    conn.close()
    with pytest.raises(
        StoreError,
        match=r"state\.sqlite: not a usable state database"
        r" \(a migration left rows pointing at rows that do not exist\)$",
    ):
        async with Store.open(path):
            pass
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)


@pytest.mark.parametrize("value", [None, "four"])
async def test_a_file_without_a_readable_version_is_refused(tmp_path: Path, value: str | None) -> None:
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    if value is not None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (value,))
    conn.close()
    with pytest.raises(
        StoreError,
        match=r"state\.sqlite: not a usable state database \(it holds no readable cpis-batch schema version\)$",
    ):
        async with Store.open(path):
            pass


async def test_a_file_with_tables_but_no_version_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(
        StoreError,
        match=r"state\.sqlite: not a usable state database \(it holds tables but no cpis-batch schema version\)$",
    ):
        async with Store.open(path):
            pass
