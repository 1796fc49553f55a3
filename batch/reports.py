"""Analyst outputs for one run, written to temporary names and renamed into place.

`results.parquet` has every input row with exactly one outcome; `flagged.parquet`/`flagged.csv`/`flagged.xlsx`
one row per input row per plan; `exceptions.csv` the rows that need a look; `changes.parquet`/`changes.csv`
what changed since the job's previous complete run (batch/changes.py); `summary.json` counts;
`summary.html` the page for people (batch/summary_html.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path

import polars as pl
import polars.selectors as cs

from batch.changes import Change, RunRef, change_counts, changes_frame
from batch.context import PERSON_COLUMNS, child_context
from batch.csvsafe import write_csv
from batch.failpoints import failpoint
from batch.files import Privacy, clear_staged, private_dir, stage
from batch.patients import (
    APPOINTMENT_DATE,
    NHS_NUMBER,
    RESERVED_COLUMNS,
    SOURCE_FILE,
    SOURCE_ROW,
    WINDOW_REASON,
)
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
# The plan and who to call about it (what the page shows); then the child's record as a whole.
_PLAN_AND_LA = (
    "plan_type",
    "plan_start",
    "plan_end",
    "plan_active_on_appointment",
    "la_code",
    "la_name",
    "la_office_phone",
    "la_emergency_phone",
)
PLAN_COLUMNS = (
    *_PLAN_AND_LA,
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


def change_counts_for(changes: pl.DataFrame, previous: RunRef | None) -> dict[str, int] | str:
    """Change rows per kind, every kind present; `first_run` when there was nothing to compare with."""
    return "first_run" if previous is None else change_counts_of(changes)


def change_counts_of(changes: pl.DataFrame) -> dict[str, int]:
    counts = change_counts([])
    for kind, n in changes.group_by("change").len().iter_rows():
        counts[kind] = n
    return counts


def changes_report(
    patients: pl.DataFrame, changes: Sequence[Change], previous: RunRef | None, current: RunRef
) -> pl.DataFrame:
    """The `changes` report of changes found already (in report order), with the child's name, date of birth
    and clinic."""
    frame = changes_frame(changes, previous, current.run_id, current.reference_date)
    # Only the changed children's rows: the context of every child in the lists would cost a frame per run.
    changed = patients.filter(pl.col(NHS_NUMBER).is_in(frame.get_column("nhs_number").implode()))
    people = frame.join(child_context(changed), on="nhs_number", how="left", maintain_order="left")
    return people.select("nhs_number", *PERSON_COLUMNS, pl.exclude("nhs_number", *PERSON_COLUMNS))


def _write_pieces(path: Path, pieces: Iterable[str]) -> None:
    # Written as it is made: the page of a run with tens of thousands of flagged children is never whole in memory.
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(pieces)


def _fsync(path: Path) -> None:
    with path.open("rb") as written:
        os.fsync(written.fileno())


# Input rows per slice when a run's reports are built from the state: a run's reports then cost about one
# slice's frames, not a whole run's (decision D27).
SLICE_ROWS = 5_000


def input_slices(patients: pl.DataFrame, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """The input rows in report order (list, then row), `rows` (default `SLICE_ROWS`) at a time; always at
    least one slice."""
    rows = rows or SLICE_ROWS
    keys = patients.select(pl.col(SOURCE_FILE), pl.col(SOURCE_ROW))
    ordered = keys.equals(keys.sort(SOURCE_FILE, SOURCE_ROW))
    order = None if ordered else patients.select(pl.arg_sort_by(SOURCE_FILE, SOURCE_ROW)).to_series()
    del keys
    for start in range(0, max(patients.height, 1), rows):
        yield patients.slice(start, rows) if order is None else patients[order.slice(start, rows)]


def answered_numbers(part: pl.DataFrame) -> list[str]:
    """The NHS numbers of a slice of input rows whose answers its reports show."""
    return part.get_column(NHS_NUMBER).drop_nulls().unique().to_list()


def build_slice(
    part: pl.DataFrame, outcomes: pl.DataFrame, reference_date: date
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The results (public columns) and flagged rows of a slice of input rows, from those children's outcomes."""
    results = build_results(part, outcomes)
    flagged = build_flagged(results, outcomes, reference_date)
    return results.drop(APPOINTMENT_DATE), flagged


@dataclass(frozen=True)
class ReportTotals:
    """What the summary counts of the rows staged so far."""

    rows: int
    outcomes: dict[str, int]
    """Rows per outcome, every outcome present."""
    flagged_rows: int


@dataclass(frozen=True)
class _Page:
    flagged: pl.DataFrame
    exceptions: pl.DataFrame
    changes: pl.DataFrame
    context: pl.DataFrame
    previous: RunRef | None


# The columns the page shows from the flagged and exception rows (batch/summary_html.py), and those the row
# context adds, which an input column of the same name would take the place of.
_PAGE_FLAGGED = ("source_file", "source_row", "nhs_number", *_PLAN_AND_LA)
_PAGE_EXCEPTIONS = ("source_file", "source_row", "nhs_number", "outcome", "reason")
_CONTEXT_NAMES = ("clinic", "patient_name", "date_of_birth", "appointment_date")


# Rows per row group of the Parquet files joined from slices: polars' default (the whole file, up to 512²
# rows) held every slice at once while joining (+43 MiB at 100,000 rows; +23 at this size).
_ROW_GROUP = 10_000


def _shown_columns(path: Path, columns: tuple[str, ...]) -> list[str]:
    names = pl.scan_parquet(path).collect_schema().names()
    return [c for c in names if c in columns or c in _CONTEXT_NAMES]


class ReportStager:
    """A run's reports, staged under temporary names a slice of input rows at a time (`add`), then completed
    and renamed into place together (`finish`); a reader never sees half a file, and no whole-run frame is
    held: Parquet slices are joined on disk, CSV rows appended, and the page and workbook read back only the
    columns they show.

    Raises UnsafePathError when the run folder exists but is not a private folder of ours.
    """

    def __init__(self, directory: Path, privacy: Privacy) -> None:
        private_dir(directory, privacy, "run folder")
        # Staged files of a process killed mid-write are never renamed into place; clear them away.
        clear_staged(directory)
        self.paths = ReportPaths(
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
        self._privacy = privacy
        self._parts: dict[Path, list[Path]] = {self.paths.results: [], self.paths.flagged_parquet: []}
        self._appended = {
            final: stage(final, lambda _: None, privacy)
            for final in (self.paths.flagged_csv, self.paths.exceptions)
        }
        self._slices = 0
        self._rows = 0
        self._flagged_rows = 0
        self._outcomes = {o.value: 0 for o in Outcome}

    @property
    def totals(self) -> ReportTotals:
        return ReportTotals(self._rows, dict(self._outcomes), self._flagged_rows)

    def add(self, results: pl.DataFrame, flagged: pl.DataFrame) -> None:
        """Stage one slice: its results (public columns) and flagged rows, each in report order and after every
        earlier slice's. `finish` needs at least one slice, which may be empty."""
        self._parts[self.paths.results].append(
            stage(self.paths.results, results.write_parquet, self._privacy)
        )
        self._parts[self.paths.flagged_parquet].append(
            stage(self.paths.flagged_parquet, flagged.write_parquet, self._privacy)
        )
        first = self._slices == 0
        self._slices += 1
        exceptions = results.filter(pl.col("outcome").is_in(EXCEPTION_OUTCOMES))
        for final, frame in ((self.paths.flagged_csv, flagged), (self.paths.exceptions, exceptions)):
            with self._appended[final].open("ab") as fh:
                write_csv(frame, fh, include_header=first)
        self._rows += results.height
        self._flagged_rows += flagged.height
        for outcome, n in results.group_by("outcome").len().iter_rows():
            self._outcomes[outcome] += n

    def _join_parts(self, final: Path) -> Path:
        parts = self._parts.pop(final)
        staged = stage(
            final, lambda p: pl.scan_parquet(parts).sink_parquet(p, row_group_size=_ROW_GROUP), self._privacy
        )
        for part in parts:
            part.unlink()
        return staged

    def finish(
        self,
        *,
        changes: pl.DataFrame,
        previous: RunRef | None,
        context_of: Callable[[pl.DataFrame], pl.DataFrame],
        summary_json: str,
    ) -> ReportPaths:
        """Stage the rest (`changes`, the summary, the workbook, the page) and rename every file into place.

        `context_of(rows)`: the row context (batch/context.py) of at least the input rows `rows` names
        (`source_file`, `source_row`). `summary.html` is made from the staged rows and `summary_json`, so
        writing a run's reports again gives the same page.
        """
        summary = RunSummary.from_json(summary_json)
        paths = self.paths
        staged = {final: self._join_parts(final) for final in (paths.results, paths.flagged_parquet)}
        for final, tmp in self._appended.items():
            _fsync(tmp)
            staged[final] = tmp
        flagged_file, results_file = staged[paths.flagged_parquet], staged[paths.results]
        staged[paths.flagged_xlsx] = stage(
            paths.flagged_xlsx,
            lambda p: write_xlsx(pl.scan_parquet(flagged_file), p, "flagged"),
            self._privacy,
        )
        flagged = pl.read_parquet(flagged_file, columns=_shown_columns(flagged_file, _PAGE_FLAGGED))
        exceptions = (
            pl.scan_parquet(results_file)
            .filter(pl.col("outcome").is_in(EXCEPTION_OUTCOMES))
            .select(_shown_columns(results_file, _PAGE_EXCEPTIONS))
            .collect()
        )
        shown = pl.concat(
            [flagged.select("source_file", "source_row"), exceptions.select("source_file", "source_row")]
        )
        page = _Page(flagged, exceptions, changes, context_of(shown.unique()), previous)
        writers: list[tuple[Path, Callable[[Path], object]]] = [
            (paths.summary, lambda p: p.write_text(summary_json)),
            (paths.changes_parquet, changes.write_parquet),
            (paths.changes_csv, lambda p: write_csv(changes, p)),
            (paths.summary_html, lambda p: _write_pieces(p, summary_html_pieces(page, summary))),
        ]
        for final, write in writers:
            staged[final] = stage(final, write, self._privacy)
        failpoint("reports_staged")
        for final, tmp in staged.items():
            os.replace(tmp, final)
        return paths
