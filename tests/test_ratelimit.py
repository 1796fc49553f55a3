"""The limiter's bound is checked on the times it grants and the send times it is told (its own clock), not on
wall-clock speed. Windows are scaled down (50 ms) so the tests are quick; the arithmetic is the same."""

from __future__ import annotations

import itertools

import anyio
import pytest

from batch.ratelimit import (
    ARRIVAL_JITTER,
    INITIAL_CAP,
    MIN_CAP,
    RateSlot,
    SlidingWindowLimiter,
    max_in_window,
)

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
    ordered = sorted(times)
    # Evenly paced, never ahead of schedule: the i-th grant comes no earlier than i intervals after the first
    # (a grant that woke late may be followed sooner, catching up to the schedule, not beyond it).
    assert all(t - ordered[0] >= i * WINDOW / 10 - 1e-6 for i, t in enumerate(ordered))
    assert min(b - a for a, b in itertools.pairwise(ordered)) > 0


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
    assert granted[0].granted >= sent_at + WINDOW + INITIAL_CAP * WINDOW


async def test_the_guard_is_the_slots_own_round_trip_excess_within_the_cap() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    first, fast, slow, unknown = (RateSlot(limiter, 0.0) for _ in range(4))
    for slot in (first, fast, slow, unknown):
        slot.sent(0.0)
    # The first answer has nothing to compare with yet; it is judged against the fastest known later.
    first.answered(0.012)
    fast.answered(0.010)
    slow.answered(0.0105)
    assert limiter.guard(first) == pytest.approx(0.002)
    assert limiter.guard(fast) == 0.0
    assert limiter.guard(slow) == pytest.approx(0.0005)
    # Until 16 round trips are known, the cap is a tenth of the window; an unanswered slot gets the cap.
    assert limiter.guard(unknown) == pytest.approx(INITIAL_CAP * WINDOW)
    held = RateSlot(limiter, 0.0)
    held.sent(0.0)
    held.answered(5.0)  # Spine holding its answer, not the request crawling there
    assert limiter.guard(held) == pytest.approx(INITIAL_CAP * WINDOW)
    # A slot answered before it was sent (a failed POST) records nothing.
    never = RateSlot(limiter, 0.0)
    never.answered(1.0)
    assert never.round_trip is None


async def test_the_cap_follows_the_recent_spread_of_round_trips() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    # Excesses 0 ms .. 31 ms: after 32 observations the 90th percentile is 28 ms, the cap twice that.
    for ms in range(32):
        limiter.observe(0.010 + ms / 1000)
    slow = RateSlot(limiter, 0.0)
    slow.sent(0.0)
    slow.answered(1.0)
    assert limiter.guard(slow) == pytest.approx(2 * 0.028)
    assert limiter.guard(RateSlot(limiter, 0.0)) == pytest.approx(2 * 0.028)


async def test_a_steady_path_earns_the_floor_cap() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    for _ in range(32):
        limiter.observe(0.010)
    assert limiter.guard(RateSlot(limiter, 0.0)) == MIN_CAP


def test_the_minimum_round_trip_is_the_recent_one() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    limiter.observe(0.001)
    for _ in range(256):  # the fast one falls out of memory
        limiter.observe(0.020)
    slot = RateSlot(limiter, 0.0)
    slot.sent(0.0)
    slot.answered(0.021)
    assert limiter.guard(slot) == pytest.approx(0.001)


async def test_a_rate_below_one_per_window_is_kept_by_spacing() -> None:
    limiter = SlidingWindowLimiter(10, window=WINDOW)  # 0.5 per 50 ms window
    slots = await _grants(limiter, 4, 1)
    times = [s.granted for s in slots]
    # One per 100 ms on schedule, counted from the first grant.
    assert all(t - times[0] >= i * 0.1 - 1e-6 for i, t in enumerate(times))


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


async def test_a_seeded_history_counts_in_the_first_window() -> None:
    """A restarted run's first grants respect the sends its killed predecessor made just before."""
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    now = anyio.current_time()
    earlier = [now - WINDOW + i * (WINDOW / 10) for i in range(1, 11)]  # ten sends in the last window
    limiter.seed([*earlier, now - 10.0])  # older ones than a window's worth are irrelevant
    slots = await _grants(limiter, 5, 1)
    assert max_in_window([*earlier, *(s.granted for s in slots)], WINDOW) <= 10
    assert slots[0].granted >= earlier[0] + WINDOW


async def test_a_slot_granted_ahead_is_held_at_its_gate_until_the_window_allows() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    for _ in range(16):
        limiter.lead_observed(0.01)  # attempts usually take 10 ms from grant to wire
    first = [await limiter.acquire() for _ in range(10)]
    for slot in first:
        await slot.go()
    eleventh = await limiter.acquire()
    jitter = ARRIVAL_JITTER * WINDOW
    # Differences, not clock readings: approx's relative tolerance of a monotonic clock's value is milliseconds.
    assert eleventh.not_before - first[0].sent_at == pytest.approx(WINDOW + jitter + INITIAL_CAP * WINDOW)
    assert eleventh.granted < eleventh.not_before  # granted ahead, by the usual lead
    await eleventh.go()
    assert eleventh.sent_at is not None and eleventh.sent_at >= eleventh.not_before
    sends = [s.sent_at for s in [*first, eleventh] if s.sent_at is not None]
    assert max_in_window(sends, WINDOW) <= 10


async def test_go_is_a_no_op_for_a_slot_already_marked_sent() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    slot = RateSlot(limiter, 0.0, not_before=anyio.current_time() + 60)
    slot.sent(1.0)
    with anyio.fail_after(1):
        await slot.go()
    assert slot.sent_at == 1.0


async def test_a_delay_the_neighbours_share_counts_in_full() -> None:
    """A stall delays the requests around a slot too: then its whole excess is the guard, above the cap."""
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    for _ in range(32):
        limiter.observe(0.010)  # a steady path: the cap is the 1 ms floor

    def answered(round_trip: float | None) -> RateSlot:
        slot = RateSlot(limiter, 0.0)
        slot.sent(0.0)
        if round_trip is not None:
            slot.answered(round_trip)
        return slot

    held = answered(0.510)
    steady = [answered(0.010) for _ in range(4)]
    assert limiter.guard(held, steady) == MIN_CAP  # Spine held this one answer: capped
    stalled = [answered(0.300), answered(0.400), answered(0.350), answered(0.010)]
    assert limiter.guard(held, stalled) == pytest.approx(0.5)  # a stall they share: in full
    still_out = [answered(None), answered(None), answered(0.350), answered(0.010)]
    assert limiter.guard(held, still_out) == pytest.approx(0.5)  # unanswered neighbours count as stalled
    assert limiter.guard(answered(None), stalled) == pytest.approx(0.34)  # unknown: the neighbours' median


async def test_a_stall_that_began_at_this_slot_counts_in_full() -> None:
    """A stall shorter than two gaps delays this request fully and the next one less, so the median of the
    five around it stays low; the next request having met the rest of the delay shows it was a stall."""
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    for _ in range(32):
        limiter.observe(0.010)  # a steady path: the cap is the 1 ms floor

    def answered(sent_at: float, round_trip: float) -> RateSlot:
        slot = RateSlot(limiter, sent_at)
        slot.sent(sent_at)
        slot.answered(round_trip)
        return slot

    before = [answered(0.0, 0.010), answered(0.010, 0.010)]
    stalled = answered(0.020, 0.025)  # 15 ms late
    met_rest = [answered(0.030, 0.015), answered(0.040, 0.010)]  # the next one 5 ms late: 15 - its 10 ms gap
    assert limiter.guard(stalled, (*before, *met_rest)) == pytest.approx(0.015)
    on_time = [answered(0.030, 0.010), answered(0.040, 0.010)]  # the next one on time: Spine held this answer
    assert limiter.guard(stalled, (*before, *on_time)) == MIN_CAP
    # The next one 0.5 ms short of the rest of the delay: within the cap, still a stall.
    late_by_gap = [answered(0.030, 0.0145), answered(0.040, 0.010)]
    assert limiter.guard(stalled, (*before, *late_by_gap)) == pytest.approx(0.015)
    unanswered = RateSlot(limiter, 0.030)
    unanswered.sent(0.030)
    assert limiter.guard(stalled, (*before, unanswered)) == pytest.approx(0.015)  # still out: stalled


# --- the bookkeeping behind the guard, the lead and the pacing, checked exactly ---------------------------


def _slot_with_round_trip(limiter: SlidingWindowLimiter, round_trip: float) -> RateSlot:
    """A slot whose round trip is known without recording it (so the limiter's memory stays as it is)."""
    slot = RateSlot(limiter, 0.0)
    slot.sent(0.0)
    slot.round_trip = round_trip
    return slot


def test_the_minimum_leaves_memory_exactly_when_its_round_trip_does() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    limiter.observe(0.001)
    for _ in range(255):
        limiter.observe(0.020)
    assert limiter.guard(_slot_with_round_trip(limiter, 0.0011)) == pytest.approx(0.0001)  # 0.001 remembered
    limiter.observe(0.020)  # the 257th: the fast one falls out now
    assert limiter.guard(_slot_with_round_trip(limiter, 0.021)) == pytest.approx(0.001)


def test_a_minimum_that_is_not_the_oldest_stays_when_the_oldest_leaves() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    limiter.observe(0.010)
    limiter.observe(0.005)
    for _ in range(255):  # the 0.010 falls out; the 0.005 after it is still remembered
        limiter.observe(0.020)
    assert limiter.guard(_slot_with_round_trip(limiter, 0.021)) == pytest.approx(0.016)


async def test_a_seeded_history_keeps_the_latest_window_of_sends() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)  # capacity 10, 5 ms apart
    sent = [100.0 + i for i in range(12)]
    limiter.seed(list(reversed(sent)))
    assert [(slot.granted, slot.sent_at, slot.round_trip) for slot in limiter._slots] == [
        (at, at, None) for at in sent[2:]
    ]
    assert limiter._next == pytest.approx(111.0 + WINDOW / 10)


def test_the_lead_is_a_low_percentile_of_the_last_leads_counted_every_16() -> None:
    limiter = SlidingWindowLimiter(5, window=1.0)
    lead = lambda: limiter._lead  # noqa: E731 - the grant-ahead time the limiter uses
    limiter.lead_observed(0.016)
    assert lead() == 0.0  # too few to judge
    for ms in range(15, 0, -1):
        limiter.lead_observed(ms / 1000)
    assert lead() == 0.002  # 16 leads, 1..16 ms: index 16 // 10 = 1
    for ms in range(17, 33):
        limiter.lead_observed(ms / 1000)
    assert lead() == 0.004  # 32 leads, 1..32 ms: index 3
    for _ in range(16):
        limiter.lead_observed(0.9)
    assert lead() == 0.005  # 48 leads: index 4


def test_the_lead_is_at_most_a_quarter_of_the_window() -> None:
    limiter = SlidingWindowLimiter(5, window=1.0)
    for _ in range(16):
        limiter.lead_observed(0.3)
    assert limiter._lead == 0.25
    for _ in range(16):
        limiter.lead_observed(0.2)
    assert limiter._lead == 0.2


async def test_the_guard_of_each_grant_is_judged_with_the_slots_sent_just_after_it() -> None:
    limiter = SlidingWindowLimiter(60, window=WINDOW)  # capacity 3
    for _ in range(32):
        limiter.observe(0.010)  # a steady path: the cap is the 1 ms floor
    held, steady_1, steady_2 = [await limiter.acquire() for _ in range(3)]
    past = anyio.current_time() - 1.0
    for slot, round_trip in ((held, 0.510), (steady_1, 0.010), (steady_2, 0.010)):
        slot.sent(past)
        slot.answered(round_trip)
    await limiter.acquire()  # after `held`: its neighbours were steady, so its delay was its own: capped
    assert limiter.guard_total == MIN_CAP
    # After steady_1: no delay of its own, whatever its neighbours (held, now retired, and the rest) met.
    fourth = await limiter.acquire()
    assert limiter.guard_total == MIN_CAP
    assert limiter.grants == 5
    assert fourth.not_before - past == pytest.approx(WINDOW * (1 + ARRIVAL_JITTER))


async def test_grants_are_spaced_from_when_they_were_due_not_from_a_late_wake_up() -> None:
    limiter = SlidingWindowLimiter(RATE, window=WINDOW)
    interval = WINDOW / 10
    first = await limiter.acquire()
    second = await limiter.acquire()  # slept until first + interval, and woke a little after
    assert second.granted >= first.granted + interval
    assert limiter._next == first.granted + interval + interval
    await anyio.sleep(3 * interval)  # idle: the next grant is due at once and spacing starts afresh
    third = await limiter.acquire()
    assert limiter._next == third.granted + interval
