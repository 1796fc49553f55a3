"""One writer connection, one task, group commits: a write is durable when its await returns.

Writes that queue up while a commit is under way share the next one, and each group costs one hop to a worker
thread (not one per statement). Each write runs in its own savepoint, so one failing write does not undo its
neighbours; a failed COMMIT fails every write of the group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")

Write = Callable[[sqlite3.Connection], T]

MAX_GROUP = 500


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
        async with self._receive:
            async for first in self._receive:
                group = [first]
                while len(group) < MAX_GROUP:
                    try:
                        group.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    await anyio.to_thread.run_sync(apply_group, self._conn, group)
                finally:
                    self.groups += 1
                    for op in group:
                        op.done.set()

    def close(self) -> None:
        self._send.close()

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
