"""Rate and concurrency limits, pure and with the clock passed in.

Theory of operation
-------------------
A token bucket of ``rate`` tokens/s and capacity ``burst`` is stored as one float, the
*full-at* time: the moment the bucket will be full again (the "theoretical arrival time" of the
generic cell rate algorithm, ITU-T I.371). With ``T = 1/rate``:

* the tokens available at ``now`` are ``burst - max(0, full_at - now) * rate``;
* taking ``n`` tokens moves ``full_at`` to ``max(full_at, now) + n*T``, which is allowed while
  that stays within ``burst*T`` of ``now``;
* a bucket with ``full_at <= now`` is full, i.e. indistinguishable from a bucket never used.

The last point is what keeps :class:`KeyedRateLimiter` bounded: a key whose bucket is full again
carries no information and is dropped. ``now`` is any monotonic clock in seconds (pass
``loop.time()``); it must not go backwards, but if it does the buckets just stay emptier.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["ConcurrencyLimiter", "KeyedRateLimiter", "TokenBucket"]

K = TypeVar("K", bound=Hashable)

# Slack in seconds for float rounding: a caller that waits exactly retry_after() must succeed
# even when the sums come out a few ulps off (2.3 - 2.2 < 0.1). A monotonic clock can read
# 1e8 s or more, where one ulp is ~1e-8 s, so the slack is absolute and far above that; being
# 1 us lenient is immaterial for any rate we limit.
_EPSILON = 1e-6

# Routine scans wait for at least this many calls, so that small tables are not rescanned on
# every call.
_MIN_CALLS_PER_SCAN = 1024
# When the key table is full, scan it for expired keys at most this often (seconds) unless
# enough calls have been made to pay for the scan.
_SCAN_INTERVAL = 1.0


def _check_rate(rate: float, burst: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive and finite, got {rate}")
    if not (burst > 0 and math.isfinite(burst)):
        raise ValueError(f"burst must be positive and finite, got {burst}")


class TokenBucket:
    """One token bucket: ``rate`` tokens per second, at most ``burst`` saved up; starts full.

    Raises:
        ValueError: ``rate`` or ``burst`` is not a positive finite number.
    """

    __slots__ = ("_burst", "_full_at", "_interval", "_rate", "_tau")

    def __init__(self, rate: float, burst: float) -> None:
        _check_rate(rate, burst)
        self._rate = rate
        self._burst = burst
        self._interval = 1.0 / rate  # seconds per token
        self._tau = burst / rate  # seconds to refill an empty bucket
        self._full_at = -math.inf

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; on False nothing is taken."""
        full_at = max(self._full_at, now) + n * self._interval
        if full_at - now - self._tau > _EPSILON:
            return False
        self._full_at = full_at
        return True

    def retry_after(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``take(now + result, n)`` would succeed: 0 if now, inf if ``n > burst``."""
        if n > self._burst:
            return math.inf
        # The same expression as in take(), so both agree on "now" to the last bit.
        wait = max(self._full_at, now) + n * self._interval - now - self._tau
        return wait if wait > _EPSILON else 0.0

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        return self._burst - max(0.0, self._full_at - now) * self._rate


class KeyedRateLimiter(Generic[K]):
    """One token bucket per key (a source address, a user name), with bounded memory.

    Each key costs one dict entry holding a float. Keys whose bucket is full again are pruned by
    a scan of the table, which runs after calls numbering half the keys (amortised O(1) per
    call), and when a new key finds the table full, at most once per ``max_keys / 8`` calls or
    once per second. Both only run if some bucket may have refilled. :meth:`prune` can also be
    called from a timer.

    When the table is full of keys that are still active, a *new* key is refused:
    :meth:`allow` returns False and :attr:`refused_full` is incremented. Keys already in the
    table keep their normal limit. Under a flood from many distinct (possibly spoofed) sources
    we prefer refusing new sessions for a while to letting memory grow without bound; the
    entries expire within ``burst / rate`` seconds of their last use.

    Args:
        rate: tokens per second per key.
        burst: bucket capacity per key.
        max_keys: table size limit.
    """

    __slots__ = (
        "_burst",
        "_calls",
        "_full_at",
        "_interval",
        "_last_scan",
        "_max_keys",
        "_min_full_at",
        "_rate",
        "_tau",
        "refused_full",
    )

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        _check_rate(rate, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._rate = rate
        self._burst = burst
        self._interval = 1.0 / rate
        self._tau = burst / rate
        self._max_keys = max_keys
        self._full_at: dict[K, float] = {}
        # A lower bound on every stored full_at: entries only ever move later, so it stays
        # valid until the next scan recomputes it. While now < it, no entry can be pruned.
        self._min_full_at = math.inf
        self._calls = 0  # calls since the last scan
        self._last_scan = -math.inf
        #: New keys refused because the table was full of active keys.
        self.refused_full = 0

    def __len__(self) -> int:
        """Keys currently tracked."""
        return len(self._full_at)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def allow(self, key: K, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens from ``key``'s bucket; False if it is empty or the table is full."""
        table = self._full_at
        self._calls += 1
        # Routine pruning. Each scan visits len(table) <= 2 x (calls since the last scan)
        # entries, i.e. O(1) per call amortised; a table of live keys can at most double
        # between scans.
        if (
            self._calls >= _MIN_CALLS_PER_SCAN
            and 2 * self._calls >= len(table)
            and now >= self._min_full_at
        ):
            self.prune(now)
        full_at = table.get(key)
        if full_at is None:
            if len(table) >= self._max_keys:
                # A scan costs O(max_keys): only scan when some entry may have expired, and
                # then at most once per max_keys/8 calls or per second, so that a flood of new
                # keys cannot make every call O(max_keys). The time path lets new keys in
                # again soon after a flood, even when few calls follow it.
                if now >= self._min_full_at and (
                    self._calls >= self._max_keys // 8 or now - self._last_scan >= _SCAN_INTERVAL
                ):
                    self.prune(now)
                if len(table) >= self._max_keys:
                    self.refused_full += 1
                    return False
            full_at = now
        else:
            full_at = max(full_at, now)
        full_at += n * self._interval
        if full_at - now - self._tau > _EPSILON:
            return False
        table[key] = full_at
        if full_at < self._min_full_at:
            self._min_full_at = full_at
        return True

    def retry_after(self, key: K, now: float, n: float = 1.0) -> float:
        """Seconds until ``allow(key, now + result, n)`` would succeed, ignoring the table size."""
        if n > self._burst:
            return math.inf
        full_at = max(self._full_at.get(key, -math.inf), now)
        wait = full_at + n * self._interval - now - self._tau
        return wait if wait > _EPSILON else 0.0

    def prune(self, now: float) -> int:
        """Drop every key whose bucket is full again at ``now``; returns how many. O(keys)."""
        table = self._full_at
        expired = [key for key, full_at in table.items() if full_at <= now]
        for key in expired:
            del table[key]
        self._min_full_at = min(table.values(), default=math.inf)
        self._calls = 0
        self._last_scan = now
        return len(expired)


class ConcurrencyLimiter(Generic[K]):
    """Counts in-flight items (handshakes, sessions) per key, with a per-key and a global cap.

    Only keys with something in flight are stored, so memory is bounded by ``total_cap``.

    Raises:
        ValueError: a cap is below 1.
    """

    __slots__ = ("_counts", "_total", "per_key", "refused", "total_cap")

    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError(f"caps must be at least 1, got per_key={per_key}, total={total}")
        self.per_key = per_key
        self.total_cap = total
        self._counts: dict[K, int] = {}
        self._total = 0
        #: acquire() calls refused by either cap.
        self.refused = 0

    def acquire(self, key: K) -> bool:
        """Count one more item for ``key``; False (and nothing counted) if a cap is reached."""
        count = self._counts.get(key, 0)
        if count >= self.per_key or self._total >= self.total_cap:
            self.refused += 1
            return False
        self._counts[key] = count + 1
        self._total += 1
        return True

    def release(self, key: K) -> None:
        """Count one item for ``key`` as finished.

        Raises:
            RuntimeError: nothing is in flight for ``key`` (a release without an acquire is a
                bug in the caller, not something a peer can cause).
        """
        count = self._counts.get(key, 0)
        if count <= 0:
            raise RuntimeError(f"release() without acquire() for {key!r}")
        if count == 1:
            del self._counts[key]
        else:
            self._counts[key] = count - 1
        self._total -= 1

    def count(self, key: K) -> int:
        """Items in flight for ``key``."""
        return self._counts.get(key, 0)

    @property
    def total(self) -> int:
        """Items in flight over all keys."""
        return self._total

    def __len__(self) -> int:
        """Keys with something in flight."""
        return len(self._counts)
