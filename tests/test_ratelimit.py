"""The limiter's bound is checked on the grant times it hands out (its own clock), not on wall-clock speed."""

import anyio
import pytest

from batch.ratelimit import SlidingWindowLimiter, max_in_window


def test_max_in_window_counts_closed_windows() -> None:
    assert max_in_window([0.0, 0.5, 1.0, 1.5]) == 3
    assert max_in_window([0.0, 1.01, 2.02]) == 1
    assert max_in_window([]) == 0


async def _grants(limiter: SlidingWindowLimiter, n: int, tasks: int) -> list[float]:
    times: list[float] = []

    async def take(count: int) -> None:
        for _ in range(count):
            times.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(take, n // tasks)
    return times


@pytest.mark.parametrize("tasks", [1, 7])
async def test_no_window_exceeds_the_rate(tasks: int) -> None:
    # 200 per second checked over 50 ms windows: at most 10 grants in any of them.
    limiter = SlidingWindowLimiter(200, window=0.05)
    times = await _grants(limiter, 70, tasks)
    assert len(times) == 70
    assert max_in_window(times, 0.05) <= 10
    assert max_in_window(times, 1.0) <= 200


async def test_idle_spell_does_not_allow_a_burst() -> None:
    limiter = SlidingWindowLimiter(200, window=0.05)
    first = await _grants(limiter, 10, 1)
    await anyio.sleep(0.1)  # idle: a token bucket would now hold a full burst
    second = await _grants(limiter, 20, 5)
    assert max_in_window(first + second, 0.05) <= 10


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlidingWindowLimiter(0)
