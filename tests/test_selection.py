"""The appointment window: which rows are queried, why each child is, and what the others are reported as."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from batch.patients import WINDOW_REASON, InputError, InputSpec, read_patient_lists
from batch.reports import EXCEPTION_OUTCOMES, build_results
from batch.run_inputs import decode, encode
from batch.selection import apply_window, query_reasons, reason_frame
from batch.states import Outcome
from batch.store import ChildOutcome, QueryReason, frame_of_outcomes

TODAY = date(2026, 12, 4)
IN, MIXED, BEFORE, AFTER, NO_DATE, BAD_DATE = (
    "9991234012",
    "9991234020",
    "9990000018",
    "9990000026",
    "9990000034",
    "9990000042",
)
SPEC = InputSpec(
    nhs_number_column="NHS No",
    appointment_date_column="Appt",
    appointment_date_format="%Y-%m-%d",
    clinic_column="Clinic",
    window_days=7,
)


def _lists(tmp_path: Path) -> pl.DataFrame:
    path = tmp_path / "list.csv"
    path.write_text(
        "NHS No,Appt,Clinic\n"
        f"{IN},2026-12-04,Eyes\n"  # data row 1: today, the window's first day
        f"{MIXED},2026-12-12,Ears\n"  # data row 2: today + 8, one day past the window
        f"{MIXED},2026-12-11,Ears\n"  # data row 3: today + 7, its last day
        f"{BEFORE},2026-12-03,Eyes\n"  # data row 4: yesterday
        f"{NO_DATE},,Eyes\n"  # data row 5
        f"{BAD_DATE},2026-02-31,Eyes\n"  # data row 6: not a date
        f"{MIXED},2026-12-05,Nose\n"  # data row 7
        f"{AFTER},2027-01-30,Eyes\n"  # data row 8
        "123,2026-12-05,Eyes\n"  # data row 9: invalid number, in the window
    )
    return read_patient_lists([path], SPEC)


def test_rows_outside_the_window_are_marked_with_why(tmp_path: Path) -> None:
    windowed = apply_window(_lists(tmp_path), 7, TODAY)
    assert windowed.select("_source_row", WINDOW_REASON).rows() == [
        (1, None),
        (2, "outside_window"),
        (3, None),
        (4, "outside_window"),
        (5, "no_appointment_date"),
        (6, "no_appointment_date"),
        (7, None),
        (8, "outside_window"),
        (9, None),
    ]


def test_without_a_window_no_row_is_marked(tmp_path: Path) -> None:
    windowed = apply_window(_lists(tmp_path), None, TODAY)
    assert windowed.get_column(WINDOW_REASON).null_count() == windowed.height


def test_a_child_is_queried_for_its_first_row_in_the_window(tmp_path: Path) -> None:
    windowed = apply_window(_lists(tmp_path), 7, TODAY)
    source = str(tmp_path / "list.csv")
    assert list(query_reasons(reason_frame(windowed))) == [
        QueryReason(IN, source, 1, "Eyes", "2026-12-04", 1),
        QueryReason(MIXED, source, 3, "Ears", "2026-12-11", 2),
    ]


def test_outside_rows_are_reported_outside_window_and_not_as_exceptions(tmp_path: Path) -> None:
    windowed = apply_window(_lists(tmp_path), 7, TODAY)
    answered = [
        ChildOutcome(IN, Outcome.NOT_FLAGGED, None, None, 1, "M-IN", "2026-12-04T01:00:00.000+00:00"),
        ChildOutcome(MIXED, Outcome.NOT_FLAGGED, None, None, 1, "M-MIXED", "2026-12-04T01:00:01.000+00:00"),
    ]
    results = build_results(windowed, frame_of_outcomes(answered))
    assert results.select("source_row", "outcome", "reason", "attempts", "message_id").rows() == [
        (1, "not_flagged", None, 1, "M-IN"),
        (2, "outside_window", "outside_window", 0, None),
        (3, "not_flagged", None, 1, "M-MIXED"),
        (4, "outside_window", "outside_window", 0, None),
        (5, "outside_window", "no_appointment_date", 0, None),
        (6, "outside_window", "no_appointment_date", 0, None),
        (7, "not_flagged", None, 1, "M-MIXED"),
        (8, "outside_window", "outside_window", 0, None),
        (9, "invalid_nhs_number", "not_10_digits", 0, None),
    ]
    assert results.filter(pl.col("source_row") == 6).get_column("warnings").to_list() == [
        "bad_appointment_date"
    ]
    assert WINDOW_REASON not in results.columns
    assert Outcome.OUTSIDE_WINDOW.final
    assert Outcome.OUTSIDE_WINDOW.value not in EXCEPTION_OUTCOMES


def test_a_list_may_not_use_the_runs_own_column_name(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(f"NHS No,Appt,Clinic,{WINDOW_REASON}\n{IN},2026-12-04,Eyes,x\n")
    with pytest.raises(InputError, match=f"column name '{WINDOW_REASON}' is reserved"):
        read_patient_lists([path], SPEC)


@pytest.mark.parametrize("width", [1, 3])
def test_run_inputs_come_back_exactly_from_their_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    frame = apply_window(_lists(tmp_path), 7, TODAY)
    monkeypatch.setattr("batch.run_inputs.PART_CELLS", frame.width * width)
    parts = encode(frame)
    assert [rows for rows, _ in parts] == [width] * (frame.height // width) + (
        [frame.height % width] if frame.height % width else []
    )
    back = decode([data for _, data in parts])
    assert back.equals(frame)
    assert back.schema == frame.schema
