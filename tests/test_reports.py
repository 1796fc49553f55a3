"""The run's reports built from its input rows and outcome frame, and written into the run folder."""

from __future__ import annotations

import zipfile
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from batch import reports
from batch.changes import ChangeKind, RunOutcomes
from batch.context import row_context_of
from batch.files import Privacy, UnsafePathError
from batch.patients import APPOINTMENT_DATE, WINDOW_REASON, InputSpec, read_patient_lists
from batch.reports import (
    EXCEPTION_OUTCOMES,
    FLAGGED_COLUMNS,
    RESULT_COLUMNS,
    ReportStager,
    ReportTotals,
    answered_numbers,
    build_flagged,
    build_results,
    build_slice,
    change_counts_of,
    input_slices,
)
from batch.selection import apply_window
from batch.states import Outcome
from batch.store import ChildOutcome, FlagResult, PlanRow, frame_of_outcomes
from batch.summary import RunSummary
from tests.expectations import run_summary
from tests.report_frames import (
    ReportFrames,
    build_changes,
    build_reports,
    render_summary_html,
    write_reports,
)

A, B, C, D, E = "9990000018", "9990000026", "9990000034", "9990000042", "9990000050"
REFERENCE = date(2027, 1, 11)
QUERIED = "2027-01-11T01:00:00.000+00:00"
SPEC = InputSpec(
    "NHS No",
    "Appointment Date",
    clinic_column="Clinic",
    name_column="Name",
    date_of_birth_column="DOB",
)


def _csv(path: Path, rows: list[str], header: str = "NHS No,Name,DOB,Clinic,Appointment Date") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _patients(tmp_path: Path) -> pl.DataFrame:
    first = _csv(
        tmp_path / "a-list.csv",
        [
            f"{A},Ann,01/02/2020,Eyes,2027-01-12",
            f"{B},Bob,02/03/2021,Ears,2027-01-13",
            "123,Cy,03/04/2019,Ears,2027-01-12",
            f"{C},Di,,Nose,",
        ],
    )
    second = _csv(
        tmp_path / "b-list.csv", [f"{D},Ed,05/06/2018,Eyes,2027-01-14", f"{A},Ann,01/02/2020,Feet,2027-02-01"]
    )
    return read_patient_lists([second, first], SPEC)


def plan(plan_type: str, start: str | None, end: str | None, la: str = "E09000033") -> PlanRow:
    return PlanRow(plan_type, start, end, la, f"LA {la}", f"office {la}", f"emergency {la}", "child")


def flagged(nhs: str, *plans: PlanRow, message_id: str = "M-F") -> ChildOutcome:
    return ChildOutcome(
        nhs,
        Outcome.FLAGGED,
        None,
        FlagResult(plans, 4, 2, "2027-01-02T10:00", "Simulated Hospital"),
        1,
        message_id,
        QUERIED,
    )


def answered(nhs: str, outcome: Outcome, reason: str | None = None, attempts: int = 1) -> ChildOutcome:
    return ChildOutcome(nhs, outcome, reason, None, attempts, f"M-{nhs}", QUERIED)


# --- results ---------------------------------------------------------------------------------------------


def test_every_input_row_has_one_outcome_in_file_and_row_order(tmp_path: Path) -> None:
    outcomes = frame_of_outcomes(
        [
            answered(A, Outcome.NOT_FLAGGED),
            answered(B, Outcome.ERROR, "QUQI:XX1", attempts=3),
            # D has no stored outcome: a bug, reported as an error rather than dropped.
            ChildOutcome(C, Outcome.NO_REPLY, "no_reply", None, 2, None, None),
        ]
    )
    results = build_results(_patients(tmp_path), outcomes)
    a_list, b_list = str(tmp_path / "a-list.csv"), str(tmp_path / "b-list.csv")
    assert results.columns == [
        "NHS No",
        "Name",
        "DOB",
        "Clinic",
        "Appointment Date",
        *RESULT_COLUMNS,
        APPOINTMENT_DATE,
    ]
    assert results.select(*RESULT_COLUMNS).rows() == [
        # A's second row read (the lists are read in the order given) carries the warning.
        (a_list, 1, A, "not_flagged", None, "duplicate", 1, f"M-{A}", QUERIED),
        (a_list, 2, B, "error", "QUQI:XX1", None, 3, f"M-{B}", QUERIED),
        (a_list, 3, None, "invalid_nhs_number", "not_10_digits", None, 0, None, None),
        (a_list, 4, C, "no_reply", "no_reply", None, 2, None, None),
        (b_list, 1, D, "error", "internal:no_outcome", None, 0, None, None),
        (b_list, 2, A, "not_flagged", None, None, 1, f"M-{A}", QUERIED),
    ]
    assert results.get_column("NHS No").to_list() == [A, B, "123", C, D, A]
    assert results.schema["attempts"] == pl.Int64 and results.schema["source_row"] == pl.Int64
    assert results.get_column(APPOINTMENT_DATE).to_list() == [
        date(2027, 1, 12),
        date(2027, 1, 13),
        date(2027, 1, 12),
        None,
        date(2027, 1, 14),
        date(2027, 2, 1),
    ]


def test_rows_outside_the_window_are_not_answered_even_when_their_child_was(tmp_path: Path) -> None:
    patients = apply_window(_patients(tmp_path), 7, REFERENCE)
    outcomes = frame_of_outcomes([answered(A, Outcome.NOT_FLAGGED), answered(D, Outcome.NOT_FLAGGED)])
    results = build_results(patients, outcomes)
    assert WINDOW_REASON not in results.columns
    assert results.select(
        "source_row", "nhs_number", "outcome", "reason", "attempts", "message_id", "queried_at"
    ).rows() == [
        (1, A, "not_flagged", None, 1, f"M-{A}", QUERIED),
        (2, B, "error", "internal:no_outcome", 0, None, None),
        (3, None, "invalid_nhs_number", "not_10_digits", 0, None, None),
        (4, C, "outside_window", "no_appointment_date", 0, None, None),
        (1, D, "not_flagged", None, 1, f"M-{D}", QUERIED),
        (2, A, "outside_window", "outside_window", 0, None, None),
    ]


def test_input_columns_named_like_report_columns_are_kept_under_another_name(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "list.csv",
        [f"{A},x,3,r,q"],
        header="NHS No,outcome,attempts,reason,_q_note",
    )
    patients = read_patient_lists([path], InputSpec("NHS No"))
    results = build_results(patients, frame_of_outcomes([answered(A, Outcome.ERROR, "QUQI:XX1", attempts=2)]))
    assert results.columns == [
        "NHS No",
        "input_outcome",
        "input_attempts",
        "input_reason",
        "_q_note",
        *RESULT_COLUMNS,
        APPOINTMENT_DATE,
    ]
    row = results.row(0, named=True)
    assert (row["input_outcome"], row["input_attempts"], row["input_reason"], row["_q_note"]) == (
        "x",
        "3",
        "r",
        "q",
    )
    assert (row["outcome"], row["reason"], row["attempts"]) == ("error", "QUQI:XX1", 2)


# --- flagged ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_rows", [1, 1_000])
def test_a_flagged_row_has_a_row_per_plan_with_whether_it_is_active_on_its_appointment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_rows: int
) -> None:
    # The stored answers are decoded a slice at a time; one child per slice must give the same rows.
    monkeypatch.setattr(reports, "_DECODE_SLICE_ROWS", slice_rows)
    outcomes = frame_of_outcomes(
        [
            flagged(
                A,
                plan("LAC", "2026-01-01", "2027-01-12T00:00"),  # ends on the first row's appointment day
                plan("CPP", "2027-01-13T00:00", None),  # starts the day after it
                plan("CPP", "2026-05-01", "2026-06-30"),
                plan("UCP", None, "not a date"),
                # Dates not in ISO form are unreadable, never guessed at: the plan counts as open that side.
                plan("LAC", "2027/01/13", None),
                plan("UCP", "2026-01-01", "2027/01/10"),
            ),
            flagged(C, plan("CPP", "2027-01-11", "2027-01-11", la="E09000007"), message_id="M-C"),
            # A flagged answer stored without plans (outcomes.py makes such a REPC an error) has no plan row.
            flagged(D),
            answered(B, Outcome.NOT_FLAGGED),
        ]
    )
    patients = _patients(tmp_path)
    results = build_results(patients, outcomes)
    rows = build_flagged(results, outcomes, REFERENCE)
    a_list, b_list = str(tmp_path / "a-list.csv"), str(tmp_path / "b-list.csv")
    assert rows.columns == ["NHS No", "Name", "DOB", "Clinic", "Appointment Date", *FLAGGED_COLUMNS]
    assert rows.select(
        "source_file",
        "source_row",
        "nhs_number",
        "plan_type",
        "plan_start",
        "plan_end",
        "plan_active_on_appointment",
    ).rows() == [
        (a_list, 1, A, "CPP", "2026-05-01", "2026-06-30", False),
        (a_list, 1, A, "CPP", "2027-01-13T00:00", None, False),
        (a_list, 1, A, "LAC", "2026-01-01", "2027-01-12T00:00", True),
        (a_list, 1, A, "LAC", "2027/01/13", None, True),
        (a_list, 1, A, "UCP", "2026-01-01", "2027/01/10", True),
        (a_list, 1, A, "UCP", None, "not a date", True),
        # No appointment date: the run's reference date decides.
        (a_list, 4, C, "CPP", "2027-01-11", "2027-01-11", True),
        (b_list, 2, A, "CPP", "2026-05-01", "2026-06-30", False),
        (b_list, 2, A, "CPP", "2027-01-13T00:00", None, True),
        (b_list, 2, A, "LAC", "2026-01-01", "2027-01-12T00:00", False),
        (b_list, 2, A, "LAC", "2027/01/13", None, True),
        (b_list, 2, A, "UCP", "2026-01-01", "2027/01/10", True),
        (b_list, 2, A, "UCP", None, "not a date", True),
    ]
    c_row = rows.filter(pl.col("nhs_number") == C).row(0, named=True)
    assert {k: c_row[k] for k in FLAGGED_COLUMNS} == {
        "source_file": a_list,
        "source_row": 4,
        "nhs_number": C,
        "plan_type": "CPP",
        "plan_start": "2027-01-11",
        "plan_end": "2027-01-11",
        "plan_active_on_appointment": True,
        "la_code": "E09000007",
        "la_name": "LA E09000007",
        "la_office_phone": "office E09000007",
        "la_emergency_phone": "emergency E09000007",
        "access_count": 4,
        "last_access_at": "2027-01-02T10:00",
        "last_access_organisation": "Simulated Hospital",
        "child_records": 2,
        "message_id": "M-C",
        "queried_at": QUERIED,
    }
    assert (c_row["Name"], c_row["Clinic"]) == ("Di", "Nose")


# --- the frames together ---------------------------------------------------------------------------------


def _previous() -> RunOutcomes:
    return RunOutcomes(
        "PREVIOUS-RUN",
        date(2027, 1, 4),
        frame_of_outcomes([answered(A, Outcome.NOT_FLAGGED), flagged(B, plan("CPP", "2026-01-01", None))]),
    )


def _now() -> pl.DataFrame:
    return frame_of_outcomes(
        [
            flagged(A, plan("CPP", "2026-01-01", None)),
            answered(B, Outcome.NOT_FLAGGED),
            answered(C, Outcome.NO_REPLY, "no_reply"),
            answered(D, Outcome.ERROR, "MCCI:AE:5000"),
        ]
    )


def test_the_reports_of_a_run_are_built_together(tmp_path: Path) -> None:
    patients, previous = _patients(tmp_path), _previous()
    frames = build_reports(patients, _now(), REFERENCE, run_id="THIS-RUN", previous=previous)
    assert APPOINTMENT_DATE not in frames.results.columns
    assert frames.results.equals(build_results(patients, _now()).drop(APPOINTMENT_DATE))
    assert frames.flagged.equals(build_flagged(build_results(patients, _now()), _now(), REFERENCE))
    assert frames.exceptions.select("nhs_number", "outcome").rows() == [
        (None, "invalid_nhs_number"),
        (C, "no_reply"),
        (D, "error"),
    ]
    assert frames.exceptions.columns == frames.results.columns
    assert frames.changes.select("nhs_number", "change", "previous_run_id", "run_id").rows() == [
        (A, "newly_flagged", "PREVIOUS-RUN", "THIS-RUN"),
        (B, "no_longer_flagged", "PREVIOUS-RUN", "THIS-RUN"),
    ]
    assert frames.context.select("source_row", "clinic", "patient_name").rows() == [
        (1, "Eyes", "Ed"),
        (2, "Feet", "Ann"),
        (1, "Eyes", "Ann"),
        (2, "Ears", "Bob"),
        (3, "Ears", "Cy"),
        (4, "Nose", "Di"),
    ]
    assert frames.previous is previous
    assert frames.outcome_counts() == {
        "flagged": 2,
        "not_flagged": 1,
        "invalid_nhs_number": 1,
        "error": 1,
        "no_reply": 1,
        "outside_window": 0,
    }
    assert frames.change_counts() == {kind.value: 0 for kind in ChangeKind} | {
        "newly_flagged": 1,
        "no_longer_flagged": 1,
    }
    assert set(EXCEPTION_OUTCOMES) == {"invalid_nhs_number", "error", "no_reply"}


def test_a_flagged_row_without_an_appointment_date_is_judged_on_the_runs_reference_date(
    tmp_path: Path,
) -> None:
    outcomes = frame_of_outcomes([flagged(C, plan("CPP", "2027-01-11", "2027-01-11"))])
    frames = build_reports(_patients(tmp_path), outcomes, REFERENCE, run_id="THIS-RUN", previous=None)
    assert frames.flagged.select("nhs_number", "plan_active_on_appointment").rows() == [(C, True)]


def test_changes_name_the_child_from_its_first_row(tmp_path: Path) -> None:
    patients = _patients(tmp_path)
    changes = build_changes(patients, RunOutcomes("THIS-RUN", REFERENCE, _now()), _previous())
    assert changes.columns[:4] == ["nhs_number", "patient_name", "date_of_birth", "clinic"]
    assert "nhs_number" not in changes.columns[4:]
    assert changes.select("nhs_number", "patient_name", "clinic").rows() == [
        (A, "Ann", "Eyes"),
        (B, "Bob", "Ears"),
    ]
    assert change_counts_of(changes)["newly_flagged"] == 1


def test_a_change_is_kept_when_its_child_has_no_row_to_name_it(tmp_path: Path) -> None:
    # The changed children come from the run's own rows, so each has one; were one missing, its change must
    # still be reported (without a name), never dropped.
    patients = _patients(tmp_path).filter(pl.col("_nhs_number") != A)
    changes = build_changes(patients, RunOutcomes("THIS-RUN", REFERENCE, _now()), _previous())
    assert changes.select("nhs_number", "patient_name").rows() == [(A, None), (B, "Bob")]


def test_a_first_run_has_no_changes_and_says_so(tmp_path: Path) -> None:
    frames = build_reports(_patients(tmp_path), _now(), REFERENCE, run_id="THIS-RUN", previous=None)
    assert frames.changes.height == 0
    assert frames.changes.columns[:4] == ["nhs_number", "patient_name", "date_of_birth", "clinic"]
    assert frames.change_counts() == "first_run"
    assert frames.previous is None


# --- writing ---------------------------------------------------------------------------------------------


def _summary(frames: ReportFrames) -> str:
    return run_summary(frames, job="nightly", reference_date=REFERENCE, children=5).to_json()


def test_every_report_is_written_into_a_new_private_run_folder(tmp_path: Path) -> None:
    frames = build_reports(_patients(tmp_path), _now(), REFERENCE, run_id="THIS-RUN", previous=_previous())
    summary = _summary(frames)
    folder = tmp_path / "runs" / "THIS-RUN"
    paths = write_reports(folder, frames, summary, Privacy())
    names = {
        "results": "results.parquet",
        "flagged_parquet": "flagged.parquet",
        "flagged_csv": "flagged.csv",
        "exceptions": "exceptions.csv",
        "summary": "summary.json",
        "flagged_xlsx": "flagged.xlsx",
        "changes_parquet": "changes.parquet",
        "changes_csv": "changes.csv",
        "summary_html": "summary.html",
    }
    assert paths.directory == folder
    assert {field: getattr(paths, field) for field in names} == {
        field: folder / name for field, name in names.items()
    }
    assert sorted(p.name for p in folder.iterdir()) == sorted(names.values())
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    assert pl.read_parquet(paths.results).equals(frames.results)
    assert pl.read_parquet(paths.flagged_parquet).equals(frames.flagged)
    assert pl.read_parquet(paths.changes_parquet).equals(frames.changes)
    assert pl.read_csv(paths.flagged_csv, infer_schema=False).get_column("nhs_number").to_list() == [A, A]
    assert pl.read_csv(paths.exceptions, infer_schema=False).get_column("outcome").to_list() == [
        "invalid_nhs_number",
        "no_reply",
        "error",
    ]
    assert pl.read_csv(paths.changes_csv, infer_schema=False).get_column("change").to_list() == [
        "newly_flagged",
        "no_longer_flagged",
    ]
    assert paths.summary.read_text() == summary
    assert paths.summary_html.read_bytes() == render_summary_html(
        frames, RunSummary.from_json(summary)
    ).encode("utf-8")
    with zipfile.ZipFile(paths.flagged_xlsx) as workbook:
        assert 'name="flagged"' in workbook.read("xl/workbook.xml").decode()


@pytest.mark.parametrize("rows", [1, 2])
def test_reports_written_a_slice_at_a_time_are_those_of_the_whole_run(tmp_path: Path, rows: int) -> None:
    # The job stages its reports a slice of input rows at a time, each slice's answers read on their own; the
    # rows arrive here in reverse, so the slices must be taken in report order, not as given.
    patients = _patients(tmp_path)
    whole = build_reports(patients, _now(), REFERENCE, run_id="THIS-RUN", previous=_previous())
    summary = _summary(whole)
    expected = write_reports(tmp_path / "whole", whole, summary, Privacy())
    stager = ReportStager(tmp_path / "sliced", Privacy())
    slices = list(input_slices(patients.reverse(), rows))
    assert len(slices) == -(-patients.height // rows)
    for part in slices:
        answers = _now().filter(pl.col("nhs_number").is_in(answered_numbers(part)))
        stager.add(*build_slice(part, answers, REFERENCE))
    assert stager.totals == ReportTotals(whole.results.height, whole.outcome_counts(), whole.flagged.height)
    got = stager.finish(
        changes=whole.changes,
        previous=whole.previous,
        context_of=row_context_of(patients),
        summary_json=summary,
    )
    assert sorted(p.name for p in got.directory.iterdir()) == sorted(
        p.name for p in expected.directory.iterdir()
    )
    for name in ("results.parquet", "flagged.parquet", "changes.parquet"):
        assert pl.read_parquet(got.directory / name).equals(pl.read_parquet(expected.directory / name)), name
    for name in ("flagged.csv", "exceptions.csv", "changes.csv", "summary.json", "summary.html"):
        assert (got.directory / name).read_bytes() == (expected.directory / name).read_bytes(), name
    sheet = "xl/worksheets/sheet1.xml"
    with zipfile.ZipFile(got.flagged_xlsx) as mine, zipfile.ZipFile(expected.flagged_xlsx) as theirs:
        assert mine.read(sheet) == theirs.read(sheet)


def test_a_write_killed_between_slices_leaves_nothing_once_written_again(tmp_path: Path) -> None:
    # A process killed while staging leaves part files and half-appended CSVs under temporary names; the next
    # write of the run's reports clears them, and only the finished reports are left.
    patients = _patients(tmp_path)
    whole = build_reports(patients, _now(), REFERENCE, run_id="THIS-RUN", previous=None)
    folder = tmp_path / "run"
    killed = ReportStager(folder, Privacy())
    first = next(input_slices(patients, 2))
    killed.add(*build_slice(first, _now(), REFERENCE))
    assert any(path.name.startswith(".") for path in folder.iterdir())
    del killed
    paths = write_reports(folder, whole, _summary(whole), Privacy())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name
        for p in (
            paths.results,
            paths.flagged_parquet,
            paths.flagged_csv,
            paths.exceptions,
            paths.summary,
            paths.flagged_xlsx,
            paths.changes_parquet,
            paths.changes_csv,
            paths.summary_html,
        )
    )
    assert pl.read_parquet(paths.results).equals(whole.results)


def test_slices_of_no_rows_still_give_every_report(tmp_path: Path) -> None:
    patients = _patients(tmp_path).clear()
    stager = ReportStager(tmp_path / "run", Privacy())
    for part in input_slices(patients, 2):
        stager.add(*build_slice(part, _now().clear(), REFERENCE))
    assert stager.totals == ReportTotals(0, {o.value: 0 for o in Outcome}, 0)
    empty = build_reports(patients, _now().clear(), REFERENCE, run_id="THIS-RUN", previous=None)
    paths = stager.finish(
        changes=empty.changes,
        previous=None,
        context_of=row_context_of(patients),
        summary_json=_summary(empty),
    )
    assert pl.read_parquet(paths.results).columns == empty.results.columns
    assert pl.read_csv(paths.flagged_csv).columns == list(empty.flagged.columns)
    assert "No child on these lists is flagged" in paths.summary_html.read_text()


def test_writing_again_replaces_the_reports_and_clears_what_a_killed_write_left(tmp_path: Path) -> None:
    frames = build_reports(_patients(tmp_path), _now(), REFERENCE, run_id="THIS-RUN", previous=None)
    folder = tmp_path / "run"
    write_reports(folder, frames, _summary(frames), Privacy())
    leftover = folder / ".results.parquet.123.tmp"
    leftover.write_bytes(b"half")
    again = write_reports(folder, frames, _summary(frames), Privacy())
    assert not leftover.exists()
    assert pl.read_parquet(again.results).equals(frames.results)
    assert pl.read_csv(again.changes_csv).height == 0


def test_a_run_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    frames = build_reports(_patients(tmp_path), _now(), REFERENCE, run_id="THIS-RUN", previous=None)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=r"run: the run folder is a symbolic link"):
        write_reports(tmp_path / "run", frames, _summary(frames), Privacy())
    assert list((tmp_path / "elsewhere").iterdir()) == []
