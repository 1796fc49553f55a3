"""What the simulated Spine counts, exposed on ``GET /_sim/stats`` and in the stats file."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

# Spine would judge our rate by arrivals in any 1-second window (docs/decisions.md#d7).
RATE_WINDOW_S = 1.0


class SimStats:
    def __init__(self) -> None:
        # Called after every change, so that tests and tools can await a condition instead of polling.
        self.listeners: list[Callable[[], None]] = []
        # Gauges: what is under way now. A reset leaves them alone, or work finishing later would drive them
        # negative.
        self.in_flight = 0
        self.replies_pending = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter; the peaks restart from the current gauges."""
        self.queries_received = 0
        self.queries_accepted = 0
        self.queries_rejected = 0
        self.replies_sent = 0
        self.replies_failed = 0
        self.notifications = 0
        self.tls_handshake_failures = 0
        self.queries_by_nhs_number: Counter[str] = Counter()
        # Distinct ebXML MessageIds per number: a transport resend repeats the id, a new attempt does not.
        self._messages_by_nhs_number: dict[str, set[str]] = {}
        self.faults_injected: Counter[str] = Counter()
        self._arrivals: deque[float] = deque()
        self.max_queries_in_1s_window = 0
        self.in_flight_max = self.in_flight
        self.replies_pending_max = self.replies_pending
        self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    def query_arrived(self, now: float) -> None:
        """A query POST arrived at monotonic time ``now``; it stays in flight until ``query_done``."""
        self.queries_received += 1
        arrivals = self._arrivals
        arrivals.append(now)
        # Half-open window (now - 1 s, now]: two queries exactly 1 s apart are in different windows.
        while arrivals[0] <= now - RATE_WINDOW_S:
            arrivals.popleft()
        self.max_queries_in_1s_window = max(self.max_queries_in_1s_window, len(arrivals))
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        self._changed()

    def query_done(self) -> None:
        self.in_flight -= 1
        self._changed()

    def query_accepted(self) -> None:
        self.queries_accepted += 1
        self._changed()

    def query_rejected(self) -> None:
        self.queries_rejected += 1
        self._changed()

    def notification(self) -> None:
        """A query CP-IS would have treated as unscheduled: the local authority would have been told."""
        self.notifications += 1
        self._changed()

    def handshake_failed(self) -> None:
        self.tls_handshake_failures += 1
        self._changed()

    def occurrence(self, nhs_number: str, message_id: str) -> int:
        """Count a query for this number; returns how many came before it."""
        self._messages_by_nhs_number.setdefault(nhs_number, set()).add(message_id.upper())
        previous = self.queries_by_nhs_number[nhs_number]
        self.queries_by_nhs_number[nhs_number] = previous + 1
        self._changed()
        return previous

    def faults(self, names: Iterable[str]) -> None:
        self.faults_injected.update(names)
        self._changed()

    def replies_scheduled(self, count: int) -> None:
        self.replies_pending += count
        self.replies_pending_max = max(self.replies_pending_max, self.replies_pending)
        self._changed()

    def reply_finished(self, *, delivered: bool) -> None:
        self.replies_pending -= 1
        if delivered:
            self.replies_sent += 1
        else:
            self.replies_failed += 1
        self._changed()

    def replies_abandoned(self, count: int) -> None:
        self.replies_pending -= count
        self._changed()

    def snapshot(self) -> dict[str, Any]:
        return {
            "queries_received": self.queries_received,
            "queries_accepted": self.queries_accepted,
            "queries_rejected": self.queries_rejected,
            "replies_sent": self.replies_sent,
            "replies_failed": self.replies_failed,
            "replies_pending": self.replies_pending,
            "replies_pending_max": self.replies_pending_max,
            "notifications": self.notifications,
            "queries_by_nhs_number": dict(sorted(self.queries_by_nhs_number.items())),
            "messages_by_nhs_number": {
                n: len(ids) for n, ids in sorted(self._messages_by_nhs_number.items())
            },
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "max_queries_in_1s_window": self.max_queries_in_1s_window,
            "in_flight": self.in_flight,
            "in_flight_max": self.in_flight_max,
            "tls_handshake_failures": self.tls_handshake_failures,
        }

    def summary(self) -> str:
        """Counts only, for the log (never NHS numbers)."""
        return (
            f"queries received={self.queries_received} accepted={self.queries_accepted} "
            f"rejected={self.queries_rejected}; replies sent={self.replies_sent} "
            f"failed={self.replies_failed} pending={self.replies_pending}; "
            f"notifications={self.notifications}; faults={sum(self.faults_injected.values())}; "
            f"max per 1 s window={self.max_queries_in_1s_window}; max in flight={self.in_flight_max}"
        )
