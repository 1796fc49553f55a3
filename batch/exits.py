"""The exit codes of `cpis-batch`, one definition (docs/decisions.md#d19)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    """Every row reached a final outcome."""
    INCOMPLETE = 1
    """Some rows ended `error` or `no_reply`: see exceptions.csv."""
    USAGE = 2
    """Bad configuration or input, or an unsafe path: one line on stderr, nothing written."""
    SOFTWARE = 70
    """An internal failure (EX_SOFTWARE): the run is marked failed and a rerun resumes it."""
    LOCKED = 75
    """Another run of the same job holds the lock (EX_TEMPFAIL)."""
