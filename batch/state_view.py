"""A read-only view of a job's state file: how far a run has got, and the job's recent runs.

For `cpis-batch status` and the run's own progress lines, so both show the same numbers. It never creates,
locks or migrates anything and works beside a running job: while a run has the file open (its `-wal` and
`-shm` files exist) it reads through SQLite's WAL like any reader; otherwise it opens the file `immutable`, as
SQLite would otherwise create `-wal`/`-shm` files beside it (owned by whoever asked, perhaps root). Counts
only: no NHS number ever leaves this module.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batch.states import CHILD_OUTCOMES, AttemptStatus
from batch.store.schema import SCHEMA_VERSION, SchemaError, file_version
from batch.store.uri import read_only_uri

RATE_WINDOW_S = 60.0
"""The achieved rate is measured over the last minute of sends (less at the start of a run)."""

# One aggregated read per snapshot. The only text built in is fixed enum literals, never input.
_SNAPSHOT_SQL = (
    "SELECT 'outcome', outcome, COUNT(*), NULL FROM queries WHERE run_id = :run GROUP BY outcome"  # noqa: S608
    " UNION ALL SELECT 'attempt', status, COUNT(*), MIN(sent_at) FROM attempts WHERE run_id = :run GROUP BY status"
    " UNION ALL SELECT 'recent', NULL, COUNT(*), NULL FROM attempts WHERE run_id = :run AND sent_at > :since"
    " UNION ALL SELECT 'awaiting', NULL, COUNT(DISTINCT a.nhs_number), NULL FROM attempts a"
    " JOIN queries q ON q.run_id = a.run_id AND q.nhs_number = a.nhs_number"
    " WHERE a.run_id = :run AND q.outcome IS NULL AND a.status IN ("
    + ", ".join(f"'{status.value}'" for status in AttemptStatus if status.awaits_reply)
    + ")"
)


class StateViewError(Exception):
    """The state file cannot be read; the message names it and says why."""


class StateMissing(StateViewError):
    """There is no state file: the job has not run yet, or `[job] state` names another file."""


@dataclass(frozen=True)
class Snapshot:
    """How far one run has got. Children are distinct valid NHS numbers (invalid rows are never queried)."""

    children: int
    answered: int
    """Children with an outcome."""
    outcomes: dict[str, int]
    """Children by outcome so far (`flagged`, `not_flagged`, `error`, `no_reply`)."""
    sent: int
    """Queries whose POST left us, over every process of the run (re-queries included)."""
    send_failures: int
    """Queries that never reached Spine."""
    awaiting: int
    """Children without an outcome whose latest query may be at Spine, awaiting its reply."""
    rate_per_s: float | None
    """Queries sent per second over the last minute; None before the first or when none were sent in it."""

    @property
    def outstanding(self) -> int:
        """Children without an outcome yet."""
        return self.children - self.answered

    @property
    def to_send(self) -> int:
        """Children without an outcome and without a query at Spine: each needs one more query."""
        return max(self.outstanding - self.awaiting, 0)

    @property
    def eta_s(self) -> float | None:
        """Seconds until every child has been sent its query at the achieved rate; 0 when all are answered,
        None when it cannot be told (nothing sent lately, or only replies are awaited)."""
        if self.outstanding == 0:
            return 0.0
        if self.to_send == 0 or not self.rate_per_s:
            return None
        return self.to_send / self.rate_per_s


@dataclass(frozen=True)
class RunView:
    run_id: str
    job: str
    status: str
    """As the state records it: `running`, `complete` or `failed` (a `running` run may have been killed)."""
    reference_date: str
    started_at: str
    finished_at: str | None
    snapshot: Snapshot = field(repr=False)


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection to the state file (close it). Raises StateMissing or StateViewError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StateMissing(
            f"{path}: no state file: the job has not run yet (or [job] state names another file)"
        ) from None
    except OSError as exc:
        raise StateViewError(f"{path}: cannot read the state file ({exc.strerror})") from None
    if not st.st_size:
        raise StateViewError(f"{path}: the state file is empty")
    uri = read_only_uri(path)
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateViewError(f"{path}: cannot open the state file read-only ({exc})") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        version = file_version(conn)
    except (SchemaError, sqlite3.Error) as exc:
        conn.close()
        raise StateViewError(f"{path}: not a usable state database ({exc})") from None
    if version is None:
        conn.close()
        raise StateViewError(f"{path}: the state file holds no runs yet")
    if version > SCHEMA_VERSION:
        conn.close()
        raise StateViewError(
            f"{path}: written by a newer cpis-batch (schema {version}; this version reads up to {SCHEMA_VERSION})"
        )
    return conn


@contextmanager
def open_state(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the state file. Raises StateMissing or StateViewError."""
    with closing(connect(path)) as conn:
        yield conn


def _stamp(at: datetime) -> str:
    # The store's own format (batch.store.utcnow), so stamps compare as text.
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def read_snapshot(conn: sqlite3.Connection, run_id: str, now: datetime | None = None) -> Snapshot:
    """One aggregated read of a run's counts."""
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=RATE_WINDOW_S)
    try:
        rows = conn.execute(_SNAPSHOT_SQL, {"run": run_id, "since": _stamp(since)}).fetchall()
    except sqlite3.Error as exc:
        raise StateViewError(f"cannot read the state ({exc})") from None
    outcomes = {outcome.value: 0 for outcome in CHILD_OUTCOMES}
    children = answered = sent = failures = recent = awaiting = 0
    first_sent: str | None = None
    for kind, key, count, earliest in rows:
        if kind == "outcome":
            children += count
            if key is not None:
                answered += count
                outcomes[str(key)] = outcomes.get(str(key), 0) + count
        elif kind == "attempt":
            if key == AttemptStatus.NOT_SENT.value:
                failures += count
            else:
                sent += count
            if earliest is not None and (first_sent is None or earliest < first_sent):
                first_sent = earliest
        elif kind == "recent":
            recent = count
        else:
            awaiting = count
    rate = None
    if first_sent is not None and recent:
        window = min(RATE_WINDOW_S, (now - datetime.fromisoformat(first_sent)).total_seconds())
        rate = recent / window if window > 0 else None
    return Snapshot(
        children=children,
        answered=answered,
        outcomes=outcomes,
        sent=sent,
        send_failures=failures,
        awaiting=awaiting,
        rate_per_s=rate,
    )


def recent_runs(
    conn: sqlite3.Connection, job: str, limit: int = 7, now: datetime | None = None
) -> list[RunView]:
    """The job's latest runs, newest first, each with its counts."""
    try:
        rows = conn.execute(
            "SELECT run_id, job_name, status, reference_date, started_at, finished_at FROM runs"
            " WHERE job_name = ? ORDER BY started_at DESC LIMIT ?",
            (job, limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StateViewError(f"cannot read the state ({exc})") from None
    return [
        RunView(
            run_id=run_id,
            job=name,
            status=status,
            reference_date=reference_date,
            started_at=started_at,
            finished_at=finished_at,
            snapshot=read_snapshot(conn, run_id, now),
        )
        for run_id, name, status, reference_date, started_at, finished_at in rows
    ]
