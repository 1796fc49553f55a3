"""Analyst outputs for one run, written to temporary names and renamed into place.

`results.parquet` has every input row with exactly one outcome; `flagged.parquet`/`flagged.csv`/`flagged.xlsx`
one row per input row per plan; `exceptions.csv` the rows that need a look; `changes.parquet`/`changes.csv`
what changed since the job's previous complete run (batch/changes.py); `summary.json` counts;
`summary.html` the page for people (batch/summary_html.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path

import polars as pl
import polars.selectors as cs

from batch.changes import RunOutcomes, change_counts, changes_frame, compare_runs
from batch.context import PERSON_COLUMNS, child_context, row_context
from batch.csvsafe import write_csv
from batch.failpoints import failpoint
from batch.files import Privacy, clear_staged, private_dir, stage
from batch.patients import APPOINTMENT_DATE, NHS_NUMBER, RESERVED_COLUMNS, WINDOW_REASON
from batch.states import Outcome
from batch.summary import RunSummary
from batch.summary_html import summary_html_pieces
from batch.xlsx import write_xlsx

# Rows that need a look: neither answered nor deliberately left out of the window.
EXCEPTION_OUTCOMES = tuple(
    o.value for o in Outcome if o not in (Outcome.FLAGGED, Outcome.NOT_FLAGGED, Outcome.OUTSIDE_WINDOW)
)

RESULT_COLUMNS = (
    "source_file",
    "source_row",
    "nhs_number",
    "outcome",
    "reason",
    "warnings",
    "attempts",
    "message_id",
    "queried_at",
)
PLAN_COLUMNS = (
    "plan_type",
    "plan_start",
    "plan_end",
    "plan_active_on_appointment",
    "la_code",
    "la_name",
    "la_office_phone",
    "la_emergency_phone",
    "access_count",
    "last_access_at",
    "last_access_organisation",
    "child_records",
)
FLAGGED_COLUMNS = ("source_file", "source_row", "nhs_number", *PLAN_COLUMNS, "message_id", "queried_at")

# The outcome frame's columns the results take.
_ANSWER_COLUMNS = ("nhs_number", "outcome", "reason", "attempts", "message_id", "queried_at")
# How `FlagResult.to_json` lays a flagged child's answer out, for reading it in polars (no object per child).
_PLAN_STRUCT = pl.Struct(
    {
        "plan_type": pl.String,
        "plan_start": pl.String,
        "plan_end": pl.String,
        "la_code": pl.String,
        "la_name": pl.String,
        "la_office_phone": pl.String,
        "la_emergency_phone": pl.String,
    }
)
_RESULT_STRUCT = pl.Struct(
    {
        "plans": pl.List(_PLAN_STRUCT),
        "access_count": pl.Int64,
        "last_access_at": pl.String,
        "last_access_organisation": pl.String,
        "child_records": pl.Int64,
    }
)


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    results: Path
    flagged_parquet: Path
    flagged_csv: Path
    exceptions: Path
    summary: Path
    flagged_xlsx: Path
    changes_parquet: Path
    changes_csv: Path
    summary_html: Path


def _input_frame(patients: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Input columns as given, renamed `input_<name>` only where they collide with a report column."""
    reserved = set(RESULT_COLUMNS) | set(PLAN_COLUMNS)
    inputs = [c for c in patients.columns if c not in RESERVED_COLUMNS]
    renames = {c: f"input_{c}" for c in inputs if c in reserved}
    return patients.rename(renames), [renames.get(c, c) for c in inputs]


def _input_columns(results: pl.DataFrame) -> list[str]:
    return [c for c in results.columns if c not in RESULT_COLUMNS and c != APPOINTMENT_DATE]


def _column(prefix: str, name: str) -> pl.Expr:
    return pl.col(f"{prefix}{name}")


def build_results(patients: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """Every input row with exactly one outcome; `outcomes` is the run's outcome frame (`Store.outcome_frame`)."""
    frame, input_cols = _input_frame(patients)
    # The answers' columns get a prefix no input column has (input names are anything a list holds).
    q = "_q_"
    while any(c.startswith(q) for c in frame.columns):
        q = "_" + q
    answers = outcomes.select(_ANSWER_COLUMNS).rename({c: f"{q}{c}" for c in _ANSWER_COLUMNS})
    joined = frame.join(answers, left_on="_nhs_number", right_on=f"{q}nhs_number", how="left", coalesce=False)
    invalid = pl.col("_nhs_reason").is_not_null()
    # A valid row outside the appointment window is not answered, even when its child was queried for another.
    window = pl.col(WINDOW_REASON) if WINDOW_REASON in frame.columns else pl.lit(None, pl.String)
    skipped = ~invalid & window.is_not_null()
    answer = partial(_column, q)
    results = joined.select(
        cs.by_name(input_cols),
        pl.col("_source_file").alias("source_file"),
        pl.col("_source_row").alias("source_row"),
        pl.col("_nhs_number").alias("nhs_number"),
        pl.when(invalid)
        .then(pl.lit(Outcome.INVALID_NHS_NUMBER.value))
        .when(skipped)
        .then(pl.lit(Outcome.OUTSIDE_WINDOW.value))
        # A valid row with no stored outcome would be a bug; it is reported, never silently dropped.
        .otherwise(answer("outcome").fill_null("error"))
        .alias("outcome"),
        pl.when(invalid)
        .then(pl.col("_nhs_reason"))
        .when(skipped)
        .then(window)
        .when(answer("outcome").is_null())
        .then(pl.lit("internal:no_outcome"))
        .otherwise(answer("reason"))
        .alias("reason"),
        pl.col("_nhs_warning").alias("warnings"),
        pl.when(skipped)
        .then(pl.lit(0, pl.Int64))
        .otherwise(answer("attempts").fill_null(0))
        .alias("attempts"),
        pl.when(skipped).then(pl.lit(None, pl.String)).otherwise(answer("message_id")).alias("message_id"),
        pl.when(skipped).then(pl.lit(None, pl.String)).otherwise(answer("queried_at")).alias("queried_at"),
        pl.col(APPOINTMENT_DATE),
    )
    return results.sort("source_file", "source_row")


_DECODE_SLICE_ROWS = 1_000


def _plan_rows(stored: pl.DataFrame) -> pl.DataFrame:
    """One row per plan of each flagged child's stored answer (`nhs_number`, `result_json`)."""
    return (
        stored.select("nhs_number", pl.col("result_json").str.json_decode(_RESULT_STRUCT).alias("result"))
        .unnest("result")
        .explode("plans")
        .filter(pl.col("plans").is_not_null())
        .unnest("plans")
        .select("nhs_number", *(c for c in PLAN_COLUMNS if c != "plan_active_on_appointment"))
    )


def build_flagged(results: pl.DataFrame, outcomes: pl.DataFrame, reference_date: date) -> pl.DataFrame:
    """One row per flagged input row per plan, read from the flagged children's stored answers."""
    stored = outcomes.filter(
        (pl.col("outcome") == Outcome.FLAGGED.value) & pl.col("result_json").is_not_null()
    ).select("nhs_number", "result_json")
    # Decoded a slice at a time: polars' JSON decoding takes several times its input in working memory, which
    # for all the flagged children of a run at once was the largest step of its report phase (+130 MiB for the
    # 30,000 flagged of a 100,000-child run; +27 MiB in slices).
    plans = pl.concat(
        [_plan_rows(part) for part in stored.iter_slices(_DECODE_SLICE_ROWS)] or [_plan_rows(stored)]
    )
    flagged_rows = results.filter(pl.col("outcome") == "flagged")
    input_cols = _input_columns(results)
    joined = flagged_rows.join(plans, on="nhs_number", how="inner")
    day = pl.col(APPOINTMENT_DATE).fill_null(pl.lit(reference_date))
    start = pl.col("plan_start").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    end = pl.col("plan_end").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    active = (start.is_null() | (start <= day)) & (end.is_null() | (end >= day))
    return (
        joined.with_columns(active.alias("plan_active_on_appointment"))
        .select(cs.by_name(input_cols), *FLAGGED_COLUMNS)
        .sort("source_file", "source_row", "plan_type", "plan_start", nulls_last=True)
    )


@dataclass(frozen=True)
class ReportFrames:
    """Every report of a run, built in memory before anything is written."""

    results: pl.DataFrame
    flagged: pl.DataFrame
    exceptions: pl.DataFrame
    changes: pl.DataFrame
    """Since `previous` (batch/changes.py), with the child's name, date of birth and clinic from its first row."""
    context: pl.DataFrame
    """Per input row (`source_file`, `source_row`): who it is about (batch/context.py), for summary.html."""
    previous: RunOutcomes | None
    """The job's previous complete run; None on its first."""

    def change_counts(self) -> dict[str, int] | str:
        """Change rows per kind, every kind present; `first_run` when there was nothing to compare with."""
        if self.previous is None:
            return "first_run"
        return change_counts_of(self.changes)

    def outcome_counts(self) -> dict[str, int]:
        """Rows per outcome, every outcome present (the one place outcomes are counted)."""
        counts = {o.value: 0 for o in Outcome}
        for outcome, n in self.results.group_by("outcome").len().iter_rows():
            counts[outcome] = n
        return counts


def change_counts_of(changes: pl.DataFrame) -> dict[str, int]:
    counts = change_counts([])
    for kind, n in changes.group_by("change").len().iter_rows():
        counts[kind] = n
    return counts


def build_changes(patients: pl.DataFrame, current: RunOutcomes, previous: RunOutcomes | None) -> pl.DataFrame:
    """The `changes` report: the comparison's rows with the child's name, date of birth and clinic."""
    changes = compare_runs(previous, current) if previous is not None else []
    frame = changes_frame(changes, previous, current.run_id, current.reference_date)
    # Only the changed children's rows: the context of every child in the lists would cost a frame per run.
    changed = patients.filter(pl.col(NHS_NUMBER).is_in(frame.get_column("nhs_number").implode()))
    people = frame.join(child_context(changed), on="nhs_number", how="left", maintain_order="left")
    return people.select("nhs_number", *PERSON_COLUMNS, pl.exclude("nhs_number", *PERSON_COLUMNS))


def build_reports(
    patients: pl.DataFrame,
    outcomes: pl.DataFrame,
    reference_date: date,
    *,
    run_id: str,
    previous: RunOutcomes | None,
) -> ReportFrames:
    """Every report frame of the run from its outcome frame; `previous` is the job's previous complete run
    (None: its first)."""
    results = build_results(patients, outcomes)
    flagged = build_flagged(results, outcomes, reference_date)
    changes = build_changes(patients, RunOutcomes(run_id, reference_date, outcomes), previous)
    public = results.drop(APPOINTMENT_DATE)
    exceptions = public.filter(pl.col("outcome").is_in(EXCEPTION_OUTCOMES))
    return ReportFrames(public, flagged, exceptions, changes, row_context(patients), previous)


def _write_pieces(path: Path, pieces: Iterable[str]) -> None:
    # Written as it is made: the page of a run with tens of thousands of flagged children is never whole in memory.
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(pieces)


def write_reports(directory: Path, frames: ReportFrames, summary_json: str, privacy: Privacy) -> ReportPaths:
    """Write every report under a temporary name, then rename each into place (a reader never sees half a file).

    Raises UnsafePathError when the run folder exists but is not a private folder of ours. `summary.html` is
    made from the frames and `summary_json`, so writing a run's reports again gives the same page.
    """
    summary = RunSummary.from_json(summary_json)
    private_dir(directory, privacy, "run folder")
    # Staged files of a process killed mid-write are never renamed into place; clear them away.
    clear_staged(directory)
    paths = ReportPaths(
        directory=directory,
        results=directory / "results.parquet",
        flagged_parquet=directory / "flagged.parquet",
        flagged_csv=directory / "flagged.csv",
        exceptions=directory / "exceptions.csv",
        summary=directory / "summary.json",
        flagged_xlsx=directory / "flagged.xlsx",
        changes_parquet=directory / "changes.parquet",
        changes_csv=directory / "changes.csv",
        summary_html=directory / "summary.html",
    )
    writers: list[tuple[Path, Callable[[Path], object]]] = [
        (paths.results, frames.results.write_parquet),
        (paths.flagged_parquet, frames.flagged.write_parquet),
        (paths.flagged_csv, lambda p: write_csv(frames.flagged, p)),
        (paths.exceptions, lambda p: write_csv(frames.exceptions, p)),
        (paths.summary, lambda p: p.write_text(summary_json)),
        (paths.flagged_xlsx, lambda p: write_xlsx(frames.flagged, p, "flagged")),
        (paths.changes_parquet, frames.changes.write_parquet),
        (paths.changes_csv, lambda p: write_csv(frames.changes, p)),
        (paths.summary_html, lambda p: _write_pieces(p, summary_html_pieces(frames, summary))),
    ]
    staged = [(final, stage(final, write, privacy)) for final, write in writers]
    failpoint("reports_staged")
    for final, tmp in staged:
        os.replace(tmp, final)
    return paths
