"""The limiter's bound is checked on the times it grants and the send times it is told (its own clock), not on
wall-clock speed. Windows are scaled down (50 ms) so the tests are quick; the arithmetic is the same."""

from __future__ import annotations

import anyio
import pytest

from batch.ratelimit import MIN_CAP, RateSlot, SlidingWindowLimiter, max_in_window

WINDOW = 0.05
RATE = 200  # per second: 10 per 50 ms window, 5 ms apart


def test_max_in_window_counts_half_open_windows() -> None:
    assert max_in_window([0.0, 0.5, 1.0, 1.5]) == 2  # 0.0 and 1.0 are in different windows [t, t + 1)
    assert max_in_window([0.0, 0.5, 0.999, 1.5]) == 3
    assert max_in_window([0.0, 1.01, 2.02]) == 1
    assert max_in_window([2.0, 0.0, 0.5]) == 2  # unsorted input
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.01, 0.02], window=0.015) == 2


async def _grants(limiter: SlidingWindowLimiter, n: int, tasks: int) -> list[RateSlot]:
    slots: list[RateSlot] = []

    async def take(count: int) -> None:
        for _ in range(count):
            slot = await limiter.acquire()
            slot.sent(slot.granted)
            slots.append(slot)

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(take, n // tasks)
    return slots


@pytest.mark.parametrize("tasks", [1, 7])
async def test_no_window_exceeds_the_rate_and_grants_are_evenly_spaced(tasks: int) -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    slots = await _grants(limiter, 70, tasks)
    times = [s.granted for s in slots]
    assert len(times) == 70
    assert max_in_window(times, WINDOW) <= 10
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert min(gaps) >= WINDOW / 10 - 1e-6  # spacing, not bursts of ten


async def test_idle_spell_does_not_allow_a_burst() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    first = await _grants(limiter, 10, 1)
    await anyio.sleep(0.1)  # idle: a token bucket would now hold a full burst
    second = await _grants(limiter, 20, 5)
    assert max_in_window([s.granted for s in first + second], WINDOW) <= 10


async def test_a_grant_waits_for_the_slot_a_window_earlier_to_be_sent() -> None:
    """However long an attempt takes between its grant and its POST, the window is measured from the POST."""
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    late = await limiter.acquire()  # not sent yet (its attempt is still being recorded)
    for _ in range(9):
        (await limiter.acquire()).sent()
    granted: list[RateSlot] = []

    async def eleventh() -> None:
        granted.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(eleventh)
        await anyio.wait_all_tasks_blocked()
        assert granted == []
        sent_at = anyio.current_time()
        late.sent(sent_at)
    assert granted[0].granted >= sent_at + WINDOW + MIN_CAP


async def test_the_guard_is_the_slots_own_round_trip_excess_within_the_cap() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    fast, slow, slower, unknown = (RateSlot(limiter, 0.0) for _ in range(4))
    for slot in (fast, slow, slower, unknown):
        slot.sent(0.0)
    fast.answered(0.010)
    slow.answered(0.0105)
    assert (fast.excess, slow.excess) == (0.0, pytest.approx(0.0005))
    assert limiter.guard(fast) == 0.0
    assert limiter.guard(slow) == pytest.approx(0.0005)
    # Far beyond the usual round trip: Spine holding its answer, not the request crawling there.
    slower.answered(5.0)
    assert limiter.guard(slower) == MIN_CAP
    assert limiter.guard(unknown) == MIN_CAP  # no answer yet: the cap
    # Answered before it was sent? (A failed POST): no excess is taken from it.
    never = RateSlot(limiter, 0.0)
    never.answered(1.0)
    assert never.excess is None


async def test_the_cap_follows_the_recent_spread_of_round_trips() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    # Excesses 0 ms .. 31 ms: after 32 observations the 90th percentile is 28 ms, the cap twice that.
    for ms in range(32):
        limiter.observe(0.010 + ms / 1000)
    slot = RateSlot(limiter, 0.0)
    assert limiter.guard(slot) == pytest.approx(2 * 0.028)


def test_the_minimum_round_trip_is_the_recent_one() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    assert limiter.observe(0.001) == 0.0
    for _ in range(256):  # the fast one falls out of memory
        limiter.observe(0.020)
    assert limiter.observe(0.021) == pytest.approx(0.001)


async def test_a_rate_below_one_per_window_is_kept_by_spacing() -> None:
    limiter = SlidingWindowLimiter(10, window=WINDOW)  # 0.5 per 50 ms window
    slots = await _grants(limiter, 3, 1)
    times = [s.granted for s in slots]
    assert times[1] - times[0] >= 0.1 - 1e-6 and times[2] - times[1] >= 0.1 - 1e-6


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        SlidingWindowLimiter(0)


async def test_sent_is_idempotent() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    slot = await limiter.acquire()
    slot.sent(1.0)
    slot.sent(2.0)
    assert slot.sent_at == 1.0
    assert await slot.wait_sent() == 1.0
