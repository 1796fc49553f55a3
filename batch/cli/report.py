"""`cpis-batch report JOB.toml [--run ID]`: write a run's reports again, from the state, into a new folder.

The run's input rows and summary are in the state (kept when it started and when it completed), and the reports
are built by the job's own path (`batch.job.stage_reports`, `batch.reports.ReportStager`), so the files equal
the originals. It only reads the state (no lock; it may run beside a run of the job) and writes a new folder
`output_dir/report-<run8>-<UTC time>/` (`-2`... when that is taken); `latest` is left alone.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from pathlib import Path

import anyio

from batch.cli.common import OpenJob, fail, known, open_job
from batch.config import ConfigError
from batch.context import row_context_of
from batch.exits import Exit
from batch.files import UnsafePathError, private_dir
from batch.job import run_changes, stage_reports
from batch.reports import ReportPaths
from batch.run_inputs import decode as decode_inputs
from batch.states import RunStatus
from batch.store import Store, StoreError, StoreOpenError

_RUN_ID = re.compile(r"[0-9A-Fa-f-]{8,36}", re.ASCII)


class ReportError(Exception):
    """The run asked for cannot be reported again; the message says why."""


_USAGE_ERRORS = (ReportError, StoreOpenError, UnsafePathError)


def _new_folder(parent: Path, name: str) -> Path:
    # Two reports of a run within one second get `-2`, `-3`...: never an existing folder or link.
    candidates = (parent / (name if n == 1 else f"{name}-{n}") for n in itertools.count(1))
    return next(path for path in candidates if not (path.exists() or path.is_symlink()))


async def _report(job: OpenJob, run_id: str | None) -> ReportPaths:
    cfg = job.cfg
    async with Store.open_read_only(cfg.state) as store:
        run = await store.find_run(cfg.name, run_id)
        if run is None:
            raise ReportError(
                f"job {cfg.name} has no complete run"
                if run_id is None
                else f"job {cfg.name} has no run {run_id}"
            )
        short = run.run_id[:8]
        if run.status is not RunStatus.COMPLETE or run.summary_json is None:
            raise ReportError(
                f"run {short} is {run.status.value}: only a complete run's reports can be written again"
            )
        inputs = await store.run_inputs(run.run_id)
        if inputs is None:
            raise ReportError(
                f"run {short} was made by an earlier cpis-batch, which did not keep its input rows"
            )
        kept = [part for part in inputs.parts if part is not None]
        if len(kept) != len(inputs.parts):
            raise ReportError(f"run {short}'s input rows were dropped after [retention] raw_days")
        patients = await anyio.to_thread.run_sync(decode_inputs, kept)
        private_dir(cfg.output_dir, job.privacy, "output folder")
        directory = _new_folder(cfg.output_dir, f"report-{short}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        stager = await stage_reports(store, run.run_id, run.reference_date, patients, directory, job.privacy)
        changes, previous = await run_changes(store, run.run_id, run.reference_date, patients)
    return stager.finish(
        changes=changes, previous=previous, context_of=row_context_of(patients), summary_json=run.summary_json
    )


def report_command(job_file: Path, run_id: str | None) -> int:
    """Exit 0 with the reports written; 2 for a bad job file, run id, state file or output folder."""
    try:
        job = open_job(job_file)
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ReportError(f"--run: '{run_id}' is not a run id (its first 8 characters or more)")
        paths = anyio.run(_report, job, run_id)
    except (ConfigError, *_USAGE_ERRORS) as exc:
        return fail(str(exc), Exit.USAGE)
    except BaseExceptionGroup as group:
        error = known(group, _USAGE_ERRORS)
        if error is None:
            store_error = known(group, (StoreError,))
            if store_error is None:
                raise
            return fail(str(store_error), Exit.SOFTWARE)
        return fail(str(error), Exit.USAGE)
    except StoreError as exc:
        return fail(str(exc), Exit.SOFTWARE)
    print(f"reports: {paths.directory}")
    return Exit.OK
