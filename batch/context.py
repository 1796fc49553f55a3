"""Who a report row is about, for the reports people read: clinic, name, date of birth, appointment.

The values come from the columns the job names (`[input] clinic_column`, `name_column`,
`date_of_birth_column`, `appointment_date_column`), copied by the reader into its internal columns; a column
the job does not name is null throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from batch.patients import (
    APPOINTMENT_DATE,
    CLINIC,
    DATE_OF_BIRTH,
    NHS_NUMBER,
    PATIENT_NAME,
    SOURCE_FILE,
    SOURCE_ROW,
)

PERSON_COLUMNS = ("patient_name", "date_of_birth", "clinic")


def row_context(patients: pl.DataFrame) -> pl.DataFrame:
    """Per input row (`source_file`, `source_row`): clinic, name, date of birth and ISO appointment date."""
    return patients.select(
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_ROW).alias("source_row"),
        pl.col(CLINIC).alias("clinic"),
        pl.col(PATIENT_NAME).alias("patient_name"),
        pl.col(DATE_OF_BIRTH).alias("date_of_birth"),
        pl.col(APPOINTMENT_DATE).dt.to_string("%Y-%m-%d").alias("appointment_date"),
    )


def row_context_of(patients: pl.DataFrame) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """`row_context` of just the input rows asked for (`source_file`, `source_row`): the page shows flagged and
    exception rows only, so the context of every row of a run is never made."""

    def context(rows: pl.DataFrame) -> pl.DataFrame:
        keys = rows.select(pl.col("source_file").alias(SOURCE_FILE), pl.col("source_row").alias(SOURCE_ROW))
        return row_context(patients.join(keys, on=[SOURCE_FILE, SOURCE_ROW], how="semi"))

    return context


def child_context(patients: pl.DataFrame) -> pl.DataFrame:
    """Per valid NHS number: name, date of birth and clinic from its first row in the lists."""
    return (
        patients.filter(pl.col(NHS_NUMBER).is_not_null())
        .sort(SOURCE_FILE, SOURCE_ROW)
        .unique(NHS_NUMBER, keep="first", maintain_order=True)
        .select(
            pl.col(NHS_NUMBER).alias("nhs_number"),
            pl.col(PATIENT_NAME).alias("patient_name"),
            pl.col(DATE_OF_BIRTH).alias("date_of_birth"),
            pl.col(CLINIC).alias("clinic"),
        )
    )
