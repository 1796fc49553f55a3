"""POST concurrency follows the rate and measured busy time, within the hard cap (docs/decisions.md#d8)."""

from __future__ import annotations

import logging

import pytest

from batch.concurrency import RECENT, WARN_AFTER, PostConcurrency


def _size(concurrency: PostConcurrency) -> int:
    return int(concurrency.limiter.total_tokens)


def _observe(concurrency: PostConcurrency, busy: float, times: int) -> None:
    for _ in range(times):
        concurrency.observe(busy)


def test_the_initial_size_assumes_a_quarter_second_round_trip() -> None:
    # ceil(10 × 0.25 × 3) + 2 = ceil(7.5) + 2 = 10
    concurrency = PostConcurrency(10, 20)
    assert (_size(concurrency), concurrency.peak) == (10, 10)
    assert (concurrency.rate, concurrency.cap) == (10, 20)


@pytest.mark.parametrize(
    ("rate", "cap", "size"),
    [
        (10, 5, 5),  # the cap binds
        (10, 10, 10),  # exactly the need
        (10, 9, 9),  # one short of it
        (10, 1, 1),  # a cap of one is honoured
        (10, 0, 1),  # never fewer than one sender
        (0, 20, 2),  # no rate: only the spare senders
    ],
)
def test_the_initial_size_is_within_the_cap_and_at_least_one(rate: float, cap: int, size: int) -> None:
    concurrency = PostConcurrency(rate, cap)
    assert (_size(concurrency), concurrency.peak) == (size, size)


def test_the_size_follows_the_90th_percentile_of_recent_busy_times() -> None:
    concurrency = PostConcurrency(2, 10_000)  # size = ceil(2 × busy × 3) + 2 = 6 × busy + 2
    concurrency.observe(10)
    assert _size(concurrency) == 62
    for busy in range(1, 10):
        concurrency.observe(busy)
    assert _size(concurrency) == 62  # ten times, 1..10 s: the 90th percentile is index 9, 10 s
    for busy in range(11, 21):
        concurrency.observe(busy)
    assert (_size(concurrency), concurrency.peak) == (116, 116)  # twenty, 1..20 s: index 18 is 19 s


def test_only_the_last_busy_times_count_and_the_peak_is_kept() -> None:
    concurrency = PostConcurrency(2, 1000)
    slow = RECENT - (RECENT * 9) // 10  # just enough slow ones to be the 90th percentile
    _observe(concurrency, 10, slow)
    _observe(concurrency, 1, RECENT - slow)
    assert (_size(concurrency), concurrency.peak) == (62, 62)
    concurrency.observe(1)  # the first slow one is no longer among the last RECENT
    assert (_size(concurrency), concurrency.peak) == (8, 62)


def test_the_size_shrinks_to_the_cap_and_to_one() -> None:
    capped = PostConcurrency(100, 8)
    capped.observe(0.001)
    assert (_size(capped), capped.peak) == (3, 8)  # ceil(0.3) + 2; the initial size stays the peak
    capped.observe(5.0)
    capped.observe(5.0)
    assert (_size(capped), capped.peak) == (8, 8)
    zero_cap = PostConcurrency(100, 0)
    zero_cap.observe(0.5)
    assert (_size(zero_cap), zero_cap.peak) == (1, 1)


def test_a_binding_cap_is_named_once_after_enough_measurements(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="batch.concurrency")
    concurrency = PostConcurrency(2, 3)  # 2/s × 1.5 s + 1 = 4 senders needed, 3 allowed
    _observe(concurrency, 1.5, WARN_AFTER - 1)
    assert caplog.records == []
    concurrency.observe(1.5)
    assert [(r.levelno, r.name, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "batch.concurrency",
            "limits.max_concurrent_posts = 3 binds: each POST takes about 1500 ms, so at most about"
            " 2.0 queries/s can be sent (rate_per_second = 2)",
        )
    ]
    _observe(concurrency, 1.5, 5)
    assert len(caplog.records) == 1


def test_a_cap_that_just_suffices_is_not_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="batch.concurrency")
    enough = PostConcurrency(2, 4)  # 2/s × 1.5 s + 1 = 4: exactly the cap
    _observe(enough, 1.5, WARN_AFTER + 5)
    fast = PostConcurrency(4, 3)  # 4/s × 0.5 s + 1 = 3, and 4 × 0.5 = 2 is not 4 / 0.5 = 8
    _observe(fast, 0.5, WARN_AFTER + 5)
    assert caplog.records == []
