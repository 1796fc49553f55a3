"""The run's SQLite state file: one writer connection with group commits, one read-only connection, WAL.

Writes go through `GroupWriter` (one task, one commit per group); reads use their own read-only connection,
which WAL lets run beside the writer without opening a write transaction. Expected outcomes, such as a
duplicate inbound message, are return values; `StoreError` means the database itself failed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio
import polars as pl

from batch.files import check_not_link
from batch.states import AttemptStatus, Disposition, Outcome, RunStatus
from batch.store import records
from batch.store.schema import SCHEMA_VERSION, SchemaError, prepare
from batch.store.uri import read_only_uri
from batch.store.writer import GroupWriter, WriteFailed

T = TypeVar("T")

_AWAITING = tuple(status.value for status in AttemptStatus if status.awaits_reply)

# Who sends a run's queries: columns of `runs`, copied into each `query_sent` audit row.
_SENDER_FIELDS = (
    "sender_asid",
    "sender_ods_code",
    "responsible_person_name",
    "responsible_person_role_code",
    "responsible_person_role_name",
)
_SENDER_COLUMNS = ", ".join(_SENDER_FIELDS)
_SENDER_SET = ", ".join(f"{column} = ?" for column in _SENDER_FIELDS)
_SENDER_OF_RUN = ", ".join(f"r.{column}" for column in _SENDER_FIELDS)
AUDIT_BATCH = 10_000


_PAGE_ROWS = 5000


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StoreError(Exception):
    """The state database could not be opened, read or written."""


class StoreOpenError(StoreError):
    """The state file cannot be used at all: not a database, from a newer version, unreadable."""


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def _open_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode keeps every commit atomic and consistent; only the last commits before a power
        # cut may be lost, which the reply timeout and re-query already recover.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        # Patient data that is deleted or overwritten (purged raw replies) is zeroed in the file, not left in
        # free pages.
        conn.execute("PRAGMA secure_delete=ON")
        prepare(conn)
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _check_state_files(path: Path) -> None:
    for suffix, what in (
        ("", "state file"),
        ("-wal", "state WAL file"),
        ("-shm", "state shared-memory file"),
    ):
        check_not_link(path.with_name(path.name + suffix), what)


class Store:
    """Async facade over the state file; use `Store.open` (or `Store.open_read_only`) as an async context
    manager."""

    def __init__(self, writer: GroupWriter | None, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Store]:
        """Open (creating or migrating) the state file in its existing folder.

        Raises StoreOpenError naming the file, or UnsafePathError when the file or SQLite's files beside it are
        symlinks (SQLite would follow them) or not ours.
        """
        _check_state_files(path)
        try:
            conn = await anyio.to_thread.run_sync(_open_writer, path)
        except SchemaError as exc:
            raise StoreOpenError(f"{path}: not a usable state database ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise StoreOpenError(f"{path}: not a usable state database ({exc})") from None
        except (OSError, sqlite3.Error) as exc:
            raise StoreOpenError(f"{path}: cannot open state database ({exc})") from None
        try:
            uri = await anyio.to_thread.run_sync(lambda: f"{path.resolve().as_uri()}?mode=ro")
            reader = await aiosqlite.connect(uri, uri=True)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreOpenError(f"{path}: cannot open state database for reading ({exc})") from None
        writer = GroupWriter(conn)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run)
                try:
                    yield cls(writer, reader)
                finally:
                    writer.close()
        finally:
            await reader.close()
            conn.close()

    @classmethod
    @asynccontextmanager
    async def open_read_only(cls, path: Path) -> AsyncIterator[Store]:
        """Open an existing state file to read only: no writer, no migration, no lock needed (WAL lets it read
        beside a running job). Every write method raises StoreError.

        Raises StoreOpenError naming the file (missing, not a database, another schema version), or
        UnsafePathError when it or SQLite's files beside it are symlinks or not ours.
        """
        _check_state_files(path)
        if not await anyio.Path(path).exists():
            raise StoreOpenError(f"{path}: no state file (has the job run yet?)")
        try:
            uri = await anyio.to_thread.run_sync(read_only_uri, path)
            reader = await aiosqlite.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise StoreOpenError(f"{path}: cannot open state database for reading ({exc})") from None
        try:
            try:
                rows = list(
                    await reader.execute_fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
                )
            except sqlite3.Error as exc:
                raise StoreOpenError(f"{path}: not a usable state database ({exc})") from None
            version = int(rows[0][0]) if rows and str(rows[0][0]).isdigit() else None
            if version is None:
                raise StoreOpenError(f"{path}: not a usable state database (no cpis-batch schema version)")
            if version != SCHEMA_VERSION:
                raise StoreOpenError(
                    f"{path}: the state file has schema {version}, this cpis-batch reads {SCHEMA_VERSION}"
                    " (a run or `cpis-batch purge` of this version brings an older file up to date)"
                )
            yield cls(None, reader)
        finally:
            await reader.close()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StoreError("the state file was opened read-only")
        try:
            return await self._writer.write(fn)
        except WriteFailed as exc:
            raise StoreError(f"state database write failed: {exc}") from exc.cause

    async def _defer(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        if self._writer is None:
            raise StoreError("the state file was opened read-only")
        await self._writer.defer(fn)

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        # Executed and fetched in one call to the reader's thread: a statement left active between two calls
        # would pin its snapshot for every read that overlaps it, hiding writes committed meanwhile.
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"state database read failed: {exc}") from exc

    @property
    def commit_groups(self) -> int:
        """Group commits so far (for figures: statements per commit)."""
        return self._writer.groups if self._writer is not None else 0

    # -- runs ---------------------------------------------------------------------------------------------

    async def begin_or_resume_run(
        self,
        *,
        run_id: str,
        job_name: str,
        input_fingerprint: str,
        reference_date: str,
        sender: records.SenderIdentity | None = None,
    ) -> records.Run:
        """Continue the unfinished run of this job and input, or start a new one.

        `sender` is who this process's queries come from; each `query_sent` audit row copies it.
        """
        who = (
            (
                sender.asid,
                sender.ods_code,
                sender.responsible_person_name,
                sender.responsible_person_role_code,
                sender.responsible_person_role_name,
            )
            if sender is not None
            else (None,) * 5
        )

        def fn(conn: sqlite3.Connection) -> records.Run:
            row = conn.execute(
                "SELECT run_id, reference_date, started_at FROM runs WHERE job_name = ? AND input_fingerprint = ?"
                " AND status IN (?, ?) ORDER BY started_at DESC LIMIT 1",
                (job_name, input_fingerprint, RunStatus.RUNNING.value, RunStatus.FAILED.value),
            ).fetchone()
            if row is not None:
                conn.execute(
                    f"UPDATE runs SET status = ?, {_SENDER_SET} WHERE run_id = ?",  # noqa: S608 (fixed names)
                    (RunStatus.RUNNING.value, *who, row[0]),
                )
                _audit(conn, row[0], "run_resumed")
                return records.Run(row[0], job_name, row[1], row[2], resumed=True)
            started = utcnow()
            conn.execute(
                "INSERT INTO runs (run_id, job_name, input_fingerprint, reference_date, started_at, status,"  # noqa: S608 (fixed names)
                f" {_SENDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, job_name, input_fingerprint, reference_date, started, RunStatus.RUNNING.value, *who),
            )
            _audit(conn, run_id, "run_started")
            return records.Run(run_id, job_name, reference_date, started, resumed=False)

        return await self._write(fn)

    async def end_run(self, run_id: str, status: RunStatus, summary_json: str | None = None) -> None:
        """Mark the run complete, or failed (a rerun of the same input resumes a failed run). A complete run
        keeps its `summary.json` (`summary_json`), so its reports can be written again."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, summary_json = COALESCE(?, summary_json)"
                " WHERE run_id = ?",
                (status.value, utcnow(), summary_json, run_id),
            )
            _audit(conn, run_id, f"run_{status.value}")

        await self._write(fn)

    # -- children and attempts ----------------------------------------------------------------------------

    async def add_children(self, run_id: str, children: Iterable[str | records.QueryReason]) -> None:
        """One `queries` row per child (kept when it exists), with why it is queried when that is given; the
        reason of a child added by an earlier version is filled in.

        Written `_ADD_ROWS` children per transaction, so `children` may be a generator over a run of any size
        without a row per child held in memory. A crash between transactions loses nothing: adding the same
        children again keeps the rows already there.
        """
        it = iter(children)
        while rows := [_query_row(run_id, c) for c in islice(it, _ADD_ROWS)]:

            def fn(conn: sqlite3.Connection, rows: list[_QueryRow] = rows) -> None:
                conn.executemany(
                    "INSERT INTO queries (run_id, nhs_number, source_file, source_row, clinic,"
                    " appointment_date, input_rows) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id, nhs_number) DO UPDATE SET source_file = excluded.source_file,"
                    " source_row = excluded.source_row, clinic = excluded.clinic,"
                    " appointment_date = excluded.appointment_date, input_rows = excluded.input_rows"
                    " WHERE queries.source_file IS NULL",
                    rows,
                )

            await self._write(fn)

    async def save_run_inputs(self, run_id: str, parts: Sequence[tuple[int, bytes]]) -> None:
        """Keep the run's input rows (Parquet parts with their row counts), once: a resumed run keeps the
        inputs it started with."""
        written = utcnow()
        rows = [(run_id, i, n, written, data) for i, (n, data) in enumerate(parts)]

        def fn(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM run_inputs WHERE run_id = ? LIMIT 1", (run_id,)).fetchone():
                return
            conn.executemany(
                "INSERT INTO run_inputs (run_id, part, rows, written_at, frame) VALUES (?, ?, ?, ?, ?)", rows
            )

        await self._write(fn)

    async def run_inputs(self, run_id: str) -> records.StoredInputs | None:
        """The run's input rows as written when it started; None when it kept none (an older version ran it)."""
        rows = await self._read("SELECT frame FROM run_inputs WHERE run_id = ? ORDER BY part", (run_id,))
        if not rows:
            return None
        return records.StoredInputs(tuple(bytes(r[0]) if r[0] is not None else None for r in rows))

    async def open_children(self, run_id: str) -> records.OpenChildren:
        """Children of the run without an outcome: those never queried, and those with what earlier processes
        did for them (a resumed run)."""
        fresh = await self._read(
            "SELECT q.nhs_number FROM queries q WHERE q.run_id = ? AND q.outcome IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM attempts a WHERE a.run_id = q.run_id AND a.nhs_number = q.nhs_number)"
            " ORDER BY q.nhs_number",
            (run_id,),
        )
        rows = await self._read(
            "SELECT q.nhs_number, a.message_id, a.status, a.sent_at, a.acked_at, a.detail"
            " FROM queries q JOIN attempts a ON a.run_id = q.run_id AND a.nhs_number = q.nhs_number"
            " WHERE q.run_id = ? AND q.outcome IS NULL ORDER BY q.nhs_number, a.attempt, a.sent_at",
            (run_id,),
        )
        progress: dict[str, records.ChildProgress] = {}
        for nhs, message_id, status_text, sent_at, acked_at, detail in rows:
            child = progress.get(nhs) or records.ChildProgress(nhs)
            status = AttemptStatus(status_text)
            awaited = None
            if status.awaits_reply:
                awaited = records.AwaitedAttempt(message_id, datetime.fromisoformat(acked_at or sent_at))
            progress[nhs] = records.ChildProgress(
                nhs,
                counted=child.counted + status.counts,
                unsent=child.unsent + (not status.counts),
                last_failure=None if status.counts else detail,
                # Only the latest attempt can still be awaited: an earlier one was re-queried after a timeout.
                awaited=awaited,
            )
        return records.OpenChildren([row[0] for row in fresh], list(progress.values()))

    async def recent_sends(self, job_name: str, limit: int) -> list[tuple[datetime, datetime | None]]:
        """The job's latest `limit` attempts (any run), for pacing across a restart: when each was recorded
        (just before its POST) and when Spine acknowledged it (after its POST), if it did."""
        rows = await self._read(
            "SELECT a.sent_at, a.acked_at FROM attempts a JOIN runs r ON r.run_id = a.run_id"
            " WHERE r.job_name = ? ORDER BY a.sent_at DESC LIMIT ?",
            (job_name, limit),
        )
        return [(datetime.fromisoformat(r[0]), datetime.fromisoformat(r[1]) if r[1] else None) for r in rows]

    async def record_attempt(self, ref: records.AttemptRef, number: int, sent_at: str) -> None:
        """Make an attempt durable before its POST: from now on it may be at Spine."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO attempts (message_id, conversation_id, query_event_id, run_id, nhs_number, attempt,"
                " sent_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref.message_id,
                    ref.conversation_id,
                    ref.query_event_id,
                    ref.run_id,
                    ref.nhs_number,
                    number,
                    sent_at,
                    AttemptStatus.SENDING.value,
                ),
            )
            # The audit row copies who sends (the run's sender) and why (the child's reason) in the attempt's
            # own transaction: one more statement, no more commits.
            conn.execute(
                "INSERT INTO audit (at, run_id, event, message_id, nhs_number, sender_asid, sender_ods_code,"  # noqa: S608 (fixed names)
                " responsible_person_name, responsible_person_role_code, responsible_person_role_name,"
                " source_file, source_row, clinic, appointment_date, input_rows)"
                f" SELECT ?, ?, 'query_sent', ?, ?, {_SENDER_OF_RUN},"
                " q.source_file, q.source_row, q.clinic, q.appointment_date, q.input_rows"
                " FROM (SELECT 1) LEFT JOIN runs r ON r.run_id = ?"
                " LEFT JOIN queries q ON q.run_id = ? AND q.nhs_number = ?",
                (sent_at, ref.run_id, ref.message_id, ref.nhs_number, ref.run_id, ref.run_id, ref.nhs_number),
            )

        await self._write(fn)

    async def record_send_result(
        self,
        ref: records.AttemptRef,
        status: AttemptStatus,
        detail: str | None = None,
        acked_at: str | None = None,
    ) -> None:
        """What the POST achieved (never overwrites `answered`: a reply may have beaten the 202)."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE attempts SET status = CASE WHEN status = ? THEN status ELSE ? END,"
                " acked_at = COALESCE(?, acked_at), detail = ? WHERE message_id = ?",
                (AttemptStatus.ANSWERED.value, status.value, acked_at, detail, ref.message_id),
            )
            if not status.counts:
                _audit(conn, ref.run_id, "send_failed", ref.message_id, detail)

        await self._write(fn)

    async def note_accepted(self, ref: records.AttemptRef, acked_at: str) -> None:
        """Spine acknowledged the POST. Not waited for: a crash that loses it leaves the attempt `sending`,
        which a restart treats the same way (it may be at Spine; its reply timeout runs from `sent_at`)."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE attempts SET status = CASE WHEN status = ? THEN status ELSE ? END,"
                " acked_at = ?, detail = NULL WHERE message_id = ?",
                (AttemptStatus.ANSWERED.value, AttemptStatus.ACCEPTED.value, acked_at, ref.message_id),
            )

        await self._defer(fn)

    async def mark_timed_out(self, message_id: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE attempts SET status = ? WHERE message_id = ? AND status IN (?, ?, ?)",
                (AttemptStatus.TIMED_OUT.value, message_id, *_AWAITING),
            )

        await self._write(fn)

    async def finish_child(self, run_id: str, nhs_number: str, outcome: Outcome, reason: str | None) -> bool:
        """Give a child an outcome decided by us (error, no_reply) unless a reply already did."""

        def fn(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE queries SET outcome = ?, reason = ?, resolved_at = ?"
                " WHERE run_id = ? AND nhs_number = ? AND outcome IS NULL",
                (outcome.value, reason, utcnow(), run_id, nhs_number),
            )
            return cursor.rowcount == 1

        return await self._write(fn)

    # -- inbound ---------------------------------------------------------------------------------------------

    async def find_attempt(
        self, *, message_ids: Sequence[str], conversation_id: str | None, query_event_ids: Sequence[str]
    ) -> records.AttemptRef | None:
        """Correlate by M (RefToMessageId, messageRef), then C, then an access entry's Q, in one read."""
        m_ids = [m.upper() for m in message_ids]
        q_ids = [q.upper() for q in query_event_ids]
        c_id = conversation_id.upper() if conversation_id else None
        if not (m_ids or q_ids or c_id):
            return None
        rows = await self._read(
            "SELECT message_id, run_id, nhs_number, conversation_id, query_event_id,"  # noqa: S608 (placeholders only)
            f" CASE WHEN message_id IN ({_placeholders(m_ids)}) THEN 0 WHEN conversation_id = ? THEN 1"
            " ELSE 2 END AS rank FROM attempts"
            f" WHERE message_id IN ({_placeholders(m_ids)}) OR conversation_id = ?"
            f" OR query_event_id IN ({_placeholders(q_ids)}) ORDER BY rank LIMIT 1",
            (*m_ids, c_id, *m_ids, c_id, *q_ids),
        )
        return records.AttemptRef(*rows[0][:5]) if rows else None

    async def store_inbound(
        self,
        record: records.InboundRecord,
        *,
        attempt: records.AttemptRef | None,
        disposition: Disposition,
        detail: str | None,
        resolution: records.Resolution | None,
    ) -> records.StoredInbound:
        """Store one inbound message and apply its resolution, in one transaction.

        The first business answer for a child wins (`resolved`); a later one is kept as `superseded`. A message
        id seen before is not stored or applied again: the result is `duplicate` with the first acknowledgement.
        """
        message_id = record.message_id.upper()

        def fn(conn: sqlite3.Connection) -> records.StoredInbound:
            seen = conn.execute("SELECT ack FROM inbound WHERE message_id = ?", (message_id,)).fetchone()
            if seen is not None:
                return records.StoredInbound(Disposition.DUPLICATE, bytes(seen[0]))
            final = disposition
            if attempt is not None and resolution is not None:
                cursor = conn.execute(
                    "UPDATE queries SET outcome = ?, reason = ?, result_json = ?, resolved_by = ?, resolved_at = ?"
                    " WHERE run_id = ? AND nhs_number = ? AND outcome IS NULL",
                    (
                        resolution.outcome.value,
                        resolution.reason,
                        resolution.result.to_json() if resolution.result is not None else None,
                        message_id,
                        utcnow(),
                        attempt.run_id,
                        attempt.nhs_number,
                    ),
                )
                final = Disposition.RESOLVED if cursor.rowcount == 1 else Disposition.SUPERSEDED
                conn.execute(
                    "UPDATE attempts SET status = ? WHERE message_id = ?",
                    (AttemptStatus.ANSWERED.value, attempt.message_id),
                )
            conn.execute(
                "INSERT INTO inbound (message_id, received_at, action, ref_to_message_id, conversation_id,"
                " from_party, attempt_message_id, run_id, disposition, detail, raw, ack, raw_size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    utcnow(),
                    record.action,
                    record.ref_to_message_id,
                    record.conversation_id,
                    record.from_party,
                    attempt.message_id if attempt else None,
                    attempt.run_id if attempt else None,
                    final.value,
                    detail,
                    record.raw,
                    record.ack,
                    len(record.raw) if record.raw_size is None else record.raw_size,
                ),
            )
            return records.StoredInbound(final, record.ack)

        return await self._write(fn)

    # -- retention -----------------------------------------------------------------------------------------

    async def purge_raw(self, older_than: datetime) -> int:
        """Drop the raw messages of runs started before `older_than` (and of unmatched messages received
        before it), and those runs' input rows; outcomes, attempts and audit rows stay. Writes one audit row
        with the counts; returns the number of messages."""
        cutoff = older_than.astimezone(UTC).isoformat(timespec="milliseconds")

        def fn(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE inbound SET raw = x'' WHERE length(raw) > 0 AND ("
                " run_id IN (SELECT run_id FROM runs WHERE started_at < ?)"
                " OR (run_id IS NULL AND received_at < ?))",
                (cutoff, cutoff),
            )
            messages = cursor.rowcount
            # Input rows hold names and dates of birth too; the audit rows keep why each child was queried.
            inputs = conn.execute(
                "UPDATE run_inputs SET frame = NULL WHERE frame IS NOT NULL"
                " AND run_id IN (SELECT run_id FROM runs WHERE started_at < ?)",
                (cutoff,),
            ).rowcount
            _audit(
                conn, None, "raw_purged", None, f"messages={messages} input_parts={inputs} before={cutoff}"
            )
            return messages

        return await self._write(fn)

    # -- reporting -------------------------------------------------------------------------------------------

    async def find_run(self, job_name: str, run_id: str | None = None) -> records.StoredRun | None:
        """The job's run whose id is or starts with `run_id` (at least 8 characters, as run folders show it),
        or with no `run_id` its latest complete run. None when there is no such run, or the prefix is shared."""
        columns = "run_id, job_name, reference_date, started_at, finished_at, status, summary_json"
        if run_id is None:
            rows = await self._read(
                f"SELECT {columns} FROM runs WHERE job_name = ? AND status = ?"  # noqa: S608 (fixed names)
                " ORDER BY finished_at DESC, started_at DESC LIMIT 1",
                (job_name, RunStatus.COMPLETE.value),
            )
        else:
            wanted = run_id.upper()
            rows = await self._read(
                f"SELECT {columns} FROM runs WHERE job_name = ?"  # noqa: S608 (fixed names)
                " AND (run_id = ? OR (length(?) >= 8 AND substr(run_id, 1, length(?)) = ?)) LIMIT 2",
                (job_name, wanted, wanted, wanted, wanted),
            )
        if len(rows) != 1:
            return None
        r = rows[0]
        return records.StoredRun(r[0], r[1], r[2], r[3], r[4], RunStatus(r[5]), r[6])

    async def audit_entries(
        self, since: str, before: str, nhs_number: str | None = None
    ) -> AsyncIterator[list[records.AuditEntry]]:
        """The queries sent from `since` up to (not including) `before` (UTC ISO times, as stored), in the order
        they were recorded, with their children's outcomes once known; in batches, so a long period needs little
        memory. Each batch is one whole read (`_read`): no statement stays open between batches."""
        where = "a.event = 'query_sent' AND a.at >= ? AND a.at < ? AND a.id > ?"
        if nhs_number is not None:
            where += " AND a.nhs_number = ?"
        sql = (
            "SELECT a.id, a.at, a.run_id, a.message_id, a.nhs_number, a.sender_asid, a.sender_ods_code,"  # noqa: S608 (fixed clauses)
            " a.responsible_person_name, a.responsible_person_role_code, a.responsible_person_role_name,"
            " a.source_file, a.source_row, a.clinic, a.appointment_date, a.input_rows, t.status, q.outcome,"
            " q.reason FROM audit a LEFT JOIN attempts t ON t.message_id = a.message_id"
            " LEFT JOIN queries q ON q.run_id = a.run_id AND q.nhs_number = a.nhs_number"
            f" WHERE {where} ORDER BY a.id LIMIT ?"
        )
        after = 0
        while True:
            params = (since, before, after, *((nhs_number,) if nhs_number is not None else ()), AUDIT_BATCH)
            rows = await self._read(sql, params)
            if not rows:
                return
            after = rows[-1][0]
            yield [records.AuditEntry(*row[1:]) for row in rows]

    async def audit_event(self, event: str, detail: str) -> None:
        """One audit row for something done outside a run (an export); `detail` holds counts, never patient
        data."""

        def fn(conn: sqlite3.Connection) -> None:
            _audit(conn, None, event, None, detail)

        await self._write(fn)

    async def previous_complete_run(self, run_id: str) -> records.Run | None:
        """The complete run of the same job that finished last before `run_id` did (any time, while `run_id` is
        not complete): what the safeguarding team had before this run's reports. None on a job's first run."""
        rows = await self._read(
            "SELECT p.run_id, p.job_name, p.reference_date, p.started_at FROM runs r"
            " JOIN runs p ON p.job_name = r.job_name AND p.run_id != r.run_id"
            # Times are to the millisecond: runs that finish within one are ordered as they began (rowid).
            " WHERE r.run_id = ? AND p.status = ?"
            " AND (r.status != ? OR (p.finished_at, p.rowid) < (r.finished_at, r.rowid))"
            " ORDER BY p.finished_at DESC, p.rowid DESC LIMIT 1",
            (run_id, RunStatus.COMPLETE.value, RunStatus.COMPLETE.value),
        )
        return records.Run(rows[0][0], rows[0][1], rows[0][2], rows[0][3], resumed=False) if rows else None

    async def outcome_pages(
        self, run_id: str, nhs_numbers: Sequence[str] | None = None
    ) -> AsyncIterator[pl.DataFrame]:
        """`outcome_frame` a page of `_PAGE_ROWS` children at a time, by NHS number: for work on a run of any
        size a page at a time (the changes since the previous run)."""
        # One JSON parameter for any number of children (SQLite caps bound parameters, not JSON length); the
        # children asked for drive the lookup, so a slice costs its own rows, not a scan of the run.
        wanted = None if nhs_numbers is None else json.dumps(list(nhs_numbers))
        after = ""
        while True:
            params: tuple[object, ...]
            if wanted is None:
                sql, params = _OUTCOMES, (AttemptStatus.NOT_SENT.value, run_id, after, _PAGE_ROWS)
            else:
                sql, params = _OUTCOMES_OF, (AttemptStatus.NOT_SENT.value, wanted, run_id, after, _PAGE_ROWS)
            rows = await self._read(sql, params)
            if not rows:
                return
            yield pl.DataFrame(rows, schema=records.OUTCOME_FRAME_SCHEMA, orient="row")
            after = rows[-1][0]
            if len(rows) < _PAGE_ROWS:
                return

    async def outcome_frame(self, run_id: str, nhs_numbers: Sequence[str] | None = None) -> pl.DataFrame:
        """Every child of the run with its outcome, as columns (`OUTCOME_FRAME_SCHEMA`), ordered by NHS number;
        with `nhs_numbers`, only those children (the reports read a slice of input rows' answers at a time).

        Read in pages and built column by column, so a run of any size costs no Python object per child;
        `result_json` is the flagged children's `FlagResult` as stored.
        """
        pages = [page async for page in self.outcome_pages(run_id, nhs_numbers)]
        if not pages:
            return pl.DataFrame(schema=records.OUTCOME_FRAME_SCHEMA)
        return pl.concat(pages, rechunk=False)

    async def outcomes(self, run_id: str) -> list[records.ChildOutcome]:
        """The same as `outcome_frame`, as typed records (for a few children; a whole run is a frame)."""
        return records.outcomes_of_frame(await self.outcome_frame(run_id))

    async def run_counts(self, run_id: str) -> records.RunCounts:
        rows = await self._read(
            "SELECT 'attempt', status, COUNT(*) FROM attempts WHERE run_id = ? GROUP BY status"
            " UNION ALL SELECT 'inbound', disposition, COUNT(*) FROM inbound WHERE run_id = ? GROUP BY disposition",
            (run_id, run_id),
        )
        attempts = sum(n for kind, status, n in rows if kind == "attempt" and AttemptStatus(status).counts)
        unsent = sum(n for kind, status, n in rows if kind == "attempt" and not AttemptStatus(status).counts)
        inbound = {Disposition(d): n for kind, d, n in rows if kind == "inbound"}
        return records.RunCounts(attempts=attempts, send_failures=unsent, inbound=inbound)


# A run's children with their outcomes (`outcome_frame`), a page at a time from `nhs_number > ?`; `_OUTCOMES_OF`
# takes only the children of a JSON array.
_OUTCOME_COLUMNS = (
    "SELECT q.nhs_number, q.outcome, q.reason,"
    " (SELECT COUNT(*) FROM attempts a WHERE a.run_id = q.run_id AND a.nhs_number = q.nhs_number"
    "  AND a.status != ?),"
    " i.attempt_message_id, a.sent_at, q.result_json"
)
_OUTCOME_JOINS = (
    " LEFT JOIN inbound i ON i.message_id = q.resolved_by"
    " LEFT JOIN attempts a ON a.message_id = i.attempt_message_id"
)
_OUTCOMES = (
    _OUTCOME_COLUMNS
    + " FROM queries q"
    + _OUTCOME_JOINS
    + " WHERE q.run_id = ? AND q.nhs_number > ? ORDER BY q.nhs_number LIMIT ?"
)
_OUTCOMES_OF = (
    _OUTCOME_COLUMNS
    + " FROM json_each(?) j JOIN queries q ON q.nhs_number = j.value"
    + _OUTCOME_JOINS
    + " WHERE q.run_id = ? AND q.nhs_number > ? ORDER BY q.nhs_number LIMIT ?"
)

_ADD_ROWS = 5_000
_QueryRow = tuple[str, str, str | None, int | None, str | None, str | None, int | None]


def _query_row(run_id: str, child: str | records.QueryReason) -> _QueryRow:
    if isinstance(child, str):
        return (run_id, child, None, None, None, None, None)
    return (
        run_id,
        child.nhs_number,
        child.source_file,
        child.source_row,
        child.clinic,
        child.appointment_date,
        child.input_rows,
    )


def _audit(
    conn: sqlite3.Connection,
    run_id: str | None,
    event: str,
    message_id: str | None = None,
    detail: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO audit (at, run_id, event, message_id, detail) VALUES (?, ?, ?, ?, ?)",
        (utcnow(), run_id, event, message_id, detail),
    )
