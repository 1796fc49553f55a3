"""CSV cells that are safe to open in a spreadsheet.

Excel, LibreOffice and Google Sheets run a cell that starts with `=`, `+`, `-` or `@` (and some read a leading
tab or carriage return the same way) as a formula: a name such as `=HYPERLINK(...)` in a clinic list, or a
value in a reply, must not become one. Such text cells get a leading `'`, which spreadsheets show as text
(OWASP's advice for CSV injection). Only CSV is changed: Parquet keeps every value exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import polars as pl

FORMULA_START = r"^[=+\-@\t\r]"


def excel_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with every text cell that a spreadsheet would run as a formula prefixed with `'`."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in text
    )


def write_csv(frame: pl.DataFrame, path: Path | BinaryIO, *, include_header: bool = True) -> None:
    """Write `frame` as CSV with formula-safe text cells (to an open file: after what it holds already)."""
    excel_safe(frame).write_csv(path, include_header=include_header)
