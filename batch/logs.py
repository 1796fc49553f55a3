"""Log set-up: one line per event, carrying the run id; never patient data (counts and message ids only).

Two formats on stderr: `plain` (a line of text per event) and `json` (one JSON object per line, for a log
collector): `timestamp` (UTC, ISO 8601), `level`, `logger`, `run_id` (null before a run has one), `message`
and `fields` (the event's numbers as typed values, e.g. a progress line's counts; `{}` when it has none).
A record with an exception carries only its type and frames in JSON: an exception's message may quote data.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeAlias

run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="-")

LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")

FieldValue: TypeAlias = "str | int | float | bool | Mapping[str, int] | None"
"""What an event's `fields` may hold: counts, rates, durations, ids; never patient data."""

_FIELDS = "fields"
_format: LogFormat = "plain"


def fields(values: Mapping[str, FieldValue]) -> dict[str, object]:
    """`extra=` for a log call whose numbers should reach the JSON `fields` object."""
    return {_FIELDS: dict(values)}


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = run_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", "-")
        event: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "run_id": None if run_id == "-" else run_id,
            "message": record.getMessage(),
            _FIELDS: getattr(record, _FIELDS, {}),
        }
        if record.exc_info and record.exc_info[0] is not None:
            frames = traceback.extract_tb(record.exc_info[2])
            event["exception"] = record.exc_info[0].__name__
            event["frames"] = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]
        return json.dumps(event, ensure_ascii=False, default=str)


def _plain_formatter() -> logging.Formatter:
    return logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s run=%(run_id)s %(message)s", "%Y-%m-%dT%H:%M:%S"
    )


def configure(level: str = "INFO", log_format: LogFormat = "plain") -> None:
    global _format
    _format = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RunIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _plain_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's own warnings go through the same handler, so stderr stays one format.
    logging.captureWarnings(True)
    # Third-party chatter can echo request details; keep it to warnings.
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_json() -> bool:
    """Whether stderr carries JSON lines only (so a one-line error must be a log record too)."""
    return _format == "json"
