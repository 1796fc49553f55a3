"""Pacing: never more than `rate` queries arriving at Spine in any one-second window (docs/decisions.md#d7).

Why not a token bucket: a bucket whose capacity equals the rate lets up to twice the rate into one second after
an idle spell. Here grants are spaced evenly at `window / rate`, and grant k + R (R = rate × window) waits until
slot k's request has actually started going out and then until `sent_k + window + guard_k`.

Why the guard, and how big. Spine stamps arrivals, not our sends: arrival_k = sent_k + n_k, where n_k is the
time from our first byte to Spine taking in the request. Sends R apart are at least `window + guard_k` apart,
so arrivals R apart are at least `window + guard_k - (n_k - n_min)` apart, and the bound holds when
`guard_k >= n_k - n_min`: the extra delay slot k met on its way. We cannot see n_k, but we do see slot k's round
trip to Spine's synchronous answer, and its excess over the fastest recent round trip bounds n_k - n_min (the
rest of the round trip cannot be faster than its own minimum) up to a small jitter: the fastest round trip need
not have had both the fastest way there and the fastest way back. So each slot's guard is its own measured
excess, and every grant keeps a further `ARRIVAL_JITTER` of the window for the rest.

A round trip far beyond the usual may be Spine holding one answer (a slow acknowledgement), not the request
crawling there. The two are told apart by the neighbours: what delays a request's arrival (a stall at either
end, a queue on the path) delays the requests sent just before and after it too, while a held answer is the
request's own. So a slot's excess counts in full when its neighbours share it (the median of the five around
it is high), or when the request sent next met the rest of it (a stall that began as this request arrived
holds the next one, sent `gap` later, by the excess less `gap`: the median misses a stall that short), and
otherwise only up to a cap of twice the 90th percentile of recent excesses (at least 1 ms, the resolution of
the timers involved; a tenth of the window until 16 round trips are known). A slot whose answer
has not come back when it matters gets the cap, or its neighbours' shared excess if that is larger. A fixed 5% slack gave away
5% of the allowance on every run; this gives away only the delay actually met, typically well under 1%
(measured figures: bench/README.md).

Waiting for slot k to have started sending also covers our own delay between grant and send (the attempt is
made durable in between): however long that takes, slot k + R goes out only `window + guard_k` after it. That
delay is not lost either: slot k + R is granted ahead by the usual time from grant to wire, and a gate just
before its first byte (`RateSlot.go`, called from the HTTP client's trace hook) holds it until its time.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence

import anyio

RECENT = 256  # round trips remembered for the minimum and the cap
# The fastest round trip is rarely made of the fastest way there and the fastest way back, so a slot's excess
# can fall short of its extra delay on the way by that difference (sub-millisecond here); 0.2% of the window
# on every grant covers it. The bench saw 101 arrivals in a second at 100/s without it.
ARRIVAL_JITTER = 0.002
MIN_CAP = 0.001
# Until 16 round trips are known there is no spread to size the cap from: allow up to a tenth of the window.
INITIAL_CAP = 0.1


class RateSlot:
    """One grant. Await `go()` right before the request's first byte goes out; call `sent()` instead for a
    slot whose request never started (idempotent, safe in a `finally`), and `answered()` with the round trip
    once Spine's synchronous answer arrives."""

    __slots__ = ("_event", "_limiter", "granted", "not_before", "round_trip", "sent_at")

    def __init__(self, limiter: SlidingWindowLimiter, granted: float, not_before: float = -math.inf) -> None:
        self._limiter = limiter
        self.granted = granted
        self.not_before = not_before
        self.sent_at: float | None = None
        self.round_trip: float | None = None
        self._event = anyio.Event()

    async def go(self) -> None:
        """Wait until the window allows this request out, then mark it sent (the gate right before the wire)."""
        if self.sent_at is not None:
            return
        now = anyio.current_time()
        self._limiter.lead_observed(now - self.granted)
        if self.not_before > now:
            await anyio.sleep(self.not_before - now)
        self.sent()

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
        self._retired: deque[RateSlot] = deque(maxlen=2)  # the slots just before the oldest, for `guard`
        self._next = -math.inf
        self._lock = anyio.Lock()  # fair: waiters are served in arrival order
        self._round_trips: deque[float] = deque(maxlen=RECENT)
        self._minimum: deque[float] = deque()  # increasing; front is the minimum of _round_trips
        self._excesses: deque[float] = deque(maxlen=RECENT)
        self._cap = INITIAL_CAP * window
        self._since_cap = 0
        self._leads: deque[float] = deque(maxlen=RECENT)
        self._lead = 0.0
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

    def _excess(self, slot: RateSlot) -> float | None:
        # Against the fastest round trip known now, not when the slot's answer came: the first answers of a
        # run have nothing faster to be compared with yet.
        if slot.round_trip is None or not self._minimum:
            return None
        return max(0.0, slot.round_trip - self._minimum[0])

    def guard(self, slot: RateSlot, neighbours: Sequence[RateSlot] = ()) -> float:
        """The extra spacing after `slot` before the grant `capacity` later (see the module docstring).

        `neighbours` are the slots sent just before and after it. A delay they share is a stall on the way
        to Spine, which delayed this request too, so the slot's whole excess counts; a delay of its own is
        Spine holding its answer, and counts only up to the cap.
        """
        excess = self._excess(slot)
        around = sorted(math.inf if (e := self._excess(n)) is None else e for n in (*neighbours, slot))
        shared = around[len(around) // 2] if neighbours else 0.0
        if excess is None:
            known = [e for n in neighbours if (e := self._excess(n)) is not None]
            return max(self._cap, sorted(known)[len(known) // 2] if known else 0.0)
        if excess <= self._cap or shared > self._cap or self._stall_began_here(slot, excess, neighbours):
            return excess
        return self._cap

    def _stall_began_here(self, slot: RateSlot, excess: float, neighbours: Sequence[RateSlot]) -> bool:
        """Whether the request sent next met the rest of this slot's delay: a stall that began as this request
        arrived holds back the next one, sent `gap` later, by `excess - gap` (within the cap)."""
        sent = slot.sent_at
        if sent is None:
            return False
        after = [(n.sent_at, n) for n in neighbours if n.sent_at is not None and n.sent_at > sent]
        if not after:
            return False
        next_sent, following = min(after, key=lambda pair: pair[0])
        met = self._excess(following)
        return met is None or excess - (next_sent - sent) - met <= self._cap

    def seed(self, sent: list[float]) -> None:
        """Count requests already sent at these monotonic times (an earlier process's, before a restart), so
        that the first window of a resumed run holds them too."""
        for at in sorted(sent)[-self.capacity :]:
            slot = RateSlot(self, at)
            slot.sent(at)
            self._slots.append(slot)
            self._next = max(self._next, at + self._interval)

    def lead_observed(self, lead: float) -> None:
        """How long a granted slot took to reach its gate (recording the attempt, building the message)."""
        self._leads.append(lead)
        if len(self._leads) % 16 == 0:
            # A low percentile: granting too early only makes a sender wait at the gate; too late loses rate.
            self._lead = min(self.window / 4, sorted(self._leads)[len(self._leads) // 10])

    async def acquire(self) -> RateSlot:
        """Wait for a grant. The caller must `await slot.go()` before the request's first byte (or call
        `slot.sent()` in a `finally` if the request never starts)."""
        async with self._lock:
            earliest = self._next
            not_before = -math.inf
            if len(self._slots) == self.capacity:
                oldest = self._slots[0]
                sent_at = await oldest.wait_sent()
                guard = self.guard(oldest, (*self._retired, *itertools.islice(self._slots, 1, 3)))
                self.guard_total += guard
                not_before = sent_at + self.window * (1 + ARRIVAL_JITTER) + guard
                # Granted ahead by the usual time to reach the gate, so that time is not lost to the rate;
                # the gate itself holds the request until `not_before`.
                earliest = max(earliest, not_before - self._lead)
            now = anyio.current_time()
            if earliest > now:
                await anyio.sleep(earliest - now)
                now = anyio.current_time()
            slot = RateSlot(self, now, not_before)
            if len(self._slots) == self.capacity:
                self._retired.append(self._slots[0])
            self._slots.append(slot)
            # Spaced from when this grant was due, not from when the sleep happened to end: timers wake a
            # little late, and anchoring on the wake-up would lose that time on every grant. After an idle
            # spell (due long ago) the spacing starts afresh from now.
            due = earliest if now - earliest < self._interval else now
            self._next = due + self._interval
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
