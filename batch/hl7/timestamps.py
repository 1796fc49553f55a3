"""HL7 V3 timestamps: 14 digits of UK local time out, anything reasonable in.

See docs/decisions.md#d5 and docs/protocol.md#p16.
"""

import re
from datetime import datetime
from zoneinfo import ZoneInfo

UK_TIME = ZoneInfo("Europe/London")

# 8, 12 or 14 digits, an optional fraction of a second after 14, and an optional UTC offset.
_TS = re.compile(r"(\d{8}|\d{12}|\d{14}(?:\.\d{1,6})?)([+-]\d{4})?", re.ASCII)


def format_hl7_ts(moment: datetime) -> str:
    """`yyyyMMddHHmmss` in Europe/London local time, without an offset."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("HL7 timestamps are built from timezone-aware datetimes only")
    return moment.astimezone(UK_TIME).strftime("%Y%m%d%H%M%S")


def parse_hl7_ts(value: str | None) -> datetime | None:
    """A naive local datetime, or None for anything unreadable. Never raises.

    An offset (NHS test data carries `+0000`) is dropped, not applied: docs/decisions.md#d5 takes every HL7
    time as UK local time, so all times compare on one clock.
    """
    if not isinstance(value, str):
        return None
    match = _TS.fullmatch(value.strip())
    if match is None:
        return None
    # Fixed-width slices, not strptime: strptime accepts one-digit fields and could misread a bad value.
    # A date alone, or a time without seconds, means midnight / the whole minute; a fraction of a second
    # (after the 14th character) is not read.
    padded = match.group(1).ljust(14, "0")
    month, day, hour, minute, second = (int(padded[i : i + 2]) for i in range(4, 14, 2))
    try:
        return datetime(int(padded[:4]), month, day, hour, minute, second)
    except ValueError:
        return None
