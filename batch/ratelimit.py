"""Pacing that never lets more than `rate` queries arrive at Spine in any window of one second (decision e).

Why not a token bucket: a bucket whose capacity equals the rate lets up to twice the rate into one second after
an idle spell. Here grants are spaced evenly at `window / rate`, and grant k + R (R = rate × window) waits until
slot k's request has actually started going out and then until `sent_k + window + guard_k`.

Why the guard, and how big. Spine stamps arrivals, not our sends: arrival_k = sent_k + n_k, where n_k is the
time from our first byte to Spine taking in the request. Sends R apart are at least `window + guard_k` apart,
so arrivals R apart are at least `window + guard_k - (n_k - n_min)` apart, and the bound holds when
`guard_k >= n_k - n_min`: the extra delay slot k met on its way. We cannot see n_k, but we do see slot k's round
trip to Spine's synchronous answer, and its excess over the fastest recent round trip bounds n_k - n_min (the
rest of the round trip cannot be faster than its own minimum). So each slot's guard is its own measured excess.

A round trip far beyond the usual is Spine holding its answer (a slow acknowledgement), not the request
crawling there: a request is a few packets, and what delays its arrival (scheduling stalls at either end, a
queue on the path) delays round trips in general and so shows in their recent distribution. Each guard is
therefore capped at twice the 90th percentile of recent excesses (at least 1 ms, the resolution of the timers
involved; a tenth of the window until 16 round trips are known), and a slot whose answer has not come back
when it matters gets that cap. A fixed 5% slack gave away
5% of the allowance on every run; this gives away only the delay actually met, typically well under 1%
(measured figures: bench/README.md).

Waiting for slot k to have started sending also covers our own delay between grant and send (the attempt is
made durable in between): however long that takes, slot k + R is granted only after it.
"""

from __future__ import annotations

import math
from collections import deque

import anyio

RECENT = 256  # round trips remembered for the minimum and the cap
MIN_CAP = 0.001
# Until 16 round trips are known there is no spread to size the cap from: allow up to a tenth of the window.
INITIAL_CAP = 0.1


class RateSlot:
    """One grant. Call `sent()` when the request starts going out (idempotent), and `answered()` with its
    round trip once Spine's synchronous answer arrives; both are safe to call on an unused slot."""

    __slots__ = ("_event", "_limiter", "granted", "round_trip", "sent_at")

    def __init__(self, limiter: SlidingWindowLimiter, granted: float) -> None:
        self._limiter = limiter
        self.granted = granted
        self.sent_at: float | None = None
        self.round_trip: float | None = None
        self._event = anyio.Event()

    def sent(self, at: float | None = None) -> None:
        if self.sent_at is None:
            self.sent_at = anyio.current_time() if at is None else at
            self._event.set()

    def answered(self, round_trip: float) -> None:
        if self.round_trip is None and self.sent_at is not None:
            self.round_trip = round_trip
            self._limiter.observe(round_trip)

    async def wait_sent(self) -> float:
        await self._event.wait()
        assert self.sent_at is not None
        return self.sent_at


class SlidingWindowLimiter:
    """At most `floor(rate × window)` requests in any sliding window of `window` seconds, as Spine counts them."""

    def __init__(self, rate: float, *, window: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.window = window
        self.capacity = max(1, math.floor(rate * window))
        # Below one per window the spacing alone keeps to the rate.
        self._interval = max(window / self.capacity, 1.0 / rate)
        self._slots: deque[RateSlot] = deque(maxlen=self.capacity)
        self._next = -math.inf
        self._lock = anyio.Lock()  # fair: waiters are served in arrival order
        self._round_trips: deque[float] = deque(maxlen=RECENT)
        self._minimum: deque[float] = deque()  # increasing; front is the minimum of _round_trips
        self._excesses: deque[float] = deque(maxlen=RECENT)
        self._cap = INITIAL_CAP * window
        self._since_cap = 0
        self.guard_total = 0.0
        self.grants = 0

    def observe(self, round_trip: float) -> None:
        """Record one round trip."""
        if len(self._round_trips) == self._round_trips.maxlen:
            oldest = self._round_trips[0]
            if self._minimum and self._minimum[0] == oldest:
                self._minimum.popleft()
        self._round_trips.append(round_trip)
        while self._minimum and self._minimum[-1] > round_trip:
            self._minimum.pop()
        self._minimum.append(round_trip)
        excess = round_trip - self._minimum[0]
        self._excesses.append(excess)
        self._since_cap += 1
        if self._since_cap >= 16:  # a percentile of 256 values is cheap, but not free per request
            self._since_cap = 0
            ordered = sorted(self._excesses)
            self._cap = max(MIN_CAP, 2 * ordered[(len(ordered) * 9) // 10])

    def guard(self, slot: RateSlot) -> float:
        """The extra spacing after `slot` before the grant `capacity` later (see the module docstring).

        The excess is taken against the fastest round trip known now, not when the slot's answer came: the
        first answers of a run have nothing faster to be compared with yet.
        """
        if slot.round_trip is None or not self._minimum:
            return self._cap
        return min(max(0.0, slot.round_trip - self._minimum[0]), self._cap)

    def seed(self, sent: list[float]) -> None:
        """Count requests already sent at these monotonic times (an earlier process's, before a restart), so
        that the first window of a resumed run holds them too."""
        for at in sorted(sent)[-self.capacity :]:
            slot = RateSlot(self, at)
            slot.sent(at)
            self._slots.append(slot)
            self._next = max(self._next, at + self._interval)

    async def acquire(self) -> RateSlot:
        """Wait for a grant. The caller must call `sent()` on the slot (a slot never used: in a `finally`)."""
        async with self._lock:
            earliest = self._next
            if len(self._slots) == self.capacity:
                oldest = self._slots[0]
                sent_at = await oldest.wait_sent()
                guard = self.guard(oldest)
                self.guard_total += guard
                earliest = max(earliest, sent_at + self.window + guard)
            now = anyio.current_time()
            if earliest > now:
                await anyio.sleep(earliest - now)
                now = anyio.current_time()
            slot = RateSlot(self, now)
            self._slots.append(slot)
            self._next = now + self._interval
            self.grants += 1
            return slot


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of `times` inside any half-open window [t, t + window) (for checks and benches)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
