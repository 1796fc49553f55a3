"""Files that hold patient data: private folders, no symlinks we did not make, atomic replacement.

Every folder we create is 0700 and every file 0600 (0750/0640 when the job names a group that may read the
outputs: the folders are then set-group-id so that every file made in them, SQLite's own included, belongs to
that group). A folder we did not create must be ours and writable by nobody else, or anyone who can write it
could swap a report or plant a symlink in it. Temporary files are made with `mkstemp` in the target folder
and renamed into place, so a reader never sees half a file and a planted name is never written through.
"""

from __future__ import annotations

import grp
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"


class UnsafePathError(Exception):
    """A path we would write patient data to, or through, is not safe; the message names it."""


@dataclass(frozen=True)
class Privacy:
    """Who may read what a run writes: the owner only, or the owner and one named group."""

    gid: int | None = None

    @classmethod
    def for_group(cls, group: str | None) -> Privacy:
        return cls(grp.getgrnam(group).gr_gid if group else None)

    @property
    def umask(self) -> int:
        return 0o027 if self.gid is not None else 0o077

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.gid is not None else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.gid is not None else 0o600


def _check_owned_private(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path}: the {what} belongs to another user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(f"{path}: the {what} is writable by other users (chmod go-w it)")


def private_dir(path: Path, privacy: Privacy, what: str = "folder") -> Path:
    """Make `path` (and missing parents) private, or check that an existing one is; returns it.

    Raises UnsafePathError for a symlink, a non-folder, a folder of another user or one others may write.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=privacy.dir_mode)
        except FileExistsError:
            st = path.lstat()  # made meanwhile by someone: judged below like any existing folder
        else:
            if privacy.gid is not None:
                os.chown(path, -1, privacy.gid)
                path.chmod(privacy.dir_mode | stat.S_ISGID)
            return path
    _judge_existing_dir(path, st, what)
    return path


def _judge_existing_dir(path: Path, st: os.stat_result, what: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path}: the {what} is a symbolic link; give its real path")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path}: the {what} is not a folder")
    _check_owned_private(path, st, what)


def check_private_dir(path: Path, what: str = "folder") -> Path | None:
    """Judge `path` as `private_dir` would, creating nothing (for `cpis-batch check`).

    Returns None when the folder exists and is fine, else the nearest existing parent it would be made in.
    Raises UnsafePathError for a folder `private_dir` would refuse, or one it could not make (that parent is
    not a folder we may write in).
    """
    try:
        _judge_existing_dir(path, path.lstat(), what)
        return None
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file: judged by its parent
        pass
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UnsafePathError(f"{path}: the {what} does not exist and cannot be made in {parent}")
    return parent


def check_not_link(path: Path, what: str) -> None:
    """Refuse a symlink (or anything but a regular file) where we expect our own file or nothing."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path}: the {what} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path}: the {what} is not a regular file")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path}: the {what} belongs to another user")


def stage(final: Path, write: Callable[[Path], object], privacy: Privacy) -> Path:
    """Write `final`'s content to a new private temporary file beside it; returns the temporary path.

    The temporary name is created exclusively (never an existing file or link) and fsynced; rename it into
    place with `os.replace` once every file of a set is staged.
    """
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=TMP_SUFFIX)
    tmp = Path(name)
    try:
        os.fchmod(fd, privacy.file_mode)
        os.close(fd)
        write(tmp)
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def clear_staged(folder: Path) -> None:
    """Remove temporary files a killed process left behind (unlink never follows a link)."""
    for leftover in folder.glob(f".*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def point_link(link: Path, target_name: str) -> None:
    """Make `link` a symlink to `target_name` (in the same folder) by renaming a new link over it."""
    while True:
        tmp = link.with_name(f".{link.name}.{os.urandom(6).hex()}{TMP_SUFFIX}")
        try:
            tmp.symlink_to(target_name)
        except FileExistsError:
            continue
        break
    os.replace(tmp, link)
