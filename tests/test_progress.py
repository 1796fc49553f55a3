"""Progress lines, the live bar, the read-only state view and JSON logs, in-process (no Spine)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from batch import logs
from batch.ids import new_id
from batch.lock import job_lock, lock_holder
from batch.progress import ProgressOptions, ProgressReporter, describe, duration
from batch.state_view import Snapshot, StateMissing, StateViewError, open_state, read_snapshot, recent_runs
from batch.states import AttemptStatus, Outcome
from batch.store import AttemptRef, Store, utcnow

CHILDREN = ["9991234012", "9991234020", "9434765919", "9434765870"]
RUN = "RUN-UNDER-TEST"


@dataclass
class Lines:
    """Progress records as they are logged; `wait(n)` returns once n have come."""

    records: list[logging.LogRecord]
    changed: anyio.Event

    async def wait(self, n: int, timeout: float = 10) -> list[logging.LogRecord]:
        with anyio.fail_after(timeout):
            while len(self.records) < n:
                await self.changed.wait()
                self.changed = anyio.Event()
        return self.records


class _Collect(logging.Handler):
    def __init__(self, lines: Lines) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("progress:"):
            self.lines.records.append(record)
            self.lines.changed.set()


@contextmanager
def progress_lines() -> Iterator[Lines]:
    lines = Lines([], anyio.Event())
    handler = _Collect(lines)
    logger = logging.getLogger("batch.progress")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _state_with_a_run(path: Path) -> None:
    """A run of four children: one answered (flagged), one rejected (error), one awaiting, one not yet sent."""
    async with Store.open(path) as store:
        await store.begin_or_resume_run(
            run_id=RUN, job_name="job", input_fingerprint="f", reference_date="2026-12-04"
        )
        await store.add_children(RUN, CHILDREN)
        refs = [AttemptRef(new_id(), RUN, nhs, new_id(), new_id()) for nhs in CHILDREN[:3]]
        for ref in refs:
            await store.record_attempt(ref, 1, utcnow())
        await store.record_send_result(refs[0], AttemptStatus.ACCEPTED, acked_at=utcnow())
        await store.record_send_result(refs[1], AttemptStatus.REJECTED, "http_400")
        await store.record_send_result(refs[2], AttemptStatus.ACCEPTED, acked_at=utcnow())
        await store.finish_child(RUN, CHILDREN[0], Outcome.FLAGGED, None)
        await store.finish_child(RUN, CHILDREN[1], Outcome.ERROR, "http_400")


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "state.sqlite"
    await _state_with_a_run(path)
    yield path


def test_snapshot_counts_from_one_read(state: Path) -> None:
    with open_state(state) as conn:
        snapshot = read_snapshot(conn, RUN)
    assert snapshot.children == 4
    assert snapshot.answered == 2
    assert snapshot.outstanding == 2
    assert snapshot.outcomes == {"flagged": 1, "not_flagged": 0, "error": 1, "no_reply": 0}
    assert snapshot.sent == 3
    assert snapshot.awaiting == 1
    assert snapshot.to_send == 1
    assert snapshot.rate_per_s is not None and snapshot.rate_per_s > 0
    assert snapshot.eta_s is not None


def test_rate_is_over_the_last_minute_and_eta_follows_it(state: Path) -> None:
    with open_state(state) as conn:
        first = datetime.fromisoformat(conn.execute("SELECT MIN(sent_at) FROM attempts").fetchone()[0])
        later = read_snapshot(conn, RUN, first + timedelta(minutes=5))
        soon = read_snapshot(conn, RUN, first + timedelta(seconds=30))
    # Nothing sent in the last minute: no rate, so no ETA (one child still needs its query).
    assert later.rate_per_s is None and later.eta_s is None and later.to_send == 1
    # Three sends over the 30 s since the first: 0.1/s, so one more child takes about 10 s.
    assert soon.rate_per_s == pytest.approx(0.1, rel=0.01)
    assert soon.eta_s == pytest.approx(10, rel=0.01)


def test_eta_when_done_or_only_awaiting_replies() -> None:
    done = Snapshot(children=2, answered=2, outcomes={}, sent=2, send_failures=0, awaiting=0, rate_per_s=None)
    waiting = Snapshot(
        children=2, answered=1, outcomes={}, sent=2, send_failures=0, awaiting=1, rate_per_s=3.0
    )
    assert done.eta_s == 0.0
    assert waiting.eta_s is None and waiting.to_send == 0
    assert "awaiting 1 replies" in describe(waiting)
    assert [duration(s) for s in (None, 5, 250, 3720)] == ["?", "5s", "4m10s", "1h02m"]


def test_recent_runs_newest_first(state: Path) -> None:
    with open_state(state) as conn:
        runs = recent_runs(conn, "job")
        assert recent_runs(conn, "another-job") == []
    assert [run.run_id for run in runs] == [RUN]
    assert runs[0].status == "running" and runs[0].snapshot.children == 4


def test_reading_a_closed_state_creates_nothing_beside_it(state: Path) -> None:
    before = sorted(p.name for p in state.parent.iterdir())
    assert before == ["state.sqlite"], "the store removes its WAL on a clean close"
    with open_state(state) as conn:
        read_snapshot(conn, RUN)
    assert sorted(p.name for p in state.parent.iterdir()) == before


def test_a_missing_or_foreign_state_file_is_a_clear_error(tmp_path: Path) -> None:
    with (
        pytest.raises(StateMissing, match="no state file: the job has not run yet"),
        open_state(tmp_path / "none"),
    ):
        pass
    (tmp_path / "junk").write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(StateViewError, match="not a usable state database"), open_state(tmp_path / "junk"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]


async def test_a_progress_line_every_interval(state: Path) -> None:
    with progress_lines() as lines:
        async with ProgressReporter(state, RUN, ProgressOptions(interval_s=0.05)).running():
            records = await lines.wait(2)
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["reason"] == "interval"
    assert fields["sent"] == 3 and fields["answered"] == 2 and fields["outstanding"] == 2
    assert fields["outcomes"] == {"flagged": 1, "not_flagged": 0, "error": 1, "no_reply": 0}
    assert "sent 3, answered 2/4, outstanding 2" in records[0].getMessage()
    for record in records:
        assert not any(nhs in record.getMessage() for nhs in CHILDREN)


async def test_sigusr1_asks_for_a_line_at_once(state: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with progress_lines() as lines:
            async with ProgressReporter(state, RUN, ProgressOptions(interval_s=3600)).running():
                os.kill(os.getpid(), signal.SIGUSR1)
                records = await lines.wait(1)
        assert records[0].fields["reason"] == "SIGUSR1"  # type: ignore[attr-defined]
        # The handler in force before is back: a late SIGUSR1 (while reports are written) ends nothing.
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def test_the_bar_draws_counts_on_a_terminal(state: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    reporter = ProgressReporter(state, RUN, ProgressOptions(bar=True, console=console))
    with progress_lines() as lines:
        async with reporter.running():
            await reporter.refresh_bar()
    text = out.getvalue()
    assert "2/4" in text and "sent 3, awaiting 1, flagged 1, error 1," in text and "ETA" in text
    assert lines.records == [], "the bar replaces the periodic lines"


async def test_an_unreadable_state_never_stops_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "batch.progress")
    async with ProgressReporter(tmp_path / "none.sqlite", RUN, ProgressOptions(interval_s=0.01)).running():
        pass
    assert "no progress lines this run" in caplog.text


def test_json_log_lines_carry_run_id_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json")
        token = logs.run_id_var.set("RUN-1")
        try:
            logging.getLogger("batch.test").info(
                "sent %d", 3, extra=logs.fields({"sent": 3, "rate_per_s": None})
            )
            try:
                raise ValueError("9991234012 must never reach a log")
            except ValueError:
                logging.getLogger("batch.test").exception("failed")
        finally:
            logs.run_id_var.reset(token)
        logging.getLogger("batch.test").warning("no run yet")
    finally:
        logs.configure("INFO", "plain")
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["run_id"] == "RUN-1" and events[0]["message"] == "sent 3"
    assert events[0]["fields"] == {"sent": 3, "rate_per_s": None}
    assert events[0]["level"] == "INFO" and events[0]["logger"] == "batch.test"
    assert datetime.fromisoformat(events[0]["timestamp"]).tzinfo is not None
    assert events[1]["exception"] == "ValueError" and "9991234012" not in lines[1]
    assert events[2]["run_id"] is None and events[2]["fields"] == {}


def test_lock_holder_is_read_without_taking_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite.lock"
    assert lock_holder(path) is None
    with job_lock(path):
        assert lock_holder(path) == os.getpid()
    assert lock_holder(path) is None
