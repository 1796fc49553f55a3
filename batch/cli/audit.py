"""`cpis-batch audit JOB.toml --since DATE --until DATE [--nhs-number N] --format csv|parquet --output FILE`:
the audit trail of the queries sent, for information governance (docs/decisions.md#d23)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anyio

from batch.audit import (
    EXPORT_EVENT,
    AuditArgumentError,
    AuditPeriod,
    ExportFormat,
    export_detail,
    parse_day,
    parse_nhs_number,
    read_entries,
    stage_export,
)
from batch.cli.common import OpenJob, fail, known, open_job
from batch.config import ConfigError
from batch.exits import Exit
from batch.files import UnsafePathError
from batch.store import Store, StoreError, StoreOpenError

_USAGE_ERRORS = (AuditArgumentError, StoreOpenError, UnsafePathError)


@dataclass(frozen=True)
class AuditRequest:
    job: Path
    since: str
    until: str
    nhs_number: str | None
    format: ExportFormat
    output: Path


async def _export(job: OpenJob, period: AuditPeriod, nhs_number: str | None, request: AuditRequest) -> int:
    async with Store.open(job.cfg.state) as store:
        frame = await read_entries(store, period, nhs_number)
        staged = await anyio.to_thread.run_sync(
            stage_export, frame, request.output, request.format, job.privacy
        )
        try:
            # Audited before it is in place: no export is ever delivered without its own audit row.
            await store.audit_event(
                EXPORT_EVENT, export_detail(frame, period, request.format, nhs_number is not None)
            )
            os.replace(staged, request.output)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    return int(frame.height)


def audit_command(request: AuditRequest) -> int:
    """Exit 0 with the export written; 2 for a bad argument, job file, state file or output path."""
    try:
        job = open_job(request.job)
        period = AuditPeriod(parse_day(request.since, "--since"), parse_day(request.until, "--until"))
        nhs_number = (
            parse_nhs_number(request.nhs_number, job.cfg.profile) if request.nhs_number is not None else None
        )
        if not job.cfg.state.exists() and not job.cfg.state.is_symlink():
            # Store.open would create an empty one.
            raise StoreOpenError(f"{job.cfg.state}: no state file (has the job run yet?)")
        rows = anyio.run(_export, job, period, nhs_number, request)
    except (ConfigError, *_USAGE_ERRORS) as exc:
        return fail(str(exc), Exit.USAGE)
    except BaseExceptionGroup as group:
        error = known(group, (*_USAGE_ERRORS, StoreError, OSError))
        if error is None:
            raise
        return _failed(error, request.output)
    except (StoreError, OSError) as exc:
        return _failed(exc, request.output)
    print(f"audit: {rows} queries sent {request.since} to {request.until} written to {request.output}")
    return Exit.OK


def _failed(error: Exception, output: Path) -> int:
    if isinstance(error, _USAGE_ERRORS):
        return fail(str(error), Exit.USAGE)
    if isinstance(error, StoreError):
        return fail(str(error), Exit.SOFTWARE)
    assert isinstance(error, OSError)
    return fail(f"{output}: cannot write the export ({error.strerror or type(error).__name__})", Exit.USAGE)
