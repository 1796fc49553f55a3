"""flagged.xlsx: every text value a text cell, exactly as in Parquet; ISO dates as dates; frozen, filterable header."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import openpyxl
import polars as pl
import pytest

from batch.xlsx import write_xlsx

FRAME = pl.DataFrame(
    {
        "NHS No": ["999 000 0018", "9990000026", None],
        "nhs_number": ["9990000018", "0990000026", None],
        "Name": ['=HYPERLINK("http://x","click")', "http://example.invalid/a", "@SUM(A1)"],
        "name": ["lower-case twin", "", "+1"],
        "source_row": [1, 2, 3],
        "plan_start": ["2026-05-01", None, "2024-02-29"],
        "plan_end": ["2026-05-01T10:30", None, None],
        "plan_active_on_appointment": [True, False, None],
        "la_office_phone": ["01632960000", "+441632960000", "0"],
        "la_code": ["E09000001", "00AB", "1E3"],
    }
)


def _read(path: Path) -> tuple[list[list[object]], list[list[str]], openpyxl.worksheet.worksheet.Worksheet]:
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    types = [[cell.data_type for cell in row] for row in sheet.iter_rows()]
    return values, types, sheet


def test_text_stays_text_dates_are_dates_and_nothing_is_a_formula(tmp_path: Path) -> None:
    path = tmp_path / "flagged.xlsx"
    write_xlsx(FRAME, path, "flagged")
    values, types, sheet = _read(path)
    assert sheet.title == "flagged"
    assert values == [
        list(FRAME.columns),
        [
            "999 000 0018",
            "9990000018",
            '=HYPERLINK("http://x","click")',
            "lower-case twin",
            1,
            datetime(2026, 5, 1),
            "2026-05-01T10:30",  # not every value an ISO date: the column stays text
            True,
            "01632960000",
            "E09000001",
        ],
        [
            "9990000026",
            "0990000026",
            "http://example.invalid/a",
            "",
            2,
            None,
            None,
            False,
            "+441632960000",
            "00AB",
        ],
        [None, None, "@SUM(A1)", "+1", 3, datetime(2024, 2, 29), None, None, "0", "1E3"],
    ]
    text_columns = [
        i for i, dtype in enumerate(FRAME.dtypes) if dtype == pl.String and FRAME.columns[i] != "plan_start"
    ]
    for row, row_values in zip(types[1:], values[1:], strict=True):
        for col in text_columns:
            if row_values[col] is not None:
                assert row[col] == "s", (FRAME.columns[col], row_values[col])
    assert sheet["F2"].number_format == "yyyy-mm-dd"
    assert sheet["I2"].number_format == "@"
    assert not sheet._hyperlinks


def test_header_is_frozen_and_filtered(tmp_path: Path) -> None:
    path = tmp_path / "flagged.xlsx"
    write_xlsx(FRAME, path, "flagged")
    _, _, sheet = _read(path)
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:J4"


def test_an_empty_report_has_its_header(tmp_path: Path) -> None:
    path = tmp_path / "flagged.xlsx"
    write_xlsx(FRAME.clear(), path, "flagged")
    values, _, sheet = _read(path)
    assert values == [list(FRAME.columns)]
    assert sheet.freeze_panes == "A2"


def test_rows_read_a_batch_at_a_time_give_the_same_workbook(tmp_path: Path) -> None:
    # A date column is decided over the whole column: here its second value is not a date, so its first
    # stays text too, though the first batch alone holds only a date.
    frame = FRAME.with_columns(pl.Series("plan_start", ["2026-05-01", "1 May 2026", None]))
    frame.write_parquet(tmp_path / "flagged.parquet")
    whole, batched = tmp_path / "whole.xlsx", tmp_path / "batched.xlsx"
    write_xlsx(frame, whole, "flagged")
    write_xlsx(pl.scan_parquet(tmp_path / "flagged.parquet"), batched, "flagged", batch_rows=1)
    (values, types, sheet), (batched_values, batched_types, batched_sheet) = _read(whole), _read(batched)
    assert batched_values == values and batched_types == types
    assert values[1][5] == "2026-05-01"
    assert batched_sheet.auto_filter.ref == sheet.auto_filter.ref == "A1:J4"
    widths = {key: (d.width, d.number_format) for key, d in sheet.column_dimensions.items()}
    assert {key: (d.width, d.number_format) for key, d in batched_sheet.column_dimensions.items()} == widths


def test_columns_are_as_wide_as_their_first_1000_values_and_keep_their_formats(tmp_path: Path) -> None:
    path = tmp_path / "flagged.xlsx"
    # Row 1001 is the longest value of its column: widths come from the first 1,000 rows only.
    frame = pl.DataFrame({"note": ["x" * 20] * 1000 + ["y" * 40]})
    write_xlsx(FRAME, path, "flagged")
    _, _, sheet = _read(path)
    # The longest of name and values, plus 2 (a date column at least 12); xlsxwriter adds 0.7109375.
    widths = {"A": 14, "B": 12, "C": 32, "D": 17, "E": 12, "F": 12, "G": 18, "H": 28, "I": 17, "J": 11}
    formats = {"E": "General", "F": "yyyy-mm-dd", "H": "General"}
    for letter, width in widths.items():
        dimension = sheet.column_dimensions[letter]
        assert (dimension.width, dimension.number_format) == (width + 0.7109375, formats.get(letter, "@"))
    header = sheet["A1"]
    assert header.font.b and header.border.bottom.style == "thin" and header.number_format == "@"
    write_xlsx(frame, path, "flagged")
    _, _, sheet = _read(path)
    assert sheet.column_dimensions["A"].width == 22 + 0.7109375
    # A Parquet column may be named "" and hold nothing: it is 2 wide.
    write_xlsx(pl.DataFrame({"": [None, None]}, schema={"": pl.String}), path, "flagged")
    _, _, sheet = _read(path)
    assert sheet.column_dimensions["A"].width == 2 + 0.7109375


def test_other_values_in_a_text_column_are_written_as_their_text(tmp_path: Path) -> None:
    path = tmp_path / "flagged.xlsx"
    frame = pl.DataFrame(
        {
            "seen_at": [datetime(2026, 5, 1, 10, 30)],
            "at": [datetime(2026, 5, 1, 10, 30).time()],
        }
    )
    write_xlsx(frame, path, "flagged")
    values, types, _ = _read(path)
    assert values[1] == ["2026-05-01T10:30:00", "10:30:00"] and types[1] == ["s", "s"]


def test_working_files_go_beside_the_workbook_not_in_the_system_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    path = tmp_path / "flagged.xlsx"
    write_xlsx(FRAME, path, "flagged")
    assert _read(path)[0][0] == list(FRAME.columns)
