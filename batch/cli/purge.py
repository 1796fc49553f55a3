"""`cpis-batch purge JOB.toml`: drop the raw Spine messages of runs older than `[retention] raw_days` now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from batch.cli.common import check_folders, fail, known, open_job
from batch.config import ConfigError, JobConfig
from batch.exits import Exit
from batch.files import UnsafePathError
from batch.lock import LockHeld, job_lock
from batch.store import Store, StoreOpenError

_USAGE_ERRORS = (StoreOpenError, UnsafePathError)


async def _purge(cfg: JobConfig) -> int:
    async with Store.open(cfg.state) as store:
        return await store.purge_raw(datetime.now(UTC) - timedelta(days=cfg.retention.raw_days))


def purge_command(job_file: Path) -> int:
    try:
        job = open_job(job_file)
        check_folders(job)
        # Under the job's lock: never beside a run of the same job.
        with job_lock(job.cfg.lock_path, job.privacy.file_mode):
            purged = anyio.run(_purge, job.cfg)
    except (ConfigError, *_USAGE_ERRORS) as exc:
        return fail(str(exc), Exit.USAGE)
    except LockHeld as exc:
        return fail(str(exc), Exit.LOCKED)
    except BaseExceptionGroup as group:
        error = known(group, _USAGE_ERRORS)
        if error is None:
            raise
        return fail(str(error), Exit.USAGE)
    print(f"purged the raw messages of {purged} replies older than {job.cfg.retention.raw_days} days")
    return Exit.OK
