"""A report as an Excel workbook that keeps every value as it is.

Opened from CSV, Excel turns an NHS number or a phone number into a number (dropping a leading zero, or
writing 9.43E+09). Here every text value is written as a text cell in a text-formatted column, so it stays
exactly the Parquet value; ISO date columns become date cells shown `yyyy-mm-dd`; numbers and true/false stay
typed. No cell is ever a formula or a link: text that starts with `=` is text. The header row is frozen and
carries an autofilter.

The cells are written with xlsxwriter directly, not as an Excel table (as `polars.DataFrame.write_excel`
does): a table needs column names that differ ignoring case, and a clinic list may not have them.
xlsxwriter runs in `constant_memory` mode: each row goes to disk once written, so a workbook of tens of
thousands of flagged children costs no more memory than a small one (in memory it held every cell as a
Python object, over 100 MiB for a large run). The rows come from the staged Parquet file a batch at a time
(the whole file read at once was +12.6 MiB at 44,000 flagged rows). Its working files go in the folder the
workbook is staged in, the run's private folder, never the system temporary folder.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
from xlsxwriter import Workbook

# Columns written as date cells when every value in them is an ISO date.
DATE_COLUMNS = ("plan_start", "plan_end")
DATE_FORMAT = "yyyy-mm-dd"
TEXT_FORMAT = "@"
MAX_WIDTH = 50
BATCH_ROWS = 10_000
"""Rows read at a time from a lazy source (the flagged Parquet's row groups are this size too)."""

_OPTIONS = {
    "constant_memory": True,
    "strings_to_numbers": False,
    "strings_to_formulas": False,
    "strings_to_urls": False,
    "nan_inf_to_errors": True,
}


def _date_columns(rows: pl.LazyFrame, schema: pl.Schema) -> list[str]:
    """The DATE_COLUMNS whose every non-empty value is an ISO date: decided over the whole column."""
    candidates = [name for name in DATE_COLUMNS if schema.get(name) == pl.String]
    if not candidates:
        return []
    verdicts = rows.select(
        (_as_date(name).null_count() == pl.col(name).null_count()).alias(name) for name in candidates
    ).collect()
    return [name for name in candidates if verdicts.get_column(name).item()]


def _as_date(name: str) -> pl.Expr:
    return pl.col(name).str.strptime(pl.Date, "%Y-%m-%d", strict=False)


def _width(frame: pl.DataFrame, name: str) -> int:
    values = frame.get_column(name).head(1000).cast(pl.String).str.len_chars().max()
    longest = max(len(name), values if isinstance(values, int) else 0)
    return min(longest + 2, MAX_WIDTH)


def write_xlsx(
    rows: pl.DataFrame | pl.LazyFrame, path: Path, sheet: str, *, batch_rows: int = BATCH_ROWS
) -> None:
    """Write `rows` as one worksheet named `sheet` to `path` (an existing file is replaced).

    A lazy frame (a Parquet scan) is read `batch_rows` rows at a time: the workbook never holds a whole run's
    flagged rows in memory, only which columns are dates and how wide the columns are.
    """
    rows = rows.lazy()
    schema = rows.collect_schema()
    dates = _date_columns(rows, schema)
    typed = rows.with_columns(_as_date(name).alias(name) for name in dates)
    types = typed.collect_schema()
    height = int(rows.select(pl.len()).collect().item())
    head = typed.head(1000).collect()
    workbook = Workbook(str(path), {**_OPTIONS, "tmpdir": str(path.parent)})
    try:
        sheet_ = workbook.add_worksheet(sheet)
        header = workbook.add_format({"bold": True, "bottom": 1, "num_format": TEXT_FORMAT})
        text = workbook.add_format({"num_format": TEXT_FORMAT})
        day = workbook.add_format({"num_format": DATE_FORMAT})
        writers: list[Any] = []
        for col, (name, dtype) in enumerate(types.items()):
            sheet_.write_string(0, col, name, header)
            if dtype == pl.Date:
                sheet_.set_column(col, col, max(_width(head, name), 12), day)
                writers.append((sheet_.write_datetime, day))
            elif dtype == pl.Boolean:
                sheet_.set_column(col, col, _width(head, name))
                writers.append((sheet_.write_boolean, None))
            elif dtype.is_numeric():
                sheet_.set_column(col, col, _width(head, name))
                writers.append((sheet_.write_number, None))
            else:
                sheet_.set_column(col, col, _width(head, name), text)
                writers.append((_text_writer(sheet_), text))
        del head
        row = 1
        for offset in range(0, height, batch_rows):
            for values in typed.slice(offset, batch_rows).collect().iter_rows():
                for col, value in enumerate(values):
                    if value is None:
                        continue
                    write, fmt = writers[col]
                    write(row, col, value, fmt)
                row += 1
        sheet_.freeze_panes(1, 0)
        sheet_.autofilter(0, 0, max(height, 1), max(len(types) - 1, 0))
    finally:
        workbook.close()


def _text_writer(sheet: Any) -> Any:
    def write(row: int, col: int, value: object, fmt: Any) -> None:
        sheet.write_string(row, col, value if isinstance(value, str) else _text(value), fmt)

    return write


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)
