"""Reading clinic lists: file-level errors, row-level NHS problems, column mapping, duplicates, Parquet."""

from __future__ import annotations

import datetime as dt
import io
import os
import pickle
import re
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batch import patients
from batch.patients import (
    INTERNAL_COLUMNS,
    MAX_COLUMNS,
    MAX_LINE_BYTES,
    MAX_ROWS,
    InputError,
    InputSpec,
    read_patient_lists,
    resolve_inputs,
)

SPEC = InputSpec(nhs_number_column="NHS No.", appointment_date_column="Appt Date")
# Fixture numbers: 999 range with valid check digits.
N1, N2, N3 = "9991234012", "9991234020", "9990000018"
FIXTURE_NUMBERS = (N1, N2, N3)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def csv_bytes(*lines: str, newline: str = "\n") -> bytes:
    return (newline.join(lines) + newline).encode()


def parquet(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


def read_one(path: Path, spec: InputSpec = SPEC, profile: str = "simulated") -> pl.DataFrame:
    return read_patient_lists([path], spec, profile)  # type: ignore[arg-type]


def assert_no_patient_data(error: InputError) -> None:
    message = str(error).replace(str(error.path), "<path>")
    assert "\n" not in message
    for number in FIXTURE_NUMBERS:
        assert number not in message
        assert number[:9] not in message
    assert not re.search(r"\d{9,}", message)


def test_mapping_names_are_the_specified_ones() -> None:
    assert INTERNAL_COLUMNS == (
        "_source_file",
        "_source_row",
        "_nhs_number",
        "_nhs_reason",
        "_nhs_warning",
        "_appointment_date",
        "_clinic",
        "_patient_name",
        "_date_of_birth",
    )


# --- file-level problems ------------------------------------------------------------------------------


def _duplicate_parquet_names(path: Path) -> Path:
    # polars cannot build such a file; rename the second column in the footer (same length keeps it valid).
    buffer = io.BytesIO()
    pl.DataFrame({"NHS No.": [N1], "NHS No:": ["x"]}).write_parquet(buffer)
    return write(path, buffer.getvalue().replace(b"NHS No:", b"NHS No."))


def _truncated_parquet(path: Path) -> Path:
    buffer = io.BytesIO()
    pl.DataFrame({"NHS No.": [N1] * 100}).write_parquet(buffer)
    data = buffer.getvalue()
    return write(path, data[: len(data) // 2])


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], int | None, str]] = {
    "empty": (lambda d: write(d / "l.csv", b""), None, "empty file"),
    "blank_lines_only": (lambda d: write(d / "l.csv", b"\r\n  \n\n"), None, "empty file"),
    "bom_only": (lambda d: write(d / "l.csv", b"\xef\xbb\xbf"), None, "empty file"),
    "header_only": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date")),
        None,
        "no data rows (header only)",
    ),
    "header_and_blank_rows": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date", "", ",")),
        None,
        "no data rows (header only)",
    ),
    "nhs_column_missing": (
        lambda d: write(d / "l.csv", csv_bytes("NHS Number,Appt Date", f"{N1},2024-01-02")),
        1,
        "column 'NHS No.' not found",
    ),
    "date_column_missing": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Date", f"{N1},2024-01-02")),
        1,
        "column 'Appt Date' not found",
    ),
    "semicolon_delimited": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.;Appt Date", f"{N1};2024-01-02")),
        1,
        "column 'NHS No.' not found; wrong delimiter? found ';'",
    ),
    "tab_delimited": (
        lambda d: write(d / "l.tsv", csv_bytes("NHS No.\tAppt Date", f"{N1}\t2024-01-02")),
        1,
        "column 'NHS No.' not found; wrong delimiter? found tab",
    ),
    "duplicate_column_names": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date,NHS No.", f"{N1},2024-01-02,{N2}")),
        1,
        "duplicate column names (columns 1 and 3)",
    ),
    "reserved_column_name": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date,_source_row", f"{N1},2024-01-02,7")),
        1,
        "column name '_source_row' is reserved for the reader's own columns",
    ),
    "not_utf8": (
        lambda d: write(
            d / "l.csv", csv_bytes("NHS No.,Appt Date,Name", f"{N1},,A", f"{N2},,B") + b"9,,Caf\xe9\n"
        ),
        4,
        "bytes that are not valid utf-8 text (is the file in another encoding?)",
    ),
    "truncated_utf8_at_end": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},") + b"x\xc3"),
        3,
        "bytes that are not valid utf-8 text (is the file in another encoding?)",
    ),
    "nul_byte": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},", f"{N2},\x00")),
        3,
        "binary data (NUL byte), not CSV text",
    ),
    "parquet_named_csv": (
        lambda d: parquet(d / "l.csv", pl.DataFrame({"NHS No.": [N1]})),
        None,
        "file holds Parquet data, not CSV text (name it .parquet)",
    ),
    "xlsx_named_csv": (
        lambda d: write(d / "l.csv", b"PK\x03\x04" + bytes(200)),
        None,
        "file is a ZIP archive such as an Excel workbook, not CSV text (export it as CSV)",
    ),
    "utf16_text": (
        lambda d: write(d / "l.csv", b"\xff\xfe" + "NHS No.\n".encode("utf-16-le")),
        None,
        "file is UTF-16 text (save it as UTF-8 CSV)",
    ),
    "line_too_long": (
        lambda d: write(
            d / "l.csv",
            csv_bytes("NHS No.,Appt Date,Note", f"{N1},,short")
            + f"{N2},,".encode()
            + b"x" * MAX_LINE_BYTES
            + b"\n",
        ),
        3,
        f"line longer than {MAX_LINE_BYTES} bytes",
    ),
    "more_fields_than_header": (
        lambda d: write(
            d / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},", f"{N2},2024-01-02,Smith, John")
        ),
        3,
        "malformed CSV: more fields than the header, or an unbalanced quote",
    ),
    "unbalanced_quote": (
        lambda d: write(d / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},", f'{N2},"2024-01-02')),
        3,
        "malformed CSV: more fields than the header, or an unbalanced quote",
    ),
    "missing_file": (lambda d: d / "absent.csv", None, "file not found"),
    "directory": (lambda d: (d / "lists.csv").mkdir() or d / "lists.csv", None, "is a directory, not a file"),
    "unsupported_suffix": (
        lambda d: write(d / "l.xlsx", b"PK\x03\x04"),
        None,
        "unsupported file type '.xlsx' (expected .csv, .parquet, .pq, .tsv, .txt)",
    ),
    "parquet_corrupt": (
        lambda d: write(d / "l.parquet", b"PAR1 not really parquet PAR1"),
        None,
        "not a readable Parquet file (corrupt or truncated)",
    ),
    "parquet_truncated": (
        lambda d: _truncated_parquet(d / "l.parquet"),
        None,
        "not a readable Parquet file (corrupt or truncated)",
    ),
    "parquet_integer_column": (
        lambda d: parquet(d / "l.parquet", pl.DataFrame({"NHS No.": [int(N1)]})),
        None,
        "column 'NHS No.' is Int64: NHS numbers must be stored as text "
        "(leading zeros and digits may have been lost)",
    ),
    "parquet_float_column": (
        lambda d: parquet(d / "l.pq", pl.DataFrame({"NHS No.": [float(N1)]})),
        None,
        "column 'NHS No.' is Float64: NHS numbers must be stored as text "
        "(leading zeros and digits may have been lost)",
    ),
    "parquet_date_column": (
        lambda d: parquet(d / "l.parquet", pl.DataFrame({"NHS No.": [dt.date(2024, 1, 2)]})),
        None,
        "column 'NHS No.' is Date: NHS numbers must be stored as text",
    ),
    "parquet_missing_column": (
        lambda d: parquet(d / "l.parquet", pl.DataFrame({"NHS": [N1], "Appt Date": ["2024-01-02"]})),
        None,
        "column 'NHS No.' not found",
    ),
    "parquet_no_rows": (
        lambda d: parquet(
            d / "l.parquet",
            pl.DataFrame(
                {"NHS No.": [], "Appt Date": []}, schema=[("NHS No.", pl.String), ("Appt Date", pl.String)]
            ),
        ),
        None,
        "no data rows (header only)",
    ),
    "parquet_binary_date_column": (
        lambda d: parquet(d / "l.parquet", pl.DataFrame({"NHS No.": [N1], "Appt Date": [b"\xff"]})),
        None,
        "column 'Appt Date' is Binary: nested or binary columns cannot be reported",
    ),
    "parquet_nested_nhs_column": (
        lambda d: parquet(d / "l.parquet", pl.DataFrame({"NHS No.": [[N1]]})),
        None,
        "column 'NHS No.' is List(String): NHS numbers must be stored as text",
    ),
    "parquet_duplicate_column_names": (
        lambda d: _duplicate_parquet_names(d / "l.parquet"),
        None,
        "duplicate column names",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(tmp_path: Path, case: str) -> None:
    build, row, reason = BAD_INPUTS[case]
    path = build(tmp_path)
    with pytest.raises(InputError) as caught:
        read_one(path)
    assert caught.value.path == path
    assert (caught.value.row, caught.value.reason) == (row, reason)
    assert_no_patient_data(caught.value)


def test_unreadable_file_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too, where chmod cannot make a file unreadable: the open itself is made to fail.
    path = write(tmp_path / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},"))
    real_open = Path.open

    def refusing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    for attempt in (lambda: read_one(path), lambda: resolve_inputs("l.csv", tmp_path)):
        with pytest.raises(InputError) as caught:
            attempt()
        assert (caught.value.row, caught.value.reason) == (None, "cannot read file: permission denied")


# A real mode-000 file (with root's DAC capabilities dropped) is covered end to end in
# tests/test_bad_input.py::test_unreadable_file.


def test_error_message_format(tmp_path: Path) -> None:
    with_row = InputError(tmp_path / "a.csv", 7, "line longer than 1 bytes")
    assert str(with_row) == f"{tmp_path / 'a.csv'}: row 7: line longer than 1 bytes"
    without_row = InputError(tmp_path / "a.csv", None, "empty file")
    assert str(without_row) == f"{tmp_path / 'a.csv'}: empty file"
    copy = pickle.loads(pickle.dumps(with_row))
    assert (copy.path, copy.row, copy.reason) == (with_row.path, 7, with_row.reason)


def test_line_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    prefix = f"{N1},,".encode()
    line = prefix + b"x" * (MAX_LINE_BYTES - len(prefix))
    path = write(tmp_path / "l.csv", csv_bytes("NHS No.,Appt Date,Note") + line + b"\n")
    frame = read_one(path)
    assert frame["_nhs_number"].to_list() == [N1]
    assert len(frame["Note"][0]) == MAX_LINE_BYTES - len(prefix)


def test_bad_byte_after_many_chunks_names_its_row(tmp_path: Path) -> None:
    rows = [f"{N1},2024-01-02,{'é' * (i % 50)}" for i in range(20_000)]  # multi-byte chars straddle chunks
    data = csv_bytes("NHS No.,Appt Date,Note", *rows) + b"x,,\x80\n"
    path = write(tmp_path / "l.csv", data)
    with pytest.raises(InputError) as caught:
        read_one(path)
    assert caught.value.row == 20_002
    rows_ok = write(tmp_path / "ok.csv", csv_bytes("NHS No.,Appt Date,Note", *rows))
    assert read_one(rows_ok).height == 20_000


@pytest.mark.slow
def test_one_gibibyte_single_line_fails_fast_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.csv"
    block = b"9" * (1 << 20)
    with path.open("wb") as handle:
        for _ in range(1024):
            handle.write(block)
    del block
    assert path.stat().st_size == 1 << 30

    bytes_read = 0
    real_open = Path.open

    class CountingReader(io.RawIOBase):
        def __init__(self, inner: io.BufferedReader) -> None:
            self._inner = inner

        def read(self, size: int = -1) -> bytes:
            nonlocal bytes_read
            data = self._inner.read(size)
            bytes_read += len(data)
            return data

        def close(self) -> None:
            self._inner.close()
            super().close()

    def counting_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        return CountingReader(handle) if self == path and "b" in mode else handle

    monkeypatch.setattr(Path, "open", counting_open)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            read_one(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        path.unlink()  # pytest keeps recent tmp dirs; do not leave a gibibyte behind
    assert (caught.value.row, caught.value.reason) == (1, f"line longer than {MAX_LINE_BYTES} bytes")
    assert peak < 64 << 20
    # It stopped soon after the limit instead of streaming the whole file.
    assert MAX_LINE_BYTES < bytes_read < 4 * MAX_LINE_BYTES


# --- row-level content ---------------------------------------------------------------------------------


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + csv_bytes("NHS No.,Appt Date,Name", f"{N1},2024-01-02,Ann", newline="\r\n")
    path = write(tmp_path / "l.csv", data)
    frame = read_one(path)
    assert frame.row(0, named=True) == {
        "NHS No.": N1,
        "Appt Date": "2024-01-02",
        "Name": "Ann",
        "_source_file": str(path),
        "_source_row": 1,
        "_nhs_number": N1,
        "_nhs_reason": None,
        "_nhs_warning": None,
        "_appointment_date": dt.date(2024, 1, 2),
        "_clinic": None,
        "_patient_name": None,
        "_date_of_birth": None,
    }


def test_excel_damage_is_a_row_reason_not_a_file_error(tmp_path: Path) -> None:
    data = csv_bytes(
        "NHS No.,Appt Date",
        "9.99123E+09,2024-01-02",
        f"{N1[:9]},2024-01-02",
        f"{N2}.0,2024-01-02",
        f"'{N3},2024-01-02",
        "9991234013,2024-01-02",
        ",2024-01-02",
    )
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.select("_source_row", "_nhs_number", "_nhs_reason", "_nhs_warning").rows() == [
        (1, None, "scientific_notation", None),
        (2, None, "leading_zero_lost", None),
        (3, N2, None, "float_suffix"),
        (4, N3, None, None),
        (5, None, "bad_check_digit", None),
        (6, None, "empty", None),
    ]
    # The original text is kept untouched beside the normalised number.
    assert frame["NHS No."].to_list()[:4] == ["9.99123E+09", N1[:9], f"{N2}.0", f"'{N3}"]


def test_odd_column_names_are_mapped(tmp_path: Path) -> None:
    data = csv_bytes('Clinic,"NHS No.",Appt Date,Notes', "Leeds,999 123 4012,03/04/2024,first visit")
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.columns == ["Clinic", "NHS No.", "Appt Date", "Notes", *INTERNAL_COLUMNS]
    assert frame.row(0)[:4] == ("Leeds", "999 123 4012", "03/04/2024", "first visit")
    assert (frame["_nhs_number"][0], frame["_appointment_date"][0]) == (N1, dt.date(2024, 4, 3))


def test_column_names_match_ignoring_case_and_spaces_when_unambiguous(tmp_path: Path) -> None:
    data = csv_bytes(" nhs no. ,APPT DATE", f"{N1},2024-01-02")
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.columns[:2] == [" nhs no. ", "APPT DATE"]
    assert frame["_nhs_number"].to_list() == [N1]
    ambiguous = csv_bytes("nhs no.,NHS NO.,Appt Date", f"{N1},{N2},2024-01-02")
    with pytest.raises(InputError, match=r"column 'NHS No\.' not found"):
        read_one(write(tmp_path / "m.csv", ambiguous))


def test_duplicates_across_lists_are_warned_on_later_rows(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", csv_bytes("NHS No.,Appt Date", f"{N1},", f"{N2}.0,", f"{N1},"))
    second = write(tmp_path / "b.csv", csv_bytes("NHS No.,Appt Date", f"{N2},", f"{N3},", "9991234013,"))
    frame = read_patient_lists([first, second], SPEC)
    assert frame.select("_source_file", "_source_row", "_nhs_number", "_nhs_warning").rows() == [
        (str(first), 1, N1, None),
        (str(first), 2, N2, "float_suffix"),
        (str(first), 3, N1, "duplicate"),
        (str(second), 1, N2, "duplicate"),
        (str(second), 2, N3, None),
        (str(second), 3, None, None),
    ]


def test_bad_appointment_date_is_a_row_warning(tmp_path: Path) -> None:
    data = csv_bytes(
        "NHS No.,Appt Date",
        f"{N1},2024-02-30",
        f"{N2}.0,next week",
        f"{N3},",
        f"{N1},2024-02-29",
        f"{N2}, 01/03/2024 ",
    )
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.select("_appointment_date", "_nhs_warning").rows() == [
        (None, "bad_appointment_date"),
        (None, "float_suffix,bad_appointment_date"),
        (None, None),
        (dt.date(2024, 2, 29), "duplicate"),
        (dt.date(2024, 3, 1), "duplicate"),
    ]


def test_configured_date_format(tmp_path: Path) -> None:
    spec = InputSpec("NHS No.", "Appt Date", appointment_date_format="%d.%m.%Y")
    data = csv_bytes("NHS No.,Appt Date", f"{N1},03.04.2024", f"{N2},2024-04-03")
    frame = read_one(write(tmp_path / "l.csv", data), spec)
    assert frame.select("_appointment_date", "_nhs_warning").rows() == [
        (dt.date(2024, 4, 3), None),
        (None, "bad_appointment_date"),
    ]


def test_blank_lines_are_skipped_but_rows_keep_their_numbers(tmp_path: Path) -> None:
    data = csv_bytes("NHS No.,Appt Date", f"{N1},", "", ",", f"{N2},")
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.select("_source_row", "_nhs_number").rows() == [(1, N1), (4, N2)]


def test_no_appointment_column_configured(tmp_path: Path) -> None:
    spec = InputSpec("NHS No.")
    frame = read_one(write(tmp_path / "l.csv", csv_bytes("NHS No.", N1)), spec)
    assert frame.schema["_appointment_date"] == pl.Date
    assert frame.select("_nhs_number", "_appointment_date", "_nhs_warning").rows() == [(N1, None, None)]


def test_every_column_is_text_and_kept(tmp_path: Path) -> None:
    data = csv_bytes("NHS No.,Appt Date,Count,Flag,", f"{N1},2024-01-02,007,TRUE,", f"{N2},,1e3,,")
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.columns == ["NHS No.", "Appt Date", "Count", "Flag", "_unnamed_5", *INTERNAL_COLUMNS]
    assert all(frame.schema[name] == pl.String for name in frame.columns[:5])
    assert frame["Count"].to_list() == ["007", "1e3"]
    assert frame.schema["_source_row"] == pl.Int64


def test_other_encoding_and_delimiter(tmp_path: Path) -> None:
    spec = InputSpec("NHS No.", "Appt Date", delimiter=";", encoding="cp1252")
    data = "NHS No.;Appt Date;Name\n999 123 4012;02/01/2024;Zoë Brontë\n".encode("cp1252")
    frame = read_one(write(tmp_path / "l.txt", data), spec)
    assert frame.select("Name", "_nhs_number", "_appointment_date").rows() == [
        ("Zoë Brontë", N1, dt.date(2024, 1, 2))
    ]


def test_live_profile_refuses_test_numbers_per_row(tmp_path: Path) -> None:
    frame = read_one(write(tmp_path / "l.csv", csv_bytes("NHS No.,Appt Date", f"{N1},")), profile="live")
    assert frame.select("_nhs_number", "_nhs_reason").rows() == [(None, "test_number_in_live")]


# --- Parquet -------------------------------------------------------------------------------------------


def test_parquet_with_text_column(tmp_path: Path) -> None:
    source = pl.DataFrame(
        {
            "NHS No.": [N1, "999 123 4020", None],
            "Appt Date": [dt.date(2024, 1, 2), None, dt.date(2024, 1, 4)],
            "Visits": [3, 4, 5],
            "Ward": ["a", "b", "a"],
            "Seen": [True, False, None],
            "Weight": [Decimal("12.50"), None, Decimal("3.25")],
            "Time": [dt.time(9, 30), None, dt.time(14, 0)],
        },
        schema_overrides={"Ward": pl.Categorical, "Weight": pl.Decimal(5, 2)},
    )
    path = parquet(tmp_path / "l.parquet", source)
    frame = read_one(path)
    originals = ["NHS No.", "Appt Date", "Visits", "Ward", "Seen", "Weight", "Time"]
    assert frame.columns == [*originals, *INTERNAL_COLUMNS]
    # Every kept column is text, so the CSV reports can hold it.
    assert [frame.schema[name] for name in originals] == [pl.String] * len(originals)
    assert frame.select(
        "Visits", "Ward", "Seen", "Weight", "_source_row", "_nhs_number", "_nhs_reason"
    ).rows() == [
        ("3", "a", "true", "12.50", 1, N1, None),
        ("4", "b", "false", None, 2, N2, None),
        ("5", "a", None, "3.25", 3, None, "empty"),
    ]
    assert frame["_appointment_date"].to_list() == [dt.date(2024, 1, 2), None, dt.date(2024, 1, 4)]
    assert frame["_nhs_warning"].to_list() == [None, None, None]


def test_parquet_datetime_appointments_and_categorical_numbers(tmp_path: Path) -> None:
    source = pl.DataFrame(
        {"NHS No.": [N1, N2], "Appt Date": [dt.datetime(2024, 5, 6, 9, 30), None]},
        schema_overrides={"NHS No.": pl.Categorical},
    )
    frame = read_one(parquet(tmp_path / "l.parquet", source))
    assert frame.select("NHS No.", "_nhs_number", "_appointment_date", "_nhs_warning").rows() == [
        (N1, N1, dt.date(2024, 5, 6), None),
        (N2, N2, None, None),
    ]
    assert frame.schema["Appt Date"] == pl.String


def test_csv_and_parquet_with_different_columns_are_combined(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", csv_bytes("NHS No.,Appt Date,Clinic", f"{N1},2024-01-02,Leeds"))
    second = parquet(
        tmp_path / "b.parquet", pl.DataFrame({"Ward": ["7"], "NHS No.": [N1], "Appt Date": [None]})
    )
    frame = read_patient_lists([first, second], SPEC)
    assert frame.columns == ["NHS No.", "Appt Date", "Clinic", "Ward", *INTERNAL_COLUMNS]
    assert frame.select("Clinic", "Ward", "_source_file", "_nhs_warning").rows() == [
        ("Leeds", None, str(first), None),
        (None, "7", str(second), "duplicate"),
    ]


@pytest.mark.parametrize(
    ("column", "shown", "reason"),
    [
        (pl.Series("Notes", [["a", "b"]]), "List", "nested or binary columns cannot be reported"),
        (pl.Series("Notes", [[1, 2]], dtype=pl.Array(pl.Int64, 2)), "Array", "nested or binary"),
        (pl.Series("Notes", [{"ward": "7", "bed": 3}]), "Struct", "nested or binary"),
        (pl.Series("Notes", [b"\x00\x01"]), "Binary", "nested or binary columns cannot be reported"),
        (
            pl.Series("Notes", [dt.timedelta(minutes=30)]),
            "Duration(time_unit='us')",
            "only text, number, date, time and true/false columns can be reported",
        ),
    ],
)
def test_parquet_columns_that_cannot_be_reported_are_refused(
    tmp_path: Path, column: pl.Series, shown: str, reason: str
) -> None:
    # Such a column used to pass and then crash the CSV report after every query had been sent.
    source = pl.DataFrame({"NHS No.": [N1], "Appt Date": ["2024-01-02"]}).with_columns(column)
    path = parquet(tmp_path / "l.parquet", source)
    with pytest.raises(InputError, match=re.escape(f"column 'Notes' is {shown}: {reason}")) as caught:
        read_one(path)
    assert (caught.value.path, caught.value.row) == (path, None)
    assert_no_patient_data(caught.value)


def test_a_list_with_an_unreportable_column_is_refused_even_after_a_good_one(tmp_path: Path) -> None:
    good = write(tmp_path / "a.csv", csv_bytes("NHS No.,Appt Date,Blob", f"{N1},,x"))
    bad = parquet(
        tmp_path / "b.parquet", pl.DataFrame({"NHS No.": [N2], "Appt Date": [None], "Blob": [b"x"]})
    )
    with pytest.raises(InputError, match="column 'Blob' is Binary: nested or binary") as caught:
        read_patient_lists([good, bad], SPEC)
    assert caught.value.path == bad


def test_column_names_that_look_like_patterns_mean_themselves(tmp_path: Path) -> None:
    # polars reads "*" and "^...$" in pl.col as patterns; a header may hold either.
    data = csv_bytes("NHS No.,Appt Date,*,^.*$", f"{N1},2024-01-02,star,caret")
    frame = read_one(write(tmp_path / "l.csv", data))
    assert frame.columns == ["NHS No.", "Appt Date", "*", "^.*$", *INTERNAL_COLUMNS]
    assert frame.row(0)[:4] == (N1, "2024-01-02", "star", "caret")
    assert frame.schema["_source_row"] == pl.Int64


# --- caps on a list's shape ----------------------------------------------------------------------------


def _wide_csv(path: Path, width: int) -> Path:
    names = ["NHS No.", "Appt Date", *(f"c{i}" for i in range(3, width + 1))]
    return write(path, csv_bytes(",".join(names), ",".join([N1, "2024-01-02", *[""] * (width - 2)])))


def _wide_parquet(path: Path, width: int) -> Path:
    extra = {f"c{i}": [None] for i in range(3, width + 1)}
    return parquet(path, pl.DataFrame({"NHS No.": [N1], "Appt Date": ["2024-01-02"], **extra}))


def test_a_list_of_the_most_columns_allowed_is_read(tmp_path: Path) -> None:
    for path in (
        _wide_csv(tmp_path / "l.csv", MAX_COLUMNS),
        _wide_parquet(tmp_path / "l.parquet", MAX_COLUMNS),
    ):
        frame = read_one(path)
        assert frame.width == MAX_COLUMNS + len(INTERNAL_COLUMNS)
        assert frame["_nhs_number"].to_list() == [N1]


@pytest.mark.parametrize("width", [MAX_COLUMNS + 1, 20_000])
@pytest.mark.parametrize(
    ("build", "suffix", "row"), [(_wide_csv, "csv", 1), (_wide_parquet, "parquet", None)]
)
def test_too_many_columns_are_refused(
    tmp_path: Path, width: int, build: Callable[[Path, int], Path], suffix: str, row: int | None
) -> None:
    # 20,000 columns once took minutes (a schema rebuilt per column); the refusal must come at once.
    path = build(tmp_path / f"l.{suffix}", width)
    with pytest.raises(
        InputError, match=re.escape(f"too many columns ({width}): a list may hold at most {MAX_COLUMNS}")
    ) as caught:
        read_one(path)
    assert (caught.value.path, caught.value.row) == (path, row)


def test_too_many_rows_in_parquet_are_refused_from_the_metadata(tmp_path: Path) -> None:
    # A constant column compresses to a few kB however many rows it has.
    rows = MAX_ROWS + 1
    path = parquet(tmp_path / "l.parquet", pl.DataFrame({"NHS No.": pl.repeat(N1, rows, eager=True)}))
    assert path.stat().st_size < 100_000
    with pytest.raises(
        InputError, match=re.escape(f"too many rows ({rows}): a list may hold at most {MAX_ROWS} data rows")
    ) as caught:
        read_one(path, InputSpec("NHS No."))
    assert (caught.value.path, caught.value.row) == (path, None)


def test_too_many_rows_in_csv_are_refused_while_scanning(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    with path.open("wb") as handle:
        handle.write(b"NHS No.\n")
        handle.write(b"x\n" * (MAX_ROWS + 1))
    with pytest.raises(
        InputError, match=re.escape(f"too many rows: a list may hold at most {MAX_ROWS} data rows")
    ) as caught:
        read_one(path, InputSpec("NHS No."))
    assert (caught.value.path, caught.value.row) == (path, MAX_ROWS + 2)


@pytest.mark.parametrize(
    ("data", "refused"),
    [
        (csv_bytes("NHS No.", N1, N2, N3), False),
        (csv_bytes("NHS No.", N1, N2, N3).rstrip(b"\n"), False),
        (csv_bytes("NHS No.", N1, N2, N3, N1), True),
        (csv_bytes("NHS No.", N1, N2, N3) + N1.encode(), True),
    ],
)
def test_row_cap_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, refused: bool
) -> None:
    monkeypatch.setattr(patients, "MAX_ROWS", 3)
    spec = InputSpec("NHS No.")
    csv_path = write(tmp_path / "l.csv", data)
    numbers = data.decode().splitlines()[1:]
    parquet_path = parquet(tmp_path / "l.parquet", pl.DataFrame({"NHS No.": numbers}))
    for path in (csv_path, parquet_path):
        if refused:
            with pytest.raises(InputError, match="a list may hold at most 3 data rows"):
                read_one(path, spec)
        else:
            assert read_one(path, spec).height == 3


# --- input specification and resolution ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nhs_number_column": ""}, "nhs_number_column"),
        ({"nhs_number_column": "n", "delimiter": ";;"}, "delimiter"),
        ({"nhs_number_column": "n", "delimiter": '"'}, "delimiter"),
        ({"nhs_number_column": "n", "encoding": "no-such-codec"}, "unknown encoding"),
        ({"nhs_number_column": "n", "encoding": "utf-16"}, "not ASCII-compatible"),
    ],
)
def test_input_spec_is_checked(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputSpec(**kwargs)


def test_resolve_inputs(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in ("b.csv", "a.csv", "c.parquet"):
        write(lists / name, b"x")
    (lists / "old.csv").mkdir()
    assert resolve_inputs("lists/*.csv", tmp_path) == [lists / "a.csv", lists / "b.csv"]
    assert resolve_inputs("lists/a.csv", tmp_path) == [lists / "a.csv"]
    assert resolve_inputs(str(lists / "*"), tmp_path / "elsewhere") == [
        lists / "a.csv",
        lists / "b.csv",
        lists / "c.parquet",
    ]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("lists/*.tsv", "no files match this pattern"),
        ("lists/missing.csv", "file not found"),
        ("lists", "is a directory, not a file"),
        ("lists/dir.csv", "is a directory, not a file"),
        ("lists/only_dirs*", "no files match this pattern"),
        ("", "no input path given"),
    ],
)
def test_resolve_inputs_errors(tmp_path: Path, pattern: str, reason: str) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "dir.csv").mkdir()
    (tmp_path / "lists" / "only_dirs1").mkdir()
    write(tmp_path / "lists" / "a.csv", b"x")
    with pytest.raises(InputError) as caught:
        resolve_inputs(pattern, tmp_path)
    assert (caught.value.row, caught.value.reason) == (None, reason)


def test_resolve_inputs_refuses_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        resolve_inputs("pipe.csv", tmp_path)
    with pytest.raises(InputError, match="not a regular file"):
        read_one(fifo)


def test_named_context_columns_are_copied_for_the_reports(tmp_path: Path) -> None:
    data = csv_bytes("nhs no.,Appt Date,CLINIC,Child Name,DOB", f"{N1},2024-01-02,ENT,Ann Smith,2019-05-06")
    spec = InputSpec(
        nhs_number_column="NHS No.",
        appointment_date_column="Appt Date",
        clinic_column="Clinic",
        name_column="child name",
        date_of_birth_column="DOB",
    )
    frame = read_patient_lists([write(tmp_path / "l.csv", data)], spec)
    assert frame.select("_clinic", "_patient_name", "_date_of_birth").row(0) == (
        "ENT",
        "Ann Smith",
        "2019-05-06",
    )


def test_a_named_context_column_that_is_missing_is_a_file_error(tmp_path: Path) -> None:
    data = csv_bytes("NHS No.,Appt Date", f"{N1},2024-01-02")
    spec = InputSpec(nhs_number_column="NHS No.", clinic_column="Clinic")
    with pytest.raises(InputError, match=r"l\.csv: row 1: column 'Clinic' not found"):
        read_patient_lists([write(tmp_path / "l.csv", data)], spec)


def test_a_window_needs_an_appointment_date_column() -> None:
    with pytest.raises(ValueError, match="window_days needs appointment_date_column"):
        InputSpec(nhs_number_column="NHS No.", window_days=7)
