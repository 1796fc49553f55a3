"""The run's SQLite state: one writer connection, group commits, WAL.

Every write goes through one writer task so a transaction never interleaves with another task's statements,
and writes that queue up while a commit is in progress share the next commit (group commit): an attempt row is
durable before its POST without paying one fsync per row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL,
    reference_date TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete'))
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job_name, input_fingerprint, status);
-- One row per distinct child per run: the unit that gets exactly one outcome.
CREATE TABLE IF NOT EXISTS queries (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    nhs_number TEXT NOT NULL,
    outcome TEXT CHECK (outcome IN ('flagged', 'not_flagged', 'error', 'no_reply')),
    reason TEXT,
    result_json TEXT,
    resolved_by TEXT,
    resolved_at TEXT,
    PRIMARY KEY (run_id, nhs_number)
);
-- One row per attempt (new M, C, Q), written before the POST.
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    query_event_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    nhs_number TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('created', 'accepted', 'failed', 'unanswered', 'answered', 'timed_out')),
    detail TEXT
);
CREATE INDEX IF NOT EXISTS attempts_query ON attempts (run_id, nhs_number);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_conversation ON attempts (conversation_id);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_query_event ON attempts (query_event_id);
-- Every inbound message, stored before it is acknowledged; message_id is the duplicate-elimination key.
CREATE TABLE IF NOT EXISTS inbound (
    message_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    action TEXT,
    ref_to_message_id TEXT,
    conversation_id TEXT,
    from_party TEXT,
    attempt_message_id TEXT,
    run_id TEXT,
    disposition TEXT NOT NULL,
    detail TEXT,
    raw BLOB NOT NULL,
    ack BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS inbound_run ON inbound (run_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    run_id TEXT,
    event TEXT NOT NULL,
    message_id TEXT,
    detail TEXT
);
"""

OUTCOME_FINAL = ("flagged", "not_flagged", "error", "no_reply")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StoreError(Exception):
    """The state database could not be opened or written."""


@dataclass(frozen=True)
class Run:
    run_id: str
    job_name: str
    reference_date: str
    started_at: str
    resumed: bool


@dataclass(frozen=True)
class QueryState:
    """What a worker needs to continue a child: attempts made so far and when the last was sent."""

    nhs_number: str
    attempts: int
    last_sent_at: str | None
    last_status: str | None


@dataclass(frozen=True)
class AttemptRef:
    message_id: str
    run_id: str
    nhs_number: str
    conversation_id: str
    query_event_id: str


@dataclass(frozen=True)
class InboundRecord:
    message_id: str
    action: str | None
    ref_to_message_id: str | None
    conversation_id: str | None
    from_party: str | None
    raw: bytes
    ack: bytes


@dataclass(frozen=True)
class Resolution:
    """The business answer for a child, decided from a reply."""

    outcome: str
    reason: str | None
    result: dict[str, Any] | None


@dataclass
class _Op:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    done: anyio.Event
    result: Any = None
    error: BaseException | None = None


class Store:
    """Async facade over the state file; use `Store.open` as an async context manager."""

    def __init__(self, conn: aiosqlite.Connection, send: MemoryObjectSendStream[_Op]) -> None:
        self._conn = conn
        self._send = send

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Store]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open state database ({exc})") from None
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode keeps every commit atomic and consistent; only the last commits before a
            # power cut may be lost, which the reply timeout and re-query already recover.
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.executescript(_SCHEMA)
            await conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StoreError(f"{path}: not a usable state database ({exc})") from None
        send, receive = anyio.create_memory_object_stream[_Op](max_buffer_size=1024)
        store = cls(conn, send)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store._writer, receive)
                try:
                    yield store
                finally:
                    send.close()
        finally:
            await conn.close()

    async def _writer(self, receive: MemoryObjectReceiveStream[_Op]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < 500:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Op]) -> None:
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                # A savepoint per operation: one failing write does not undo its neighbours in the group.
                await conn.execute("SAVEPOINT op")
                try:
                    op.result = await op.fn(conn)
                except sqlite3.Error as exc:
                    await conn.execute("ROLLBACK TO op")
                    op.error = exc
                await conn.execute("RELEASE op")
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                await conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for op in batch:
                op.error = op.error or exc
        finally:
            for op in batch:
                op.done.set()

    async def _submit(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        op = _Op(fn=fn, done=anyio.Event())
        await self._send.send(op)
        await op.done.wait()
        if op.error is not None:
            raise StoreError(f"state database write failed: {op.error}") from op.error
        return op.result  # type: ignore[no-any-return]

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async def fn(conn: aiosqlite.Connection) -> list[Any]:
            async with conn.execute(sql, params) as cur:
                return list(await cur.fetchall())

        return await self._submit(fn)

    # -- runs ---------------------------------------------------------------------------------------------

    async def begin_or_resume_run(
        self, *, run_id: str, job_name: str, input_fingerprint: str, reference_date: str
    ) -> Run:
        """Continue the unfinished run of this job and input, or start a new one."""

        async def fn(conn: aiosqlite.Connection) -> Run:
            async with conn.execute(
                "SELECT run_id, reference_date, started_at FROM runs WHERE job_name = ? AND input_fingerprint = ?"
                " AND status = 'running' ORDER BY started_at DESC LIMIT 1",
                (job_name, input_fingerprint),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                await _audit(conn, row[0], "run_resumed", None, None)
                return Run(row[0], job_name, row[1], row[2], resumed=True)
            started = utcnow()
            await conn.execute(
                "INSERT INTO runs (run_id, job_name, input_fingerprint, reference_date, started_at, status)"
                " VALUES (?, ?, ?, ?, ?, 'running')",
                (run_id, job_name, input_fingerprint, reference_date, started),
            )
            await _audit(conn, run_id, "run_started", None, None)
            return Run(run_id, job_name, reference_date, started, resumed=False)

        return await self._submit(fn)

    async def complete_run(self, run_id: str) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE runs SET status = 'complete', finished_at = ? WHERE run_id = ?", (utcnow(), run_id)
            )
            await _audit(conn, run_id, "run_complete", None, None)

        await self._submit(fn)

    # -- queries and attempts ------------------------------------------------------------------------------

    async def add_children(self, run_id: str, nhs_numbers: Sequence[str]) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT OR IGNORE INTO queries (run_id, nhs_number) VALUES (?, ?)",
                [(run_id, n) for n in nhs_numbers],
            )

        await self._submit(fn)

    async def open_children(self, run_id: str) -> list[QueryState]:
        """Children of the run without an outcome, with their attempt history (for resume)."""
        rows = await self._read(
            "SELECT q.nhs_number, COUNT(a.message_id), MAX(COALESCE(a.sent_at, a.created_at)),"
            " (SELECT status FROM attempts a2 WHERE a2.run_id = q.run_id AND a2.nhs_number = q.nhs_number"
            "  ORDER BY a2.attempt DESC LIMIT 1)"
            " FROM queries q LEFT JOIN attempts a ON a.run_id = q.run_id AND a.nhs_number = q.nhs_number"
            " WHERE q.run_id = ? AND q.outcome IS NULL GROUP BY q.nhs_number ORDER BY q.nhs_number",
            (run_id,),
        )
        return [QueryState(r[0], r[1], r[2], r[3]) for r in rows]

    async def record_attempt(self, ref: AttemptRef, attempt: int) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO attempts (message_id, conversation_id, query_event_id, run_id, nhs_number, attempt,"
                " created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'created')",
                (
                    ref.message_id,
                    ref.conversation_id,
                    ref.query_event_id,
                    ref.run_id,
                    ref.nhs_number,
                    attempt,
                    utcnow(),
                ),
            )

        await self._submit(fn)

    async def mark_attempt(
        self, message_id: str, run_id: str, status: str, detail: str | None = None
    ) -> None:
        """Record what the POST achieved; `accepted` also writes the audit row for the query sent."""

        async def fn(conn: aiosqlite.Connection) -> None:
            now = utcnow()
            if status in ("accepted", "unanswered"):
                await conn.execute(
                    "UPDATE attempts SET status = CASE WHEN status = 'answered' THEN status ELSE ? END,"
                    " sent_at = ?, detail = ? WHERE message_id = ?",
                    (status, now, detail, message_id),
                )
                await _audit(conn, run_id, "query_sent", message_id, status)
            else:
                await conn.execute(
                    "UPDATE attempts SET status = CASE WHEN status = 'answered' THEN status ELSE ? END,"
                    " detail = COALESCE(?, detail) WHERE message_id = ?",
                    (status, detail, message_id),
                )
                if status == "failed":
                    await _audit(conn, run_id, "send_failed", message_id, detail)

        await self._submit(fn)

    async def finish_child(self, run_id: str, nhs_number: str, outcome: str, reason: str | None) -> bool:
        """Give a child a final outcome decided by us (error, no_reply) unless a reply already did."""

        async def fn(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE queries SET outcome = ?, reason = ?, resolved_at = ?"
                " WHERE run_id = ? AND nhs_number = ? AND outcome IS NULL",
                (outcome, reason, utcnow(), run_id, nhs_number),
            )
            return cur.rowcount == 1

        return await self._submit(fn)

    # -- inbound ---------------------------------------------------------------------------------------------

    async def stored_ack(self, message_id: str) -> bytes | None:
        rows = await self._read("SELECT ack FROM inbound WHERE message_id = ?", (message_id.upper(),))
        return bytes(rows[0][0]) if rows else None

    async def find_attempt(
        self, *, message_ids: Sequence[str], conversation_id: str | None, query_event_ids: Sequence[str]
    ) -> AttemptRef | None:
        """Correlate by M (RefToMessageId / messageRef), then C, then an access entry's Q (messages §6)."""
        cols = "message_id, run_id, nhs_number, conversation_id, query_event_id"
        for mid in message_ids:
            rows = await self._read(f"SELECT {cols} FROM attempts WHERE message_id = ?", (mid.upper(),))  # noqa: S608
            if rows:
                return AttemptRef(*rows[0])
        if conversation_id:
            rows = await self._read(
                f"SELECT {cols} FROM attempts WHERE conversation_id = ?",  # noqa: S608
                (conversation_id.upper(),),
            )
            if rows:
                return AttemptRef(*rows[0])
        for qid in query_event_ids:
            rows = await self._read(f"SELECT {cols} FROM attempts WHERE query_event_id = ?", (qid.upper(),))  # noqa: S608
            if rows:
                return AttemptRef(*rows[0])
        return None

    async def store_inbound(
        self,
        record: InboundRecord,
        *,
        attempt: AttemptRef | None,
        disposition: str,
        detail: str | None,
        resolution: Resolution | None,
    ) -> tuple[bool, str]:
        """Store one inbound message and apply its resolution, in one transaction.

        Returns (newly stored, final disposition). The first business answer for a child wins; a later one is
        kept as `superseded`. A message id seen before is not applied again.
        """

        async def fn(conn: aiosqlite.Connection) -> tuple[bool, str]:
            final = disposition
            run_id = attempt.run_id if attempt else None
            if attempt is not None and resolution is not None:
                cur = await conn.execute(
                    "UPDATE queries SET outcome = ?, reason = ?, result_json = ?, resolved_by = ?, resolved_at = ?"
                    " WHERE run_id = ? AND nhs_number = ? AND outcome IS NULL",
                    (
                        resolution.outcome,
                        resolution.reason,
                        json.dumps(resolution.result) if resolution.result is not None else None,
                        record.message_id.upper(),
                        utcnow(),
                        attempt.run_id,
                        attempt.nhs_number,
                    ),
                )
                final = "resolved" if cur.rowcount == 1 else "superseded"
                await conn.execute(
                    "UPDATE attempts SET status = 'answered' WHERE message_id = ?", (attempt.message_id,)
                )
            try:
                await conn.execute(
                    "INSERT INTO inbound (message_id, received_at, action, ref_to_message_id, conversation_id,"
                    " from_party, attempt_message_id, run_id, disposition, detail, raw, ack)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.message_id.upper(),
                        utcnow(),
                        record.action,
                        record.ref_to_message_id,
                        record.conversation_id,
                        record.from_party,
                        attempt.message_id if attempt else None,
                        run_id,
                        final,
                        detail,
                        record.raw,
                        record.ack,
                    ),
                )
            except sqlite3.IntegrityError:
                # A duplicate that raced the stored-ack check: undo the resolution above (savepoint).
                raise _Duplicate from None
            return True, final

        try:
            return await self._submit(fn)
        except StoreError as exc:
            if isinstance(exc.__cause__, _Duplicate):
                return False, "duplicate"
            raise

    # -- reporting -------------------------------------------------------------------------------------------

    async def outcomes(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._read(
            "SELECT q.nhs_number, q.outcome, q.reason, q.result_json, q.resolved_by,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.run_id = q.run_id AND a.nhs_number = q.nhs_number),"
            " (SELECT a.sent_at FROM attempts a WHERE a.message_id = ("
            "   SELECT i.attempt_message_id FROM inbound i WHERE i.message_id = q.resolved_by)),"
            " (SELECT i.attempt_message_id FROM inbound i WHERE i.message_id = q.resolved_by)"
            " FROM queries q WHERE q.run_id = ? ORDER BY q.nhs_number",
            (run_id,),
        )
        return [
            {
                "nhs_number": r[0],
                "outcome": r[1],
                "reason": r[2],
                "result": json.loads(r[3]) if r[3] else None,
                "reply_message_id": r[4],
                "attempts": r[5],
                "queried_at": r[6],
                "message_id": r[7],
            }
            for r in rows
        ]

    async def run_counts(self, run_id: str) -> dict[str, int]:
        rows = await self._read(
            "SELECT 'attempts', COUNT(*) FROM attempts WHERE run_id = ?"
            " UNION ALL SELECT 'queries_sent', COUNT(*) FROM audit WHERE run_id = ? AND event = 'query_sent'"
            " UNION ALL SELECT 'send_failures', COUNT(*) FROM audit WHERE run_id = ? AND event = 'send_failed'"
            " UNION ALL SELECT 'inbound_' || disposition, COUNT(*) FROM inbound WHERE run_id = ?"
            "   GROUP BY disposition",
            (run_id, run_id, run_id, run_id),
        )
        return {r[0]: r[1] for r in rows}


class _Duplicate(sqlite3.Error):
    pass


async def _audit(
    conn: aiosqlite.Connection, run_id: str | None, event: str, message_id: str | None, detail: str | None
) -> None:
    await conn.execute(
        "INSERT INTO audit (at, run_id, event, message_id, detail) VALUES (?, ?, ?, ?, ?)",
        (utcnow(), run_id, event, message_id, detail),
    )
