"""Pacing that never lets more than `rate` queries into any window of one second (decision e)."""

from __future__ import annotations

import math
from collections import deque

import anyio


class SlidingWindowLimiter:
    """Grants at most `rate * window` acquisitions in any sliding window of `window` seconds.

    A token bucket whose capacity equals the rate lets up to twice the rate into one second after an idle
    spell; here grants are spaced evenly at `window / rate` (plus slack for arrival jitter at the far end)
    and the window itself is checked against the last grants, so the bound holds wherever the window falls.
    Waiters are served in arrival order (anyio's Lock is fair).
    """

    def __init__(self, rate: float, *, window: float = 1.0, slack: float = 0.05) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.window = window
        self._capacity = max(1, math.floor(rate * window))
        self._interval = (1.0 + slack) / rate
        self._guard = window * slack
        self._granted: deque[float] = deque(maxlen=self._capacity)
        self._next = -math.inf
        self._lock = anyio.Lock()

    async def acquire(self) -> float:
        """Wait for a grant; returns the monotonic time it was granted."""
        async with self._lock:
            earliest = self._next
            if len(self._granted) == self._capacity:
                earliest = max(earliest, self._granted[0] + self.window + self._guard)
            now = anyio.current_time()
            if earliest > now:
                await anyio.sleep(earliest - now)
                now = anyio.current_time()
            self._granted.append(now)
            self._next = now + self._interval
            return now


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of `times` inside any closed window of `window` seconds (for checks and benches)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best
