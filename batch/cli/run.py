"""`cpis-batch run JOB.toml`: the nightly run."""

from __future__ import annotations

import json
import logging
import signal
import ssl
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio

from batch import logs
from batch.cli.common import check_folders, fail, internal_failure, known, open_job
from batch.config import ConfigError, JobConfig
from batch.exits import Exit
from batch.files import Privacy, UnsafePathError
from batch.job import InputRows, JobResult, StartupError, input_fingerprint, run_job
from batch.lock import LockHeld, job_lock
from batch.patients import InputError, read_patient_lists, resolve_inputs
from batch.progress import ProgressOptions
from batch.store import StoreOpenError
from batch.tls import TlsConfigError, client_context, expiry_warning

log = logging.getLogger("batch")

# Errors that are the operator's to fix (exit 2), whether raised directly or from inside a task group. A state
# file that fails later, mid-run, is an internal failure (exit 70), not a usage error.
_USAGE_ERRORS = (StartupError, StoreOpenError, UnsafePathError)


@dataclass(frozen=True)
class RunLine:
    """The last line `run` prints on stdout, whatever the exit code: one JSON object for cron mail and log
    collectors. Counts, ids and paths only. `run_id` is null when the run never started (exit 2, 75)."""

    job: str | None
    run_id: str | None
    exit_code: int
    outcomes: dict[str, int] = field(default_factory=dict)
    rows: int | None = None
    queries_sent: int | None = None
    duration_s: float | None = None
    reports: str | None = None
    event: str = "run_finished"

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass
class _Started:
    """What the CLI learns of a run from inside the event loop, even when it fails."""

    job: str | None = None
    run_id: str | None = None
    result: JobResult | None = None


async def _run(
    cfg: JobConfig,
    rows: InputRows,
    fingerprint: str,
    ssl_context: ssl.SSLContext,
    privacy: Privacy,
    started: _Started,
) -> JobResult:
    progress = ProgressOptions(bar=sys.stdout.isatty() and not logs.is_json())
    try:
        started.result = await run_job(cfg, rows, fingerprint, ssl_context, privacy, progress)
        return started.result
    finally:
        run_id = logs.run_id_var.get()
        started.run_id = None if run_id == "-" else run_id


def _ignore_sigusr1() -> None:
    # SIGUSR1 asks for a progress line while the run sends and waits; before and after that it must not end
    # the process (its default action).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run_command(job_file: Path) -> int:
    started = _Started()
    code = _run_command(job_file, started)
    result = started.result
    line = RunLine(job=started.job, run_id=started.run_id, exit_code=int(code))
    if result is not None:
        summary = result.summary
        line = RunLine(
            job=summary.job,
            run_id=result.run_id,
            exit_code=int(code),
            outcomes=dict(summary.outcomes),
            rows=summary.rows,
            queries_sent=summary.queries_sent,
            duration_s=summary.duration_s,
            reports=str(result.reports.directory),
        )
    print(line.to_json(), flush=True)
    return code


def _run_command(job_file: Path, started: _Started) -> int:
    _ignore_sigusr1()
    try:
        job = open_job(job_file)
        cfg = job.cfg
        started.job = cfg.name
        ssl_context = client_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
        warning = expiry_warning(cfg.tls.cert)
        if warning:
            log.warning("%s", warning)
        # Inputs are read and validated before anything is written: bad input leaves no state behind.
        paths = resolve_inputs(cfg.input_pattern, cfg.base_dir)
        # Handed over, not kept here: the run holds only the copy it keeps in the state.
        rows = InputRows(read_patient_lists(paths, cfg.input, cfg.profile))
        fingerprint = input_fingerprint(cfg.name, paths)
        check_folders(job)
    except (ConfigError, TlsConfigError, InputError, UnsafePathError) as exc:
        return fail(str(exc), Exit.USAGE)
    try:
        with job_lock(cfg.lock_path, job.privacy.file_mode):
            result = anyio.run(_run, cfg, rows, fingerprint, ssl_context, job.privacy, started)
    except LockHeld as exc:
        return fail(str(exc), Exit.LOCKED)
    except _USAGE_ERRORS as exc:
        return fail(str(exc), Exit.USAGE)
    except BaseExceptionGroup as group:
        error = known(group, _USAGE_ERRORS)
        if error is not None:
            return fail(str(error), Exit.USAGE)
        if group.subgroup(lambda e: not isinstance(e, Exception)) is not None:
            raise  # KeyboardInterrupt, SystemExit: not ours to report
        return internal_failure(group)
    except Exception as exc:
        return internal_failure(exc)
    print(f"reports: {result.reports.directory}")
    return result.exit_code
