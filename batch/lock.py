"""One run of a job at a time: an advisory lock beside the state file (exit 75 when held)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batch.files import UnsafePathError

_PID_WIDTH = 16


class LockHeld(Exception):
    """Another process holds the job's lock."""


@contextmanager
def job_lock(path: Path, mode: int = 0o600) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block; the kernel drops it if the process dies.

    The lock file is opened without following a symlink and never truncated, and must be a regular file of
    ours with one link, so a planted link cannot make us write someone else's file. Raises LockHeld, or
    UnsafePathError for a lock file that is not safe to open.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: the lock file is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise UnsafePathError(f"{path}: the lock file is not a plain file of ours")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{path}: another run of this job is in progress (pid {_holder(fd)})") from None
        # Overwritten in place at a fixed width: the holder's pid, for the message above.
        os.pwrite(fd, f"{os.getpid()}".ljust(_PID_WIDTH - 1).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, _PID_WIDTH, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def lock_holder(path: Path, proc_locks: Path = Path("/proc/locks")) -> int | None:
    """The pid of the process holding the job's lock, or None when nobody does; the lock is not taken.

    Read from the kernel's table of file locks (Linux `/proc/locks`: `<n>: FLOCK ADVISORY WRITE <pid>
    <major>:<minor>:<inode> ...`). Raises OSError when that table cannot be read.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in proc_locks.read_text().splitlines():
        parts = line.split()
        # Waiting lockers are listed as "<n>: -> FLOCK ..."; only the holder counts.
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == device and parts[4].isdigit():
            return int(parts[4])
    return None
