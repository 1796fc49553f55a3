"""What every job command shares: one-line errors, the job's privacy and folders, internal failures."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from batch import logs
from batch.config import JobConfig, load_job
from batch.exits import Exit
from batch.files import Privacy, private_dir

log = logging.getLogger("batch")


def fail(message: str, code: Exit) -> int:
    if logs.is_json():
        # stderr holds JSON lines only: the one-line error is a record too.
        log.error("cpis-batch: error: %s", message, extra=logs.fields({"exit_code": int(code)}))
    else:
        print(f"cpis-batch: error: {message}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class OpenJob:
    cfg: JobConfig
    privacy: Privacy


def open_job(path: Path) -> OpenJob:
    """Load the job file and set the process up to write its files privately.

    Raises ConfigError for a bad job file.
    """
    cfg = load_job(path)
    privacy = Privacy.for_group(cfg.group)
    # Everything this process creates from here on (SQLite's WAL included) is owner-only, or group-readable.
    os.umask(privacy.umask)
    return OpenJob(cfg, privacy)


def check_folders(job: OpenJob) -> None:
    """Judge the output and state folders that exist already, so a refusal leaves nothing behind, then make the
    state folder (the lock lives there; the output folder is made when the reports are written). Raises
    UnsafePathError naming the folder."""
    for folder, what in _folders(job):
        if folder.exists() or folder.is_symlink():
            private_dir(folder, job.privacy, what)
    private_dir(job.cfg.state.parent, job.privacy, "state folder")


def _folders(job: OpenJob) -> tuple[tuple[Path, str], ...]:
    return ((job.cfg.output_dir, "output folder"), (job.cfg.state.parent, "state folder"))


def internal_failure(exc: BaseException) -> int:
    """Report an unexpected failure: the frames go to the log, never the message (it could quote data)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown place"
    log.error(
        "internal failure %s at %s; frames: %s",
        type(exc).__name__,
        where,
        " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)),
    )
    return fail(
        f"internal failure ({type(exc).__name__} at {where}); the run was marked failed and the same command "
        "resumes it",
        Exit.SOFTWARE,
    )


def known(group: BaseExceptionGroup[BaseException], kinds: tuple[type[Exception], ...]) -> Exception | None:
    """The one expected error a task group's exception group carries, if that is all it carries."""
    matched, rest = group.split(kinds)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, Exception)
    return leaf


__all__ = ["OpenJob", "check_folders", "fail", "internal_failure", "known", "open_job"]
