"""What the reports must say, computed from the simulator's ground truth and the input lists."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import polars as pl

from batch.nhs_number import validate
from batch.summary import RunSummary, ThisProcess
from spine_sim.dataset import Dataset
from tests.report_frames import ReportFrames

FLAG_KEY = (
    "source_file",
    "source_row",
    "nhs_number",
    "plan_type",
    "plan_start",
    "plan_end",
    "plan_active_on_appointment",
    "la_code",
    "la_name",
    "la_office_phone",
    "la_emergency_phone",
)


def _read_list(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")


def expected_outcomes(
    dataset: Dataset, lists: list[Path], column: str = "NHS No"
) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(source file, row) → (outcome, reason-or-error-code) for every input row."""
    expected: dict[tuple[str, int], tuple[str, str | None]] = {}
    for path in lists:
        for row, value in enumerate(_read_list(path).get_column(column).to_list(), start=1):
            checked = validate(value)
            if checked.reason is not None:
                expected[(str(path), row)] = ("invalid_nhs_number", checked.reason)
                continue
            assert checked.number is not None
            truth = dataset.expected(checked.number)
            code = truth.error_codes[0] if truth.error_codes else None
            expected[(str(path), row)] = (truth.outcome, code)
    return expected


def expected_flagged(
    dataset: Dataset,
    lists: list[Path],
    reference_date: date,
    column: str = "NHS No",
    appointment_column: str = "Appointment Date",
) -> set[tuple[object, ...]]:
    rows: set[tuple[object, ...]] = set()
    for path in lists:
        frame = _read_list(path)
        for row, (value, appointment) in enumerate(
            zip(
                frame.get_column(column).to_list(),
                frame.get_column(appointment_column).to_list(),
                strict=True,
            ),
            start=1,
        ):
            checked = validate(value)
            if checked.number is None:
                continue
            truth = dataset.expected(checked.number)
            if truth.outcome != "flagged":
                continue
            day = datetime.strptime(appointment, "%d/%m/%Y").date() if appointment else reference_date
            for record in truth.records:
                la = record.local_authority
                for plan in record.plans:
                    active = plan.start <= day and (plan.end is None or plan.end >= day)
                    rows.add(
                        (
                            str(path),
                            row,
                            checked.number,
                            plan.type,
                            plan.start.isoformat(),
                            plan.end.isoformat() if plan.end else None,
                            active,
                            la.code,
                            la.name,
                            la.office_phone,
                            la.emergency_phone,
                        )
                    )
    return rows


def reported_outcomes(results: pl.DataFrame) -> dict[tuple[str, int], tuple[str, str | None]]:
    return {
        (f, r): (o, reason)
        for f, r, o, reason in results.select("source_file", "source_row", "outcome", "reason").iter_rows()
    }


def reported_flagged(flagged: pl.DataFrame) -> set[tuple[object, ...]]:
    return set(flagged.select(*FLAG_KEY).iter_rows())


def run_summary(frames: ReportFrames, *, job: str, reference_date: date, children: int) -> RunSummary:
    """A finished run's summary for report tests: four queries sent, all answered, nothing else notable."""
    return RunSummary(
        run_id="THIS-RUN",
        job=job,
        profile="simulated",
        resumed=False,
        run_started_at="2027-01-11T01:00:00",
        process_started_at="2027-01-11T01:00:00",
        finished_at="2027-01-11T01:05:00+00:00",
        reference_date=reference_date.isoformat(),
        rows=frames.results.height,
        distinct_children=children,
        outcomes=frames.outcome_counts(),
        flagged_plan_rows=frames.flagged.height,
        queries_sent=4,
        send_failures=0,
        replies={},
        this_process=ThisProcess(4, 4, 0, 0, 0),
        circuit_breaker_open=False,
        duration_s=1.0,
        sending_duration_s=1.0,
        achieved_rate_per_s=None,
        configured_rate_per_s=5.0,
        changes=frames.change_counts(),
    )
