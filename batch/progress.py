"""Progress while a run sends and waits: a log line every 30 s and on SIGUSR1, or a live bar on a terminal.

The numbers come from one aggregated read of the state over its own read-only connection
(`batch.state_view`), so `cpis-batch status` in another terminal shows the same ones; nothing is added to the
work done per child. Counts, a rate and an ETA only: never patient data.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import anyio
import anyio.abc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from batch import logs
from batch.state_view import Snapshot, StateViewError, connect, read_snapshot

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0
BAR_REFRESH_S = 1.0

_SignalHandler = Callable[[int, FrameType | None], object] | int | None


@dataclass(frozen=True)
class ProgressOptions:
    interval_s: float = PROGRESS_INTERVAL_S
    """Seconds between progress lines (not used while the bar is drawn)."""
    bar: bool = False
    """Draw a live bar instead of the periodic lines (the CLI: only when stdout is a terminal)."""
    console: Console | None = None
    """Where the bar goes (default: stdout)."""


def duration(seconds: float | None) -> str:
    """`1h02m`, `4m10s`, `35s`; `?` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(snapshot: Snapshot) -> str:
    """The progress line's text (the same counts as its JSON fields)."""
    outcomes = ", ".join(f"{name} {count}" for name, count in snapshot.outcomes.items())
    rate = f"{snapshot.rate_per_s:.2f}/s" if snapshot.rate_per_s is not None else "-/s"
    if snapshot.outstanding == 0:
        eta = "done"
    elif snapshot.eta_s is None and snapshot.to_send == 0:
        eta = f"awaiting {snapshot.awaiting} replies"
    else:
        eta = f"ETA {duration(snapshot.eta_s)}"
    return (
        f"sent {snapshot.sent}, answered {snapshot.answered}/{snapshot.children}, "
        f"outstanding {snapshot.outstanding} ({snapshot.awaiting} awaiting a reply); {outcomes}; "
        f"rate {rate}; {eta}"
    )


def snapshot_fields(snapshot: Snapshot) -> dict[str, logs.FieldValue]:
    return {
        "children": snapshot.children,
        "sent": snapshot.sent,
        "answered": snapshot.answered,
        "outstanding": snapshot.outstanding,
        "awaiting_reply": snapshot.awaiting,
        "send_failures": snapshot.send_failures,
        "outcomes": dict(snapshot.outcomes),
        "rate_per_s": round(snapshot.rate_per_s, 3) if snapshot.rate_per_s is not None else None,
        "eta_s": round(snapshot.eta_s, 1) if snapshot.eta_s is not None else None,
    }


class ProgressReporter:
    """Reports one run's progress from the state file while the block of `running()` lasts."""

    def __init__(self, state: Path, run_id: str, options: ProgressOptions) -> None:
        self._state = state
        self._run_id = run_id
        self._options = options
        self._conn: sqlite3.Connection | None = None
        # The interval and SIGUSR1 may ask at once; one read at a time on the connection.
        self._reading = anyio.Lock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Report until the block ends. SIGUSR1 is handled from the moment the block starts."""
        try:
            conn = connect(self._state)
        except StateViewError as exc:
            # Progress is for people: a state it cannot read must never stop the run.
            log.warning("no progress lines this run: %s", exc)
            yield
            return
        try:
            self._conn = conn
            with self._drawing():
                async with anyio.create_task_group() as tg:
                    await tg.start(self._loop)
                    try:
                        yield
                    finally:
                        tg.cancel_scope.cancel()
                # The final counts stay on the screen.
                await self.refresh_bar()
        finally:
            self._conn = None
            conn.close()

    async def report(self, reason: str) -> None:
        """Read the state once and log a progress line (`reason`: `interval`, `SIGUSR1`)."""
        snapshot = await self._read()
        if snapshot is not None:
            log.info(
                "progress: %s",
                describe(snapshot),
                extra=logs.fields({"reason": reason, **snapshot_fields(snapshot)}),
            )

    async def refresh_bar(self) -> None:
        """Read the state once and redraw the bar."""
        snapshot = await self._read()
        if snapshot is None or self._bar is None or self._task is None:
            return
        # Short enough for an 80-column terminal: the bar's M/N are the children answered; not_flagged is
        # most of them, so only the outcomes that need a look are named.
        rate = f"{snapshot.rate_per_s:.1f}/s" if snapshot.rate_per_s is not None else "-/s"
        if snapshot.outstanding == 0:
            eta = "done"
        else:
            eta = "replies due" if snapshot.to_send == 0 else duration(snapshot.eta_s)
        needs_a_look = (
            f"{name} {count}" for name in ("error", "no_reply") if (count := snapshot.outcomes.get(name))
        )
        detail = ", ".join(
            (
                f"sent {snapshot.sent}",
                f"awaiting {snapshot.awaiting}",
                f"flagged {snapshot.outcomes.get('flagged', 0)}",
                *needs_a_look,
                rate,
                f"ETA {eta}",
            )
        )
        self._bar.update(
            self._task, total=snapshot.children or None, completed=snapshot.answered, detail=detail
        )
        self._bar.refresh()

    async def _read(self) -> Snapshot | None:
        conn = self._conn
        if conn is None:
            return None
        try:
            async with self._reading:
                return await anyio.to_thread.run_sync(read_snapshot, conn, self._run_id)
        except StateViewError as exc:
            # Progress is for people; a failed read must never stop the run.
            log.warning("progress: %s", exc)
            return None

    async def _loop(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with _sigusr1() as signals:
            task_status.started()
            async with anyio.create_task_group() as tg:
                if signals is not None:
                    tg.start_soon(self._on_signals, signals)
                if self._bar is not None:
                    while True:
                        await self.refresh_bar()
                        await anyio.sleep(BAR_REFRESH_S)
                else:
                    while True:
                        await anyio.sleep(self._options.interval_s)
                        await self.report("interval")

    async def _on_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            await self.report("SIGUSR1")

    @contextmanager
    def _drawing(self) -> Iterator[None]:
        if not self._options.bar:
            yield
            return
        console = self._options.console or Console(file=sys.stdout)
        # Log lines go above the bar when both are on the terminal; a redirected stderr is left alone.
        redirect = sys.stderr.isatty()
        bar = Progress(
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=redirect,
        )
        self._bar, self._task = bar, bar.add_task("run", total=None, detail="starting")
        stderr = sys.stderr
        try:
            with bar, _logs_through(stderr, sys.stderr if redirect else None):
                yield
        finally:
            self._bar = self._task = None


@contextmanager
def _logs_through(stderr: TextIO, stream: TextIO | None) -> Iterator[None]:
    """Point the log handlers that write to `stderr` at `stream` (rich's proxy above the bar) for the block."""
    if stream is None or stream is stderr:
        yield
        return
    moved: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
            moved.append((handler, handler.stream))
            handler.setStream(stream)
    try:
        yield
    finally:
        for handler, original in moved:
            handler.setStream(original)


@contextmanager
def _sigusr1() -> Iterator[AsyncIterator[int] | None]:
    """SIGUSR1 as an async stream, where signals can be handled (the main thread); None elsewhere.

    The handler in force before is put back afterwards: asyncio would leave the default one, which ends the
    process, while the run writes its reports.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous: _SignalHandler = signal.getsignal(signal.SIGUSR1)
    try:
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            yield signals
    finally:
        signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)


@asynccontextmanager
async def reporting(state: Path, run_id: str, options: ProgressOptions | None) -> AsyncIterator[None]:
    """Report the run's progress during the block; nothing when `options` is None."""
    if options is None:
        yield
        return
    async with ProgressReporter(state, run_id, options).running():
        yield
