"""One writer connection, one task, group commits: a write is durable when its await returns.

Writes that queue up while a commit is under way share the next one, and each group costs one hop to the
writer's own thread (not one per statement; a plain executor hop, which costs a fraction of anyio's
`to_thread.run_sync` with its capacity limiter and cancel scopes). Each write runs in its own savepoint, so one failing write does not undo its
neighbours; a failed COMMIT fails every write of the group.

A deferred write (`defer`) is one nobody waits for: it rides in the next group that someone does wait for, or
commits on its own after DEFER_S. What it records must be safe to lose in a crash (a restart reads the older
state correctly), so it never costs a commit of its own on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")

log = logging.getLogger(__name__)

Write = Callable[[sqlite3.Connection], T]

MAX_GROUP = 500
DEFER_S = 1.0


class WriteFailed(Exception):
    """A write could not be committed; `cause` is SQLite's error."""

    def __init__(self, cause: sqlite3.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(eq=False)
class _Op(Generic[T]):
    fn: Write[T]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: T | None = None
    error: sqlite3.Error | None = None
    deferred: bool = False


def apply_group(conn: sqlite3.Connection, group: list[_Op[Any]]) -> None:
    """Run a group of writes in one transaction (in the worker thread); sets each op's result or error."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op in group:
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.fn(conn)
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO op")
                op.error = exc
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        # Nothing of the group was committed, including the writes that ran without error.
        for op in group:
            op.error = op.error or exc


class GroupWriter:
    """Queue writes for the one writer task; `write` returns once the write is committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        send, receive = anyio.create_memory_object_stream[_Op[Any]](max_buffer_size=MAX_GROUP * 2)
        self._send: MemoryObjectSendStream[_Op[Any]] = send
        self._receive: MemoryObjectReceiveStream[_Op[Any]] = receive
        self.groups = 0

    async def run(self) -> None:
        """The writer task: runs until `close` is called and the queue is drained."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")
        try:
            await self._drain(loop, executor)
        finally:
            executor.shutdown(wait=False)

    async def _drain(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        async with self._receive:
            async for first in self._receive:
                group = [first]
                self._take_waiting(group)
                while all(op.deferred for op in group) and len(group) < MAX_GROUP:
                    # Nobody waits on these yet: give a waited-for write DEFER_S to come and share the commit.
                    with anyio.move_on_after(DEFER_S):
                        try:
                            group.append(await self._receive.receive())
                        except anyio.EndOfStream:
                            break
                        self._take_waiting(group)
                        continue
                    break
                try:
                    # Shielded: a group under way finishes (it cannot be stopped), so its writes learn the truth.
                    with anyio.CancelScope(shield=True):
                        await loop.run_in_executor(executor, apply_group, self._conn, group)
                finally:
                    self.groups += 1
                    for op in group:
                        op.done.set()
                        if op.deferred and op.error is not None:
                            log.warning("a deferred state write failed: %s", op.error)

    def _take_waiting(self, group: list[_Op[Any]]) -> None:
        while len(group) < MAX_GROUP:
            try:
                group.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return

    def close(self) -> None:
        self._send.close()

    async def defer(self, fn: Write[None]) -> None:
        """Queue `fn(conn)` for a later group commit without waiting for it (waits only when the queue is full).

        Its failure is logged, not raised: use it only for what a crash may lose.
        """
        await self._send.send(_Op(fn, deferred=True))

    async def write(self, fn: Write[T]) -> T:
        """Run `fn(conn)` in the next group commit and return its result.

        Raises WriteFailed when the write or its commit failed (the write then left nothing behind).
        """
        op: _Op[T] = _Op(fn)
        await self._send.send(op)
        await op.done.wait()
        if op.error is not None:
            raise WriteFailed(op.error)
        return cast(T, op.result)  # apply_group set it, as it set no error
