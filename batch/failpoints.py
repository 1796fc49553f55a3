"""Named crash points for the crash-and-resume tests.

`CPIS_BATCH_FAILPOINT=name` (or `name:N` for the N-th time the point is reached) makes the process SIGKILL
itself there, so a test can stop a run at an exact stage instead of racing a timer; `name:N:raise` raises
`FailpointError` there instead, standing for an unexpected internal failure. Unset, it costs a dict lookup.
Never set it in production.
"""

from __future__ import annotations

import os
import signal

_NAME, _, _REST = os.environ.get("CPIS_BATCH_FAILPOINT", "").partition(":")
_NTH, _, _MODE = _REST.partition(":")
_TARGET = int(_NTH) if _NTH.isdigit() else 1
_hits: dict[str, int] = {}


class FailpointError(RuntimeError):
    """Raised at a failpoint set to `raise`."""


def failpoint(name: str) -> None:
    if not _NAME or name != _NAME:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _TARGET:
        if _MODE == "raise":
            raise FailpointError(f"failpoint {name} reached")
        os.kill(os.getpid(), signal.SIGKILL)
