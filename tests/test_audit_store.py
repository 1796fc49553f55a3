"""The audit trail, a run's kept inputs and summary, and the read-only state: real SQLite files."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from batch.audit import AuditArgumentError, AuditPeriod, parse_day, parse_nhs_number, read_entries
from batch.files import UnsafePathError
from batch.ids import new_id
from batch.job import keep_run_inputs
from batch.run_inputs import decode
from batch.states import AttemptStatus, Disposition, Outcome, RunStatus
from batch.store import (
    AttemptRef,
    AuditEntry,
    InboundRecord,
    QueryReason,
    Resolution,
    Run,
    SenderIdentity,
    Store,
    StoredRun,
    StoreError,
    StoreOpenError,
)
from batch.store.schema import MIGRATIONS

NHS_A = "9991234012"
NHS_B = "9991234020"
SENDER = SenderIdentity("999000000101", "SIM01", "Dr Alex Example", "R0260", "General Medical Practitioner")
REASON_A = QueryReason(NHS_A, "/lists/eyes.csv", 3, "Eyes", "2026-12-05", 2)
SENT_1 = "2026-12-01T09:00:00.000+00:00"
SENT_2 = "2026-12-02T09:00:00.000+00:00"


def _entry(ref: AttemptRef, sent_at: str, **changes: object) -> AuditEntry:
    entry = AuditEntry(
        sent_at=sent_at,
        run_id=ref.run_id,
        message_id=ref.message_id,
        nhs_number=ref.nhs_number,
        sender_asid="999000000101",
        sender_ods_code="SIM01",
        responsible_person_name="Dr Alex Example",
        responsible_person_role_code="R0260",
        responsible_person_role_name="General Medical Practitioner",
        source_file="/lists/eyes.csv",
        source_row=3,
        clinic="Eyes",
        appointment_date="2026-12-05",
        input_rows=2,
        delivery="sending",
        outcome=None,
        reason=None,
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


async def _run(store: Store, fingerprint: str = "fp") -> Run:
    run = await store.begin_or_resume_run(
        run_id=new_id(),
        job_name="job",
        input_fingerprint=fingerprint,
        reference_date="2026-12-01",
        sender=SENDER,
    )
    await store.add_children(run.run_id, [REASON_A, NHS_B])
    return run


async def _entries(store: Store, since: str, before: str, nhs: str | None = None) -> list[AuditEntry]:
    return [entry async for batch in store.audit_entries(since, before, nhs) for entry in batch]


async def test_each_query_sent_has_one_complete_audit_row_and_its_outcome_once_known(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await _run(store)
        first = AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id())
        second = AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id())
        other = AttemptRef(new_id(), run.run_id, NHS_B, new_id(), new_id())
        await store.record_attempt(first, 1, SENT_1)
        await store.record_send_result(first, AttemptStatus.NOT_SENT, "connect_failed")
        await store.record_attempt(second, 2, SENT_2)
        await store.record_attempt(other, 1, SENT_2)
        await store.store_inbound(
            InboundRecord(new_id(), "QUQI_IN010000UK14", second.message_id, None, "SPINE", b"r", b"a"),
            attempt=second,
            disposition=Disposition.RESOLVED,
            detail=None,
            resolution=Resolution(Outcome.NOT_FLAGGED),
        )
        entries = await _entries(store, "2026-12-01", "2026-12-03")
        one_child = await _entries(store, "2026-12-01", "2026-12-03", NHS_A)
        first_day = await _entries(store, "2026-12-01", SENT_2)

    answered = {"outcome": "not_flagged", "reason": None}
    assert entries == [
        _entry(first, SENT_1, delivery="not_sent", **answered),
        _entry(second, SENT_2, delivery="answered", **answered),
        # A child added without a reason (by an earlier version) still gets its row, with what is known.
        _entry(
            other,
            SENT_2,
            source_file=None,
            source_row=None,
            clinic=None,
            appointment_date=None,
            input_rows=None,
        ),
    ]
    assert one_child == entries[:2]
    assert first_day == entries[:1]


async def test_a_long_export_is_read_in_whole_batches_in_the_order_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batch.store.state_file.AUDIT_BATCH", 2)
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await _run(store)
        refs = [AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id()) for _ in range(5)]
        for number, ref in enumerate(refs, start=1):
            await store.record_attempt(ref, number, SENT_1)
        batches = [batch async for batch in store.audit_entries("2026-12-01", "2026-12-02", NHS_A)]
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert [entry for batch in batches for entry in batch] == [_entry(ref, SENT_1) for ref in refs]


async def test_the_audit_table_refuses_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run = await _run(store)
        await store.record_attempt(AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id()), 1, SENT_1)
    conn = sqlite3.connect(path, isolation_level=None)
    before = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        conn.execute("UPDATE audit SET nhs_number = '9990000018' WHERE event = 'query_sent'")
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        conn.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        conn.execute("INSERT OR REPLACE INTO audit (id, at, event) SELECT id, at, 'changed' FROM audit")
    assert conn.execute("SELECT * FROM audit ORDER BY id").fetchall() == before
    assert [row[3] for row in before] == ["run_started", "query_sent"]


async def test_a_resumed_run_takes_its_new_processes_sender(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await _run(store)
        await store.end_run(run.run_id, RunStatus.FAILED)
        successor = replace(SENDER, responsible_person_name="Dr Sam Example")
        resumed = await store.begin_or_resume_run(
            run_id=new_id(),
            job_name="job",
            input_fingerprint="fp",
            reference_date="2026-12-09",
            sender=successor,
        )
        ref = AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id())
        await store.record_attempt(ref, 1, SENT_1)
        entries = await _entries(store, "2026-12-01", "2026-12-02")
    assert resumed == replace(run, resumed=True)
    assert entries == [_entry(ref, SENT_1, responsible_person_name="Dr Sam Example")]


def test_an_audit_period_is_whole_london_days() -> None:
    # Winter: London is UTC; summer: UTC + 1, so the day starts at 23:00 UTC the day before.
    assert AuditPeriod(date(2026, 12, 1), date(2026, 12, 1)).utc_bounds() == (
        "2026-12-01T00:00:00.000+00:00",
        "2026-12-02T00:00:00.000+00:00",
    )
    assert AuditPeriod(date(2026, 7, 1), date(2026, 7, 31)).utc_bounds() == (
        "2026-06-30T23:00:00.000+00:00",
        "2026-07-31T23:00:00.000+00:00",
    )
    with pytest.raises(AuditArgumentError, match=r"^--since 2026-12-02 is after --until 2026-12-01$"):
        AuditPeriod(date(2026, 12, 2), date(2026, 12, 1))


@pytest.mark.parametrize("text", ["2026-13-01", "1/12/2026", "20261201", "2026-W48-1", "", "2026-02-30"])
def test_a_day_must_be_a_real_iso_date(text: str) -> None:
    with pytest.raises(AuditArgumentError, match=rf"^--since: '{text}' is not a date \(YYYY-MM-DD\)$"):
        parse_day(text, "--since")


def test_an_nhs_number_is_checked_and_never_repeated() -> None:
    assert parse_nhs_number("999 123 4012", "simulated") == NHS_A
    for bad, reason in (("9991234013", "bad_check_digit"), ("99912340", "not_10_digits"), ("", "empty")):
        with pytest.raises(AuditArgumentError, match=rf"^--nhs-number: not a valid NHS number \({reason}\)$"):
            parse_nhs_number(bad, "simulated")
    with pytest.raises(AuditArgumentError, match=r"test_number_in_live") as caught:
        parse_nhs_number(NHS_A, "live")
    assert NHS_A not in str(caught.value)


async def test_an_export_reads_every_field_in_order(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await _run(store)
        ref = AttemptRef(new_id(), run.run_id, NHS_A, new_id(), new_id())
        await store.record_attempt(ref, 1, SENT_1)
        frame = await read_entries(store, AuditPeriod(date(2026, 12, 1), date(2026, 12, 1)), None)
        empty = await read_entries(store, AuditPeriod(date(2026, 11, 1), date(2026, 11, 30)), NHS_A)
    assert frame.rows(named=True) == [_as_dict(_entry(ref, SENT_1))]
    assert frame.schema["source_row"] == pl.Int64 and frame.schema["sent_at"] == pl.String
    assert empty.height == 0 and empty.schema == frame.schema


def _as_dict(entry: AuditEntry) -> dict[str, object]:
    return {name: getattr(entry, name) for name in entry.__slots__}


async def test_run_inputs_are_kept_once_and_a_resumed_run_goes_on_with_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = pl.DataFrame(
        {
            "NHS No": [NHS_A],
            "_source_file": ["/lists/eyes.csv"],
            "_source_row": [1],
            "_nhs_number": [NHS_A],
            "_nhs_reason": [None],
            "_appointment_date": [date(2026, 12, 5)],
        },
        schema_overrides={"_nhs_reason": pl.String},
    )
    async with Store.open(tmp_path / "state.sqlite") as store:
        run = await _run(store)
        kept = await keep_run_inputs(store, run, frame, 7)
        stored = await store.run_inputs(run.run_id)
        # Resumed with the lists read differently (say, the job's [input] changed): the run keeps its rows.
        changed = frame.with_columns(pl.lit("Ears").alias("Clinic"))
        with caplog.at_level(logging.WARNING):
            again = await keep_run_inputs(store, replace(run, resumed=True), changed, 7)
        assert await store.run_inputs(run.run_id) == stored
    assert stored is not None and not stored.dropped
    assert kept.equals(decode([p for p in stored.parts if p is not None]))
    assert kept.drop("_window_reason").equals(frame)
    assert again.equals(kept)
    assert "the run goes on with the rows it started with" in caplog.text
    assert NHS_A not in caplog.text


async def test_runs_are_found_by_id_prefix_or_as_the_last_complete_one(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:
        first = await _run(store, "fp1")
        await store.end_run(first.run_id, RunStatus.COMPLETE, "{}\n")
        second = await _run(store, "fp2")
        await store.end_run(second.run_id, RunStatus.COMPLETE, '{"second": true}\n')
        running = await _run(store, "fp3")
        last = await store.find_run("job")
        by_prefix = await store.find_run("job", first.run_id[:8].lower())
        by_id = await store.find_run("job", running.run_id)
        too_short = await store.find_run("job", first.run_id[:7])
        other_job = await store.find_run("other", first.run_id)
    assert last is not None and last.run_id == second.run_id and last.summary_json == '{"second": true}\n'
    assert by_prefix is not None and by_prefix.run_id == first.run_id
    assert by_id == StoredRun(
        running.run_id, "job", "2026-12-01", running.started_at, None, RunStatus.RUNNING, None
    )
    assert too_short is None and other_job is None


async def test_purge_drops_old_runs_inputs_and_keeps_their_audit(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run = await _run(store)
        await store.save_run_inputs(run.run_id, [(1, b"part one"), (0, b"part two")])
        await store.save_run_inputs(run.run_id, [(1, b"never written")])
        assert (await store.run_inputs(run.run_id)) is not None
        await store.purge_raw(datetime.now(UTC) + timedelta(hours=1))
        dropped = await store.run_inputs(run.run_id)
    assert dropped is not None and dropped.dropped and dropped.parts == (None, None)
    conn = sqlite3.connect(path)
    details = [d for (d,) in conn.execute("SELECT detail FROM audit WHERE event = 'raw_purged'")]
    assert [d.split()[:2] for d in details] == [["messages=0", "input_parts=2"]]


async def test_a_read_only_state_refuses_writes_and_reads_beside_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        run = await _run(store)
        async with Store.open_read_only(path) as reader:
            found = await reader.find_run("job", run.run_id)
            with pytest.raises(StoreError, match="opened read-only"):
                await reader.audit_event("x", "y")
    assert found is not None and found.status is RunStatus.RUNNING


async def test_a_read_only_state_must_exist_be_current_and_not_a_link(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="no state file"):
        async with Store.open_read_only(tmp_path / "missing.sqlite"):
            pass
    assert not (tmp_path / "missing.sqlite").exists()
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old, isolation_level=None)
    for step in range(3):
        MIGRATIONS[step](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '3')")
    conn.close()
    with pytest.raises(StoreOpenError, match="has schema 3, this cpis-batch reads 4"):
        async with Store.open_read_only(old):
            pass
    (tmp_path / "link.sqlite").symlink_to(old)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        async with Store.open_read_only(tmp_path / "link.sqlite"):
            pass
