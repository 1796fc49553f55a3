"""A run's reports built whole, in memory: the reference the job's sliced path (`batch.reports.ReportStager`,
`batch.job.stage_reports`) is compared with, and the easy way for a test to make reports from a few rows.

The job never builds these: a whole run's frames are what D27 keeps out of memory. Each piece here is the job's
own (`build_results`, `build_flagged`, `changes_report`, `ReportStager`), called on the whole run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from batch.changes import RunOutcomes, RunRef, compare_runs
from batch.context import row_context
from batch.files import Privacy
from batch.patients import APPOINTMENT_DATE
from batch.reports import (
    EXCEPTION_OUTCOMES,
    ReportPaths,
    ReportStager,
    build_flagged,
    build_results,
    change_counts_for,
    changes_report,
)
from batch.states import Outcome
from batch.summary import RunSummary
from batch.summary_html import summary_html_pieces


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
    previous: RunRef | None
    """The job's previous complete run; None on its first."""

    def change_counts(self) -> dict[str, int] | str:
        """Change rows per kind, every kind present; `first_run` when there was nothing to compare with."""
        return change_counts_for(self.changes, self.previous)

    def outcome_counts(self) -> dict[str, int]:
        """Rows per outcome, every outcome present (the one place outcomes are counted)."""
        counts = {o.value: 0 for o in Outcome}
        for outcome, n in self.results.group_by("outcome").len().iter_rows():
            counts[outcome] = n
        return counts


def build_changes(patients: pl.DataFrame, current: RunOutcomes, previous: RunOutcomes | None) -> pl.DataFrame:
    """The `changes` report: the comparison's rows with the child's name, date of birth and clinic."""
    changes = compare_runs(previous, current) if previous is not None else []
    return changes_report(patients, changes, previous, current)


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


def write_reports(directory: Path, frames: ReportFrames, summary_json: str, privacy: Privacy) -> ReportPaths:
    """Write every report of `frames` under a temporary name, then rename each into place (`ReportStager`, with
    the whole run as one slice).

    Raises UnsafePathError when the run folder exists but is not a private folder of ours.
    """
    stager = ReportStager(directory, privacy)
    stager.add(frames.results, frames.flagged)
    return stager.finish(
        changes=frames.changes,
        previous=frames.previous,
        context_of=lambda _: frames.context,
        summary_json=summary_json,
    )


def render_summary_html(frames: ReportFrames, summary: RunSummary) -> str:
    """The whole page, as text."""
    return "".join(summary_html_pieces(frames, summary))
