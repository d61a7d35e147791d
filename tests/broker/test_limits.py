"""Tests for the rate and concurrency limits, on a fake clock (plain floats)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelbroker.broker.limits import ConcurrencyLimiter, KeyedRateLimiter, TokenBucket

# -- TokenBucket ------------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=5.0)
    assert bucket.tokens(100.0) == 5.0
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.tokens(100.0) == 0.0


def test_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.retry_after(0.0) == 0.25
    assert not bucket.take(0.125)
    assert bucket.take(0.25)
    assert not bucket.take(0.25)
    # Long idle time refills only up to burst.
    assert bucket.tokens(1000.0) == 2.0
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_bucket_sustained_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=1.0)
    now, granted = 0.0, 0
    while now < 10.0:
        granted += bucket.take(now)
        now += 0.001
    assert 100 <= granted <= 101


def test_bucket_denied_take_costs_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0)
    assert bucket.take(0.0, 2.0)
    assert not bucket.take(0.0, 2.0)
    assert bucket.take(0.0, 1.0)


def test_bucket_weighted_take_and_retry_after() -> None:
    bucket = TokenBucket(rate=1.0, burst=4.0)
    assert bucket.retry_after(0.0, 4.0) == 0.0
    assert bucket.take(0.0, 3.0)
    assert bucket.retry_after(0.0, 2.0) == 1.0
    assert bucket.retry_after(0.5, 2.0) == 0.5
    assert bucket.retry_after(0.0, 5.0) == math.inf
    assert not bucket.take(0.0, 5.0)


@given(
    rate=st.floats(0.01, 1e4),
    burst=st.floats(1.0, 1e3),
    start=st.floats(0.0, 1e7),
    gaps=st.lists(st.floats(0.0, 5.0), max_size=30),
)
def test_bucket_retry_after_is_exact(
    rate: float, burst: float, start: float, gaps: list[float]
) -> None:
    """Waiting exactly retry_after() always succeeds, despite float rounding."""
    bucket = TokenBucket(rate, burst)
    now = start
    for gap in gaps:
        now += gap
        bucket.take(now)
        wait = bucket.retry_after(now)
        assert wait >= 0.0
        if wait > 0.0:
            assert not bucket.take(now)
        assert bucket.take(now + wait)
        now += wait


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (math.inf, 1), (1, math.nan)])
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        KeyedRateLimiter[str](rate, burst)


# -- KeyedRateLimiter -------------------------------------------------------------------------


def test_keyed_limits_each_key_separately() -> None:
    limiter = KeyedRateLimiter[str](rate=1.0, burst=2.0)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert [limiter.allow("b", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.retry_after("a", 0.0) == 1.0
    assert limiter.retry_after("new", 0.0) == 0.0
    assert not limiter.allow("a", 0.5)
    assert limiter.allow("a", 1.0)
    assert limiter.refused_full == 0


def test_keyed_prune_drops_only_full_buckets() -> None:
    limiter = KeyedRateLimiter[str](rate=1.0, burst=2.0)
    limiter.allow("idle", 0.0)  # full again at t=1
    limiter.allow("busy", 0.0)
    limiter.allow("busy", 0.0)  # full again at t=2
    assert limiter.prune(0.5) == 0
    assert limiter.prune(1.0) == 1
    assert len(limiter) == 1
    # A pruned key behaves exactly like a full bucket.
    assert limiter.allow("idle", 1.0) and limiter.allow("idle", 1.0)
    assert not limiter.allow("idle", 1.0)
    # "busy" was kept: it has refilled one of its two tokens.
    assert limiter.allow("busy", 1.0)
    assert not limiter.allow("busy", 1.0)
    assert limiter.prune(10.0) == 2
    assert len(limiter) == 0


def test_keyed_routine_pruning_keeps_table_small() -> None:
    limiter = KeyedRateLimiter[int](rate=10.0, burst=1.0, max_keys=1_000_000)
    now = 0.0
    for key in range(200_000):
        assert limiter.allow(key, now)
        now += 0.001  # each key is full again 0.1 s after its call
    assert len(limiter) <= 2_100  # ~100 live keys, plus at most one scan period of calls


def test_keyed_table_full_refuses_new_keys() -> None:
    limiter = KeyedRateLimiter[str](rate=1.0, burst=10.0, max_keys=3)
    for key in "abc":
        assert limiter.allow(key, 0.0)
    assert not limiter.allow("d", 0.0)
    assert limiter.refused_full == 1
    assert limiter.allow("a", 0.0)  # known keys keep working
    # "b" and "c" are full again at t=1, "a" at t=2.
    assert limiter.allow("d", 1.0)
    assert len(limiter) == 2
    assert limiter.refused_full == 1


def test_keyed_bounded_under_a_million_distinct_keys() -> None:
    max_keys = 1_000
    limiter = KeyedRateLimiter[int](rate=1.0, burst=5.0, max_keys=max_keys)
    now = 0.0
    accepted = peak = 0
    for key in range(1_000_000):
        accepted += limiter.allow(key, now)
        peak = max(peak, len(limiter))
        now += 1e-5  # 100,000 new sources per second; each entry lives 1 s
    assert peak <= max_keys
    assert limiter.refused_full == 1_000_000 - accepted
    # Entries expire after 1 s, so roughly max_keys new sources get in per second (10 s).
    assert 5 * max_keys <= accepted <= 11 * max_keys
    # Once the flood stops, a legitimate new source gets in within a second.
    assert limiter.allow("legit", now + 1.0)  # type: ignore[arg-type]


def test_keyed_full_table_scans_are_amortised() -> None:
    """A flood of new keys against a table of active keys does not rescan on every call."""
    scans = 0

    class Counting(KeyedRateLimiter[int]):
        __slots__ = ()

        def prune(self, now: float) -> int:
            nonlocal scans
            scans += 1
            return super().prune(now)

    # 1 ms per token: an entry expires 1 ms after its last use unless it is refreshed.
    limiter = Counting(rate=1000.0, burst=1000.0, max_keys=800)
    for key in range(800):
        limiter.allow(key, 0.0)
    now = 0.0
    for key in range(800, 100_800):
        now += 1e-6  # 0.1 s in all: less than one _SCAN_INTERVAL
        # Every key is refreshed each 0.8 ms, so nothing ever expires, yet the lower bound on
        # the expiry times keeps going stale: without a budget every call below would scan.
        limiter.allow(key % 800, now)
        assert not limiter.allow(key, now)
    # Up to one scan per max_keys/8 = 100 calls (200,000 calls here).
    assert scans <= 2_000
    assert limiter.refused_full == 100_000


def test_keyed_rejects_bad_max_keys() -> None:
    with pytest.raises(ValueError):
        KeyedRateLimiter[str](1.0, 1.0, max_keys=0)


# -- ConcurrencyLimiter -----------------------------------------------------------------------


def test_concurrency_per_key_cap() -> None:
    limiter = ConcurrencyLimiter[str](per_key=2, total=10)
    assert limiter.acquire("a") and limiter.acquire("a")
    assert not limiter.acquire("a")
    assert limiter.acquire("b")
    assert limiter.count("a") == 2 and limiter.count("b") == 1 and limiter.count("c") == 0
    assert limiter.total == 3
    assert limiter.refused == 1
    limiter.release("a")
    assert limiter.acquire("a")


def test_concurrency_global_cap() -> None:
    limiter = ConcurrencyLimiter[int](per_key=5, total=3)
    assert all(limiter.acquire(k) for k in range(3))
    assert not limiter.acquire(4)
    assert limiter.count(4) == 0
    limiter.release(0)
    assert limiter.acquire(4)
    assert limiter.total == 3


def test_concurrency_release_more_than_acquired_is_an_error() -> None:
    limiter = ConcurrencyLimiter[str](per_key=2, total=2)
    limiter.acquire("a")
    limiter.release("a")
    with pytest.raises(RuntimeError):
        limiter.release("a")
    with pytest.raises(RuntimeError):
        limiter.release("never")
    assert limiter.total == 0 and len(limiter) == 0


def test_concurrency_forgets_idle_keys() -> None:
    limiter = ConcurrencyLimiter[int](per_key=1, total=10)
    for key in range(10_000):
        assert limiter.acquire(key)
        limiter.release(key)
    assert len(limiter) == 0


def test_concurrency_rejects_bad_caps() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimiter[str](per_key=0, total=1)
    with pytest.raises(ValueError):
        ConcurrencyLimiter[str](per_key=1, total=0)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=200))
def test_concurrency_matches_model(ops: list[tuple[bool, int]]) -> None:
    limiter = ConcurrencyLimiter[int](per_key=3, total=7)
    model: dict[int, int] = {}
    for acquire, key in ops:
        if acquire:
            expected = model.get(key, 0) < 3 and sum(model.values()) < 7
            assert limiter.acquire(key) == expected
            if expected:
                model[key] = model.get(key, 0) + 1
        elif model.get(key, 0):
            limiter.release(key)
            model[key] -= 1
        else:
            with pytest.raises(RuntimeError):
                limiter.release(key)
        assert limiter.count(key) == model.get(key, 0)
        assert limiter.total == sum(model.values())
