"""How to open the state file read-only without creating anything beside it."""

from __future__ import annotations

from pathlib import Path


def read_only_uri(path: Path) -> str:
    """A SQLite URI that reads `path` and never writes or creates a file.

    While a run has the file open (its `-wal` and `-shm` exist) reading goes through the WAL like any reader.
    Otherwise the file is opened `immutable`: a plain read-only open would create `-wal`/`-shm` beside it,
    owned by whoever asked (perhaps root, or an analyst), which the next run would then refuse as not its own.
    """
    live = all(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-shm"))
    return path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
