"""Deferred writes: they ride in the next commit somebody waits for, and are never lost at close."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import pytest

from batch.store.writer import GroupWriter


def _conn(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "w.sqlite", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    return conn


def _insert(key: int) -> object:
    return lambda c: c.execute("INSERT INTO t VALUES (?)", (key,))


async def test_a_deferred_write_shares_the_next_waited_for_commit(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    async with anyio.create_task_group() as tg:
        await writer.defer(_insert(1))
        await writer.defer(_insert(2))
        tg.start_soon(writer.run)
        assert await writer.write(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 2
        writer.close()
    assert writer.groups == 1  # three writes, one commit
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]


async def test_a_deferred_write_keeps_its_place_in_the_order(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await writer.defer(_insert(1))
        # Runs after the deferred insert, in the same group: it sees the row.
        assert await writer.write(lambda c: c.execute("DELETE FROM t WHERE k = 1").rowcount) == 1
        writer.close()
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


async def test_deferred_writes_are_committed_when_the_writer_closes(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await writer.defer(_insert(7))
        writer.close()
    assert conn.execute("SELECT k FROM t").fetchall() == [(7,)]


async def test_a_failed_deferred_write_is_logged_and_spares_its_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    caplog.set_level(logging.WARNING, logger="batch.store.writer")
    async with anyio.create_task_group() as tg:
        await writer.defer(_insert(1))
        await writer.defer(_insert(1))  # same key: this one fails
        tg.start_soon(writer.run)
        assert await writer.write(lambda c: c.execute("INSERT INTO t VALUES (2)").rowcount) == 1
        writer.close()
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]
    assert [r.getMessage() for r in caplog.records] == [
        "a deferred state write failed: UNIQUE constraint failed: t.k"
    ]


async def test_a_lone_deferred_write_commits_after_defer_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batch.store.writer.DEFER_S", 0.0)
    conn = _conn(tmp_path)
    writer = GroupWriter(conn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await writer.defer(_insert(3))
        with anyio.fail_after(10):
            while writer.groups == 0:  # committed without any other write or the close
                await anyio.sleep(0)
        assert conn.execute("SELECT k FROM t").fetchall() == [(3,)]
        writer.close()
