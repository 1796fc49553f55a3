"""`cpis-batch run JOB.toml`: the nightly run."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from batch.cli.common import check_folders, fail, internal_failure, known, open_job
from batch.config import ConfigError
from batch.exits import Exit
from batch.files import UnsafePathError
from batch.job import StartupError, input_fingerprint, run_job
from batch.lock import LockHeld, job_lock
from batch.patients import InputError, read_patient_lists, resolve_inputs
from batch.store import StoreOpenError
from batch.tls import TlsConfigError, client_context, expiry_warning

log = logging.getLogger("batch")

# Errors that are the operator's to fix (exit 2), whether raised directly or from inside a task group. A state
# file that fails later, mid-run, is an internal failure (exit 70), not a usage error.
_USAGE_ERRORS = (StartupError, StoreOpenError, UnsafePathError)


def run_command(job_file: Path) -> int:
    try:
        job = open_job(job_file)
        cfg = job.cfg
        ssl_context = client_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
        warning = expiry_warning(cfg.tls.cert)
        if warning:
            log.warning("%s", warning)
        # Inputs are read and validated before anything is written: bad input leaves no state behind.
        paths = resolve_inputs(cfg.input_pattern, cfg.base_dir)
        patients = read_patient_lists(paths, cfg.input, cfg.profile)
        fingerprint = input_fingerprint(cfg.name, paths)
        check_folders(job)
    except (ConfigError, TlsConfigError, InputError, UnsafePathError) as exc:
        return fail(str(exc), Exit.USAGE)
    try:
        with job_lock(cfg.lock_path, job.privacy.file_mode):
            result = anyio.run(run_job, cfg, patients, fingerprint, ssl_context, job.privacy)
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
