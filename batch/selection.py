"""Which rows of a run are queried, and why: the appointment window and each child's legitimate relationship.

A CP-IS query needs a legitimate relationship with the child: here, an appointment. With `[input] window_days
= N`, only rows whose appointment falls between the run's reference date (today in Europe/London when the run
started; a resumed run keeps it) and N days later, both included, are queried. The others are marked in
`_window_reason` (`no_appointment_date` when the date is missing or unreadable, `outside_window` otherwise) and
end `outside_window` without a query. A child with some rows in the window and some outside is queried once;
only its rows in the window get its answer. Without `window_days` every row with a valid number is queried.

Why a child is queried is the first of its rows in the window, in the order the lists were read: its source
file and row, clinic and appointment date, which the audit trail records with each query.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import polars as pl

from batch.patients import (
    APPOINTMENT_DATE,
    CLINIC,
    NHS_NUMBER,
    NHS_REASON,
    SOURCE_FILE,
    SOURCE_ROW,
    WINDOW_REASON,
)
from batch.store import QueryReason

NO_APPOINTMENT_DATE = "no_appointment_date"
OUTSIDE_WINDOW = "outside_window"


def apply_window(patients: pl.DataFrame, window_days: int | None, today: date) -> pl.DataFrame:
    """The rows with `_window_reason` set where the appointment window rules a row out (null elsewhere)."""
    if window_days is None:
        reason = pl.lit(None, pl.String)
    else:
        day = pl.col(APPOINTMENT_DATE)
        last = today + timedelta(days=window_days)
        reason = (
            pl.when(day.is_null())
            .then(pl.lit(NO_APPOINTMENT_DATE))
            .when((day < pl.lit(today)) | (day > pl.lit(last)))
            .then(pl.lit(OUTSIDE_WINDOW))
            .otherwise(pl.lit(None, pl.String))
        )
    return patients.with_columns(reason.alias(WINDOW_REASON))


def queried(patients: pl.DataFrame) -> pl.Expr:
    """Rows whose child is queried for them: a valid number, and in the window when there is one."""
    in_window = pl.col(WINDOW_REASON).is_null() if WINDOW_REASON in patients.columns else pl.lit(True)
    return pl.col(NHS_NUMBER).is_not_null() & pl.col(NHS_REASON).is_null() & in_window


def reason_frame(patients: pl.DataFrame) -> pl.DataFrame:
    """One row per child to query, in NHS number order: its first row in the window, and how many it has
    (the columns of `QueryReason`, in its order)."""
    return (
        patients.filter(queried(patients))
        .group_by(NHS_NUMBER, maintain_order=True)
        .agg(
            pl.col(SOURCE_FILE).first(),
            pl.col(SOURCE_ROW).first(),
            pl.col(CLINIC).first(),
            pl.col(APPOINTMENT_DATE).first().dt.to_string("%Y-%m-%d"),
            pl.len().cast(pl.Int64),
        )
        .sort(NHS_NUMBER)
    )


def query_reasons(reasons: pl.DataFrame) -> Iterator[QueryReason]:
    """`reason_frame`'s rows as `QueryReason`s, made one at a time: a run of any size holds no list of them."""
    for nhs_number, source_file, source_row, clinic, appointment_date, rows in reasons.iter_rows():
        yield QueryReason(
            nhs_number=nhs_number,
            source_file=source_file,
            source_row=source_row,
            clinic=clinic,
            appointment_date=appointment_date,
            input_rows=rows,
        )
