"""The audit trail as information governance reads it: every query sent, when, by whom, about which child and
why, with the child's outcome once known.

Each `query_sent` audit row is written in the attempt's own transaction and never changes (the state file's
triggers refuse it): it holds the time sent, the message id, the NHS number, our ASID and ODS code, the
responsible person, and why (the source file and row, clinic and appointment date of the first input row with an
appointment in the window). The outcome is the child's, joined in at export. An export writes an audit row of
its own: who ran it and counts, never the NHS number searched for.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import polars as pl

from batch.csvsafe import write_csv
from batch.files import Privacy, check_not_link, stage
from batch.nhs_number import Profile, validate
from batch.store import AuditEntry, Store

UK = ZoneInfo("Europe/London")

ExportFormat = Literal["csv", "parquet"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "parquet")

EXPORT_EVENT = "audit_exported"

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)

_TYPES: dict[str, pl.DataType] = {"source_row": pl.Int64(), "input_rows": pl.Int64()}
# The export's columns: AuditEntry's fields, in order.
AUDIT_SCHEMA = pl.Schema({f.name: _TYPES.get(f.name, pl.String()) for f in fields(AuditEntry)})


class AuditArgumentError(Exception):
    """An export argument that cannot be used; the message names the option, never an NHS number."""


def parse_day(text: str, option: str) -> date:
    """A `YYYY-MM-DD` date given for `option`."""
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise AuditArgumentError(f"{option}: '{text}' is not a date (YYYY-MM-DD)") from None


def parse_nhs_number(text: str, profile: Profile) -> str:
    """The 10 digits of a valid NHS number (spaces and dashes allowed); the message never repeats the value."""
    result = validate(text, profile)
    if result.number is None:
        raise AuditArgumentError(f"--nhs-number: not a valid NHS number ({result.reason})")
    return result.number


@dataclass(frozen=True)
class AuditPeriod:
    """Whole days in Europe/London, both included."""

    since: date
    until: date

    def __post_init__(self) -> None:
        if self.since > self.until:
            raise AuditArgumentError(f"--since {self.since} is after --until {self.until}")

    def utc_bounds(self) -> tuple[str, str]:
        """[start, end) as the state file stores times (UTC ISO with milliseconds), across clock changes."""

        def midnight(day: date) -> str:
            local = datetime.combine(day, time(0), tzinfo=UK)
            return local.astimezone(UTC).isoformat(timespec="milliseconds")

        return midnight(self.since), midnight(self.until + timedelta(days=1))


def entries_frame(entries: list[AuditEntry]) -> pl.DataFrame:
    return pl.DataFrame(
        [tuple(getattr(entry, name) for name in AUDIT_SCHEMA) for entry in entries],
        schema=AUDIT_SCHEMA,
        orient="row",
    )


async def read_entries(store: Store, period: AuditPeriod, nhs_number: str | None) -> pl.DataFrame:
    """Every query sent in the period (about one child when `nhs_number` is given), oldest first."""
    since, before = period.utc_bounds()
    frames = [entries_frame(batch) async for batch in store.audit_entries(since, before, nhs_number)]
    return pl.concat(frames, how="vertical") if frames else entries_frame([])


def os_user() -> str:
    """Who runs this process: the effective user, and the person behind sudo when there is one."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid:{uid}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo from {sudo})" if sudo and sudo != name else name


def export_detail(frame: pl.DataFrame, period: AuditPeriod, fmt: ExportFormat, by_nhs_number: bool) -> str:
    """The export's own audit row: who, what period, how many; never the NHS number searched for."""
    children = frame.get_column("nhs_number").drop_nulls().n_unique()
    return (
        f"user={os_user()} queries={frame.height} children={children} since={period.since}"
        f" until={period.until} format={fmt} one_child={'yes' if by_nhs_number else 'no'}"
    )


def stage_export(frame: pl.DataFrame, output: Path, fmt: ExportFormat, privacy: Privacy) -> Path:
    """Write the export to a new private file beside `output` (refused when `output` is a symlink or not a
    file of ours); returns the staged path, to be renamed over `output` once the export is audited.

    Raises UnsafePathError, or OSError when the folder cannot take the file.
    """
    check_not_link(output, "output file")
    writer: Callable[[Path], object] = (
        (lambda path: write_csv(frame, path)) if fmt == "csv" else frame.write_parquet
    )
    staged = stage(output, writer, privacy)
    if privacy.gid is not None:
        # The folder may not be set-group-id: the group that may read is given explicitly, not inherited.
        try:
            os.chown(staged, -1, privacy.gid)
        except OSError:
            staged.unlink(missing_ok=True)
            raise
    return staged
