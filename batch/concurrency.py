"""How many POSTs may be under way at once, sized from the rate and how long Spine takes to acknowledge.

To send `rate` queries a second when each keeps its sender busy for `busy` seconds (record the attempt, POST,
wait for the 202, record the result), about `rate × busy` senders must be busy at once, plus one waiting for
the next rate slot. A fixed number cannot fit both a 5 ms loopback and a 200 ms acknowledgement over the NHS
network, so the number follows the measured busy time, within `limits.max_concurrent_posts`, the hard cap
that protects Spine. When the cap binds, the run warns once, naming the key.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import anyio

log = logging.getLogger(__name__)

# Busy times vary, and together: a stall slows every POST under way at once. When no sender is free as a rate
# slot falls due, the grant comes late and that time is lost to the rate for good (the next grant a window on
# waits for this one). Three times the need measured 0.99 of 100/s on the bench, and up to 0.95 of 200/s where
# the CPU allowed; one and a half times, 0.91-0.97 and 0.55, grants 21 ms late on average (bench/README.md).
HEADROOM = 3.0
SPARE = 2
RECENT = 64
INITIAL_BUSY_S = 0.25  # assumed until measured: a round trip over a wide-area network
WARN_AFTER = 20  # measurements before the cap is judged


class PostConcurrency:
    """A capacity limiter whose size follows the measured time each POST keeps its sender busy."""

    def __init__(self, rate: float, cap: int) -> None:
        self.rate = rate
        self.cap = cap
        self._busy: deque[float] = deque(maxlen=RECENT)
        self._measured = 0
        self._warned = False
        self.limiter = anyio.CapacityLimiter(self._size(INITIAL_BUSY_S))
        self.peak = self._size(INITIAL_BUSY_S)

    def _needed(self, busy: float) -> int:
        return math.ceil(self.rate * busy * HEADROOM) + SPARE

    def _size(self, busy: float) -> int:
        return max(1, min(self.cap, self._needed(busy)))

    def observe(self, busy: float) -> None:
        """One sender's busy time, from its rate slot to its recorded result."""
        self._busy.append(busy)
        self._measured += 1
        typical = sorted(self._busy)[(len(self._busy) * 9) // 10]
        size = self._size(typical)
        if size != self.limiter.total_tokens:
            self.limiter.total_tokens = size
            self.peak = max(self.peak, size)
        if not self._warned and self._measured >= WARN_AFTER and self.rate * typical + 1 > self.cap:
            self._warned = True
            log.warning(
                "limits.max_concurrent_posts = %d binds: each POST takes about %.0f ms, so at most about"
                " %.1f queries/s can be sent (rate_per_second = %g)",
                self.cap,
                typical * 1000,
                self.cap / typical,
                self.rate,
            )
