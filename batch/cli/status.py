"""`cpis-batch status JOB.toml [--json]`: how far the current (or last) run is, and the last 7 runs.

Reads the state file read-only (batch.state_view) without the job's lock, so it works while a run is going;
it never creates or migrates the state file. Whether a run is going is read from the kernel's lock table (the
pid holding the job's lock), not by taking the lock. Counts only: no patient data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from batch.cli.common import fail
from batch.config import ConfigError, load_job
from batch.exits import Exit
from batch.lock import lock_holder
from batch.progress import duration
from batch.state_view import RunView, StateViewError, open_state, recent_runs
from batch.states import RunStatus

RECENT_RUNS = 7


@dataclass(frozen=True)
class RunLine:
    """One run as `status` shows it."""

    run_id: str
    state: str
    """`running` (a process holds the job's lock), `interrupted` (recorded as running, but no process holds
    the lock: killed; the next run of the same input resumes it), `failed` (exit 70; the next run resumes it)
    or `complete`."""
    reference_date: str
    started_at: str
    finished_at: str | None
    duration_s: float
    """Until it finished, or until now."""
    children: int
    answered: int
    outstanding: int
    awaiting_reply: int
    sent: int
    send_failures: int
    outcomes: dict[str, int]
    rate_per_s: float | None
    """Over the last minute; only while the run is going."""
    eta_s: float | None
    """Until every child has been sent its query, at that rate; only while the run is going."""


@dataclass(frozen=True)
class StatusReport:
    job: str
    state_file: str
    checked_at: str
    lock_holder_pid: int | None
    """The process holding the job's lock (a run, or `purge`), or None; None too when it cannot be told."""
    current: RunLine | None
    """The newest run: the one going, or the last one."""
    runs: list[RunLine]
    """The last runs, newest first (at most 7)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _line(run: RunView, holder: int | None, newest: bool, now: datetime) -> RunLine:
    snapshot = run.snapshot
    started = datetime.fromisoformat(run.started_at)
    end = datetime.fromisoformat(run.finished_at) if run.finished_at else now
    if run.status == RunStatus.RUNNING.value:
        state = "running" if newest and holder is not None else "interrupted"
    else:
        state = run.status
    going = state == "running"
    return RunLine(
        run_id=run.run_id,
        state=state,
        reference_date=run.reference_date,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_s=round((end - started).total_seconds(), 1),
        children=snapshot.children,
        answered=snapshot.answered,
        outstanding=snapshot.outstanding,
        awaiting_reply=snapshot.awaiting,
        sent=snapshot.sent,
        send_failures=snapshot.send_failures,
        outcomes=dict(snapshot.outcomes),
        rate_per_s=round(snapshot.rate_per_s, 3) if going and snapshot.rate_per_s is not None else None,
        eta_s=round(snapshot.eta_s, 1) if going and snapshot.eta_s is not None else None,
    )


def _when(stamp: str) -> str:
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _outcomes(run: RunLine) -> str:
    return ", ".join(f"{name} {count}" for name, count in run.outcomes.items())


def _text(report: StatusReport) -> str:
    lines = [f"job {report.job} (state {report.state_file})"]
    current = report.current
    if current is None:
        lines.append("no runs yet")
        return "\n".join(lines)
    going = current.state == "running"
    label = f"running (pid {report.lock_holder_pid})" if going else current.state
    lines.append(
        f"{'current' if going else 'last'} run {current.run_id}: {label}, started {_when(current.started_at)}, "
        f"{duration(current.duration_s)}{' so far' if going else ''}"
    )
    lines.append(
        f"  children {current.children}: answered {current.answered}, outstanding {current.outstanding} "
        f"({current.awaiting_reply} awaiting a reply); {current.sent} queries sent, "
        f"{current.send_failures} not sent"
    )
    lines.append(f"  outcomes: {_outcomes(current)}")
    if going:
        rate = (
            f"{current.rate_per_s:.2f}/s"
            if current.rate_per_s is not None
            else "none sent in the last minute"
        )
        if not current.outstanding:
            eta = "done"
        elif current.eta_s is not None:
            eta = duration(current.eta_s)
        elif current.outstanding <= current.awaiting_reply:
            eta = f"sending done, awaiting {current.awaiting_reply} replies"
        else:
            eta = "unknown (nothing sent in the last minute)"
        lines.append(f"  rate {rate}; ETA {eta}")
    elif current.state == "interrupted":
        lines.append(
            "  no process holds the job's lock: the run was stopped; the next run of the same input resumes it"
        )
    elif current.state == RunStatus.FAILED.value:
        lines.append(
            "  the run stopped on an internal failure (exit 70); the next run of the same input resumes it"
        )
    lines.append(f"last {len(report.runs)} run{'' if len(report.runs) == 1 else 's'}, newest first:")
    for run in report.runs:
        lines.append(
            f"  {_when(run.started_at)}  {run.run_id[:8]}  {run.state:<11}  {run.children:>6} children  "
            f"{run.outstanding:>5} outstanding  {_outcomes(run)}  {duration(run.duration_s)}"
        )
    return "\n".join(lines)


def status_command(job_file: Path, *, as_json: bool = False) -> int:
    try:
        cfg = load_job(job_file)
    except ConfigError as exc:
        return fail(str(exc), Exit.USAGE)
    now = datetime.now(UTC)
    try:
        with open_state(cfg.state) as conn:
            runs = recent_runs(conn, cfg.name, RECENT_RUNS, now)
    except StateViewError as exc:
        return fail(str(exc), Exit.USAGE)
    try:
        holder = lock_holder(cfg.lock_path)
    except OSError:
        holder = None
    lines = [_line(run, holder, index == 0, now) for index, run in enumerate(runs)]
    report = StatusReport(
        job=cfg.name,
        state_file=str(cfg.state),
        checked_at=now.isoformat(timespec="seconds"),
        lock_holder_pid=holder,
        current=lines[0] if lines else None,
        runs=lines,
    )
    print(report.to_json() if as_json else _text(report), flush=True)
    return Exit.OK
