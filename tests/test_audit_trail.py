"""End to end, with the simulated Spine and the CLI as real processes: the appointment window, the audit trail
of the queries sent and its export, and reports written again from the state."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from batch import reports
from batch.audit import AUDIT_SCHEMA
from batch.cli.report import report_command
from batch.pki import DevPki
from spine_sim.dataset import RecordsFound, load_dataset, random_test_number
from spine_sim.jobfile import free_port, job_tables, write_job
from tests.support import SAMPLE_DATASET, run_cli

pytestmark = pytest.mark.e2e

UK = ZoneInfo("Europe/London")
WINDOW_DAYS = 7
SENDER = {
    "sender_asid": "999000000101",
    "sender_ods_code": "SIM01",
    "responsible_person_name": "Dr Alex Example",
    "responsible_person_role_code": "R0260",
    "responsible_person_role_name": "General Medical Practitioner",
}
FORMULA_CLINIC = '=HYPERLINK("http://example.invalid","Eyes")'


@dataclass(frozen=True)
class Numbers:
    flagged_mixed: str
    """Flagged; one row in the window, one after it."""
    flagged_late_first: str
    """Flagged; a row after the window comes first, then one in it."""
    twice: str
    """Not on CP-IS; two rows in the window."""
    before: str
    no_date: str
    bad_date: str
    after: str

    @property
    def queried(self) -> set[str]:
        return {self.flagged_mixed, self.flagged_late_first, self.twice}

    @property
    def never(self) -> set[str]:
        return {self.before, self.no_date, self.bad_date, self.after}


@dataclass(frozen=True)
class WindowedRun:
    tmp: Path
    job: Path
    source: Path
    today: date
    numbers: Numbers
    exit_code: int
    stdout: str
    stderr: str
    arrivals: list[Any]
    stats: dict[str, Any]
    run_dir: Path

    @property
    def state(self) -> Path:
        return self.tmp / "state" / "state.sqlite"


def _uk(day: date) -> str:
    return day.strftime("%d/%m/%Y")


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> WindowedRun:
    from spine_sim.process import running_sim

    tmp = tmp_path_factory.mktemp("window")
    pki = dev_pki.directory
    dataset = load_dataset(SAMPLE_DATASET)
    flagged = [n for n in sorted(dataset.children) if isinstance(dataset.answer(n), RecordsFound)][:2]
    taken = set(dataset.nhs_numbers())
    rng = random.Random(20261204)
    fresh = [random_test_number(rng, taken) for _ in range(5)]
    numbers = Numbers(flagged[0], flagged[1], *fresh)
    # Dates well inside or outside the window: a run that starts after midnight sees the same split.
    today = datetime.now(UK).date()
    day = {n: _uk(today + timedelta(days=n)) for n in (-3, 1, 2, 3, 5, 30)}
    quoted_clinic = '"' + FORMULA_CLINIC.replace('"', '""') + '"'
    source = tmp / "clinic.csv"
    source.write_text(
        "NHS No,Patient Name,DOB,Appointment Date,Clinic\n"
        f"{numbers.flagged_mixed},Ada Example,01/02/2019,{day[1]},Paediatrics\n"  # 1: in
        f"{numbers.flagged_mixed},Ada Example,01/02/2019,{day[30]},Paediatrics\n"  # 2: after
        f"{numbers.twice},Ben Example,03/04/2018,{day[2]},{quoted_clinic}\n"  # 3
        f"{numbers.before},Cal Example,05/06/2017,{day[-3]},Paediatrics\n"  # 4: before
        f"{numbers.no_date},Dee Example,07/08/2016,,Paediatrics\n"  # 5: none
        f"{numbers.bad_date},Eve Example,09/10/2015,31/02/2027,Paediatrics\n"  # 6: not a date
        f"{numbers.flagged_late_first},Fay Example,11/12/2014,{day[30]},Orthoptics\n"  # 7: after
        f"{numbers.flagged_late_first},Fay Example,11/12/2014,{day[3]},Audiology\n"  # 8: in
        f"{numbers.after},Gus Example,13/01/2013,{day[30]},Paediatrics\n"  # 9: after
        f"{numbers.twice},Ben Example,03/04/2018,{day[5]},Audiology\n"  # 10: in
        f"123,Hal Example,15/02/2012,{day[1]},Paediatrics\n"  # 11: invalid number
    )
    inbound_port = free_port()
    with running_sim(
        pki_dir=pki, dataset=SAMPLE_DATASET, reply_url=f"https://127.0.0.1:{inbound_port}/cpis/replies"
    ) as sim:
        tables = job_tables(
            tmp=tmp,
            pki=pki,
            inputs=str(source),
            spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
            inbound_port=inbound_port,
        )
        tables["input"] |= {
            "clinic_column": "Clinic",
            "name_column": "Patient Name",
            "date_of_birth_column": "DOB",
            "window_days": WINDOW_DAYS,
        }
        job = write_job(tmp / "job.toml", tables)
        completed = run_cli("run", str(job))
        # The run has ended, so Spine has seen every query it will: wait for their lines, then read the count.
        arrivals = sim.wait_for_arrivals(len(numbers.queried), timeout=30)
        stats = sim.stats()
    return WindowedRun(
        tmp=tmp,
        job=job,
        source=source,
        today=today,
        numbers=numbers,
        exit_code=completed.returncode,
        stdout=completed.stdout,
        stderr=completed.stderr,
        arrivals=arrivals,
        stats=stats,
        run_dir=(tmp / "out" / "latest").resolve(),
    )


def _state(run: WindowedRun) -> sqlite3.Connection:
    return sqlite3.connect(f"{run.state.resolve().as_uri()}?mode=ro", uri=True)


# -- the appointment window -------------------------------------------------------------------------------------


def test_children_outside_the_window_are_never_queried(windowed: WindowedRun) -> None:
    assert windowed.exit_code == 0, windowed.stderr[-3000:]
    assert {a.nhs_number for a in windowed.arrivals} == windowed.numbers.queried
    assert len(windowed.arrivals) == len(windowed.numbers.queried)
    assert windowed.stats["queries_received"] == len(windowed.numbers.queried)
    assert set(windowed.stats["queries_by_nhs_number"]) == windowed.numbers.queried
    assert windowed.stats["notifications"] == 0


def test_every_row_has_its_window_outcome(windowed: WindowedRun) -> None:
    results = pl.read_parquet(windowed.run_dir / "results.parquet")
    got = results.select("source_row", "outcome", "reason", "attempts").rows()
    assert got == [
        (1, "flagged", None, 1),
        (2, "outside_window", "outside_window", 0),
        (3, "not_flagged", None, 1),
        (4, "outside_window", "outside_window", 0),
        (5, "outside_window", "no_appointment_date", 0),
        (6, "outside_window", "no_appointment_date", 0),
        (7, "outside_window", "outside_window", 0),
        (8, "flagged", None, 1),
        (9, "outside_window", "outside_window", 0),
        (10, "not_flagged", None, 1),
        (11, "invalid_nhs_number", "not_10_digits", 0),
    ]
    exceptions = pl.read_csv(windowed.run_dir / "exceptions.csv", infer_schema=False)
    assert exceptions.get_column("source_row").to_list() == ["11"]
    flagged = pl.read_parquet(windowed.run_dir / "flagged.parquet")
    assert set(flagged.get_column("source_row")) == {1, 8}
    summary = json.loads((windowed.run_dir / "summary.json").read_text())
    assert summary["outcomes"]["outside_window"] == 6
    assert summary["distinct_children"] == 3 and summary["queries_sent"] == 3


# -- the audit trail ----------------------------------------------------------------------------------------------


def _expected_audit(run: WindowedRun) -> dict[str, dict[str, object]]:
    """NHS number → the audit row's fields (besides time, run and message id)."""
    n = run.numbers
    source = str(run.source)

    def row(nhs: str, source_row: int, clinic: str, days: int, rows: int) -> dict[str, object]:
        appointment = (run.today + timedelta(days=days)).isoformat()
        return {
            "nhs_number": nhs,
            **SENDER,
            "source_file": source,
            "source_row": source_row,
            "clinic": clinic,
            "appointment_date": appointment,
            "input_rows": rows,
        }

    return {
        n.flagged_mixed: row(n.flagged_mixed, 1, "Paediatrics", 1, 1),
        n.twice: row(n.twice, 3, FORMULA_CLINIC, 2, 2),
        n.flagged_late_first: row(n.flagged_late_first, 8, "Audiology", 3, 1),
    }


def test_one_audit_row_per_query_sent_with_every_field(windowed: WindowedRun) -> None:
    conn = _state(windowed)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT a.*, t.sent_at, t.nhs_number AS attempt_nhs FROM audit a"
        " JOIN attempts t ON t.message_id = a.message_id WHERE a.event = 'query_sent' ORDER BY a.id"
    ).fetchall()
    run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
    expected = _expected_audit(windowed)
    assert sorted(r["message_id"] for r in rows) == sorted(a.message_id for a in windowed.arrivals)
    for r in rows:
        assert r["attempt_nhs"] == r["nhs_number"]
        assert {k: r[k] for k in ("at", "run_id", "event", "detail", *expected[r["nhs_number"]])} == {
            "at": r["sent_at"],
            "run_id": run_id,
            "event": "query_sent",
            "detail": None,
            **expected[r["nhs_number"]],
        }
    assert sorted(r["nhs_number"] for r in rows) == sorted(expected)


def test_the_runs_audit_rows_cannot_be_changed_or_removed(windowed: WindowedRun) -> None:
    # A copy: the other tests read the real state file.
    copy = windowed.tmp / "audit-copy.sqlite"
    source = _state(windowed)
    target = sqlite3.connect(copy, isolation_level=None)
    source.backup(target)
    before = target.execute("SELECT * FROM audit ORDER BY id").fetchall()
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        target.execute("UPDATE audit SET responsible_person_name = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="audit rows are append-only"):
        target.execute("DELETE FROM audit WHERE event = 'query_sent'")
    assert target.execute("SELECT * FROM audit ORDER BY id").fetchall() == before


def _export(run: WindowedRun, *args: str) -> tuple[int, str, str]:
    completed = run_cli("audit", str(run.job), *args)
    return completed.returncode, completed.stdout, completed.stderr


def _period(run: WindowedRun) -> list[str]:
    return [
        "--since",
        (run.today - timedelta(days=1)).isoformat(),
        "--until",
        (run.today + timedelta(days=1)).isoformat(),
    ]


def _error(stderr: str) -> str:
    """The one error line (log lines, such as the test job's rate warning, may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("cpis-batch: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert stderr.endswith(errors[0] + "\n")
    return errors[0].removeprefix("cpis-batch: error: ")


def _export_rows(run: WindowedRun) -> list[str]:
    conn = _state(run)
    return [d for (d,) in conn.execute("SELECT detail FROM audit WHERE event = 'audit_exported' ORDER BY id")]


def test_export_by_date_range_to_csv(windowed: WindowedRun) -> None:
    output = windowed.tmp / "exports" / "audit.csv"
    output.parent.mkdir()
    exported_before = len(_export_rows(windowed))
    code, stdout, stderr = _export(windowed, *_period(windowed), "--format", "csv", "--output", str(output))
    assert code == 0, stderr
    assert "audit: 3 queries sent" in stdout
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    frame = pl.read_csv(output, infer_schema=False)
    assert frame.columns == list(AUDIT_SCHEMA)
    expected = _expected_audit(windowed)
    assert frame.height == 3
    for row in frame.iter_rows(named=True):
        want = {k: None if v is None else str(v) for k, v in expected[row["nhs_number"]].items()}
        if want["clinic"] == FORMULA_CLINIC:
            want["clinic"] = "'" + FORMULA_CLINIC  # a spreadsheet shows it as text
        assert {k: row[k] for k in want} == want
        assert row["outcome"] in ("flagged", "not_flagged") and row["delivery"] == "answered"
    audited = _export_rows(windowed)
    assert len(audited) == exported_before + 1
    assert audited[-1].split(" ")[1:] == [
        "queries=3",
        "children=3",
        f"since={_period(windowed)[1]}",
        f"until={_period(windowed)[3]}",
        "format=csv",
        "one_child=no",
    ]
    assert audited[-1].startswith("user=")


def test_export_by_nhs_number_to_parquet(windowed: WindowedRun) -> None:
    nhs = windowed.numbers.twice
    output = windowed.tmp / "one-child.parquet"
    spaced = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"
    code, stdout, stderr = _export(
        windowed, *_period(windowed), "--nhs-number", spaced, "--format", "parquet", "--output", str(output)
    )
    assert code == 0, stderr
    assert nhs not in stdout + stderr
    frame = pl.read_parquet(output)
    assert frame.schema == AUDIT_SCHEMA
    conn = _state(windowed)
    run_id, message_id, sent_at = conn.execute(
        "SELECT run_id, message_id, sent_at FROM attempts WHERE nhs_number = ?", (nhs,)
    ).fetchone()
    assert frame.rows(named=True) == [
        {
            "sent_at": sent_at,
            "run_id": run_id,
            "message_id": message_id,
            **_expected_audit(windowed)[nhs],
            "delivery": "answered",
            "outcome": "not_flagged",
            "reason": None,
        }
    ]
    last = _export_rows(windowed)[-1]
    assert "queries=1 children=1" in last and last.endswith("format=parquet one_child=yes")
    assert nhs not in last


def test_export_of_a_period_without_queries_is_empty(windowed: WindowedRun) -> None:
    output = windowed.tmp / "empty.csv"
    later = (windowed.today + timedelta(days=10)).isoformat()
    code, _, stderr = _export(
        windowed, "--since", later, "--until", later, "--format", "csv", "--output", str(output)
    )
    assert code == 0, stderr
    assert pl.read_csv(output).columns == list(AUDIT_SCHEMA)
    assert pl.read_csv(output).height == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "2026-02-30", "--until", "2026-03-01"],
            "--since: '2026-02-30' is not a date (YYYY-MM-DD)",
        ),
        (
            ["--since", "2026-12-02", "--until", "2026-12-01"],
            "--since 2026-12-02 is after --until 2026-12-01",
        ),
        (
            ["--since", "2026-12-01", "--until", "2026-12-01", "--nhs-number", "9991234013"],
            "not a valid NHS number (bad_check_digit)",
        ),
    ],
)
def test_bad_export_arguments_exit_2_with_one_line(
    windowed: WindowedRun, args: list[str], message: str
) -> None:
    output = windowed.tmp / "never.csv"
    code, _, stderr = _export(windowed, *args, "--format", "csv", "--output", str(output))
    assert code == 2
    assert _error(stderr).endswith(message)
    assert "9991234013" not in stderr
    assert not output.exists()


def test_an_export_is_never_written_through_a_symlink(windowed: WindowedRun) -> None:
    victim = windowed.tmp / "victim.txt"
    victim.write_text("precious")
    link = windowed.tmp / "export-link.csv"
    link.symlink_to(victim)
    exported_before = len(_export_rows(windowed))
    code, _, stderr = _export(windowed, *_period(windowed), "--format", "csv", "--output", str(link))
    assert code == 2
    assert _error(stderr) == f"{link}: the output file is a symbolic link"
    assert victim.read_text() == "precious" and link.is_symlink()
    assert len(_export_rows(windowed)) == exported_before
    assert not [p for p in windowed.tmp.iterdir() if p.name.endswith(".tmp")]


def test_an_export_into_a_missing_folder_exits_2(windowed: WindowedRun) -> None:
    output = windowed.tmp / "no-such-folder" / "audit.csv"
    code, _, stderr = _export(windowed, *_period(windowed), "--format", "csv", "--output", str(output))
    assert code == 2
    assert _error(stderr) == f"{output}: cannot write the export (No such file or directory)"


# -- reports written again ----------------------------------------------------------------------------------------


def _cells(path: Path) -> dict[str, list[tuple[object, ...]]]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True)
    try:
        return {sheet.title: list(sheet.iter_rows(values_only=True)) for sheet in book.worksheets}
    finally:
        book.close()


def _same_reports(original: Path, again: Path) -> None:
    names = sorted(p.name for p in original.iterdir())
    assert sorted(p.name for p in again.iterdir()) == names
    for name in names:
        first, second = original / name, again / name
        assert stat.S_IMODE(second.stat().st_mode) == 0o600, name
        if name.endswith(".parquet"):
            assert pl.read_parquet(second).equals(pl.read_parquet(first)), name
            assert pl.read_parquet(second).schema == pl.read_parquet(first).schema, name
        elif name.endswith((".csv", ".json", ".html")):
            assert second.read_bytes() == first.read_bytes(), name
        elif name.endswith(".xlsx"):
            # The workbook records when it was written; its cells must be the same.
            assert _cells(second) == _cells(first), name


def test_report_writes_the_last_complete_runs_reports_again(windowed: WindowedRun) -> None:
    latest = os.readlink(windowed.tmp / "out" / "latest")
    completed = run_cli("report", str(windowed.job))
    assert completed.returncode == 0, completed.stderr
    again = Path(completed.stdout.strip().removeprefix("reports: "))
    run_id = json.loads((windowed.run_dir / "summary.json").read_text())["run_id"]
    assert again.parent == windowed.tmp / "out" and again.name.startswith(f"report-{run_id[:8]}-")
    assert stat.S_IMODE(again.stat().st_mode) == 0o700
    _same_reports(windowed.run_dir, again)
    assert os.readlink(windowed.tmp / "out" / "latest") == latest


def test_reports_built_a_few_rows_at_a_time_are_the_same(
    windowed: WindowedRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run and `report` read answers a slice of input rows at a time; slices of 2 rows must change nothing.
    monkeypatch.setattr(reports, "SLICE_ROWS", 2)
    assert report_command(windowed.job, None) == 0
    again = Path(capsys.readouterr().out.strip().removeprefix("reports: "))
    _same_reports(windowed.run_dir, again)


def test_report_of_a_run_named_by_its_id(windowed: WindowedRun) -> None:
    run_id = json.loads((windowed.run_dir / "summary.json").read_text())["run_id"]
    completed = run_cli("report", str(windowed.job), "--run", run_id[:8].lower())
    assert completed.returncode == 0, completed.stderr
    _same_reports(windowed.run_dir, Path(completed.stdout.strip().removeprefix("reports: ")))


@pytest.mark.parametrize(
    ("run", "message"),
    [("0123abcd", "job test-job has no run 0123abcd"), ("x; drop", "--run: 'x; drop' is not a run id")],
)
def test_report_of_an_unknown_run_exits_2(windowed: WindowedRun, run: str, message: str) -> None:
    completed = run_cli("report", str(windowed.job), "--run", run)
    assert completed.returncode == 2
    assert message in _error(completed.stderr)


def test_report_never_reads_through_a_symlinked_state_file(windowed: WindowedRun) -> None:
    linked = windowed.tmp / "state" / "linked.sqlite"
    job = windowed.tmp / "linked-job.toml"
    job.write_text(windowed.job.read_text().replace(f'state = "{windowed.state}"', f'state = "{linked}"'))
    assert str(linked) in job.read_text()
    linked.symlink_to(windowed.state)
    completed = run_cli("report", str(job))
    assert completed.returncode == 2
    assert _error(completed.stderr) == f"{linked}: the state file is a symbolic link"
