"""`cpis-batch check JOB.toml`: preflight; sends no query (batch.preflight)."""

from __future__ import annotations

from pathlib import Path

from batch.exits import Exit
from batch.preflight import failed, run_checks


def check_command(job_file: Path) -> int:
    """One line per check on stdout; exit 0 when nothing failed (warnings allowed), else 2."""
    checks = run_checks(job_file)
    for check in checks:
        print(check.line(), flush=True)
    return Exit.USAGE if failed(checks) else Exit.OK
