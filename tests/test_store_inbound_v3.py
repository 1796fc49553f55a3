"""Schema version 3: inbound messages may be `rejected` and record the size they arrived with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batch.ids import new_id
from batch.states import Disposition
from batch.store import SCHEMA_VERSION, InboundRecord, Store
from batch.store.schema import MIGRATIONS

RUN = "11111111-1111-4111-8111-111111111111"


def _file_at(path: Path, version: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for step in range(version):
        MIGRATIONS[step](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
    return conn


async def test_version_2_inbound_rows_keep_everything_and_gain_their_size(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = _file_at(path, 2)
    rows = [
        ("A" * 36, "resolved", b"<whole reply/>", RUN),
        ("B" * 36, "orphan", b"<an orphan, stored whole in version 2/>", None),
    ]
    conn.executemany(
        "INSERT INTO inbound (message_id, received_at, action, ref_to_message_id, conversation_id, from_party,"
        " attempt_message_id, run_id, disposition, detail, raw, ack)"
        " VALUES (?, '2026-11-30T01:00:00.000+00:00', 'QUQI_IN010000UK14', NULL, 'C', 'SPINE', NULL, ?, ?, NULL, ?,"
        " x'00')",
        [(message_id, run, disposition, raw) for message_id, disposition, raw, run in rows],
    )
    conn.close()

    async with Store.open(path) as store:
        stored = await store.store_inbound(
            InboundRecord(
                new_id(), "QUQI_IN010000UK14", None, "C", "NOT-SPINE", b"<first bytes", b"err", 5000
            ),
            attempt=None,
            disposition=Disposition.REJECTED,
            detail="ValueNotRecognized: not Spine",
            resolution=None,
        )
        assert stored.disposition is Disposition.REJECTED
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        got = check.execute(
            "SELECT message_id, disposition, raw, raw_size, run_id FROM inbound ORDER BY received_at, message_id"
        ).fetchall()
        indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert got[:2] == [(m, d, raw, len(raw), run) for m, d, raw, run in rows]
    assert got[2][1:4] == ("rejected", b"<first bytes", 5000)
    assert "inbound_run" in indexes


async def test_a_record_without_a_size_is_stored_with_the_size_of_its_body(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        await store.store_inbound(
            InboundRecord(new_id(), "QUQI_IN010000UK14", None, "C", "SPINE", b"12345", b"ack"),
            attempt=None,
            disposition=Disposition.ORPHAN,
            detail=None,
            resolution=None,
        )
    with sqlite3.connect(tmp_path / "state.sqlite") as check:
        assert check.execute("SELECT raw_size FROM inbound").fetchall() == [(5,)]
