"""Benchmark for :mod:`tunnelbroker.broker.allocation`.

Run from the repository root::

    .venv/bin/python bench/bench_allocation.py [--repeat N] [--seed S]

It prints one table row per scenario (best of ``--repeat`` runs):

* ``rebuild``: a fresh pool plus ``reserve()`` of 10,000 /64, 10,000 /56 and 1,000 /48 blocks
  in a /34, as at startup from the database. "packed" is the layout lowest-first allocation
  produces; "scattered" spreads the blocks over the whole /34 so that nearly every reserve
  splits the tree from the top (the worst case). Target: < 0.5 s.
* ``cycle``: one ``allocate()`` + one ``release()``. "fresh /40" splits and re-merges all 24
  levels every time (the worst case); "churn" releases a random block of the rebuilt pool
  and allocates one of the same length. Target: > 50,000 cycles/s.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network

from tunnelbroker.broker.allocation import PrefixPool

POOL = IPv6Network("2001:db8::/34")
COUNTS = {64: 10_000, 56: 10_000, 48: 1_000}
#: The server keeps the first /64 for itself.
SERVER = [IPv6Network((int(POOL.network_address), 64))]


def packed_layout(rng: random.Random) -> list[IPv6Network]:
    """The blocks a lowest-first allocator hands out for requests in random order."""
    lengths = [n for n, count in COUNTS.items() for _ in range(count)]
    rng.shuffle(lengths)
    scratch = PrefixPool(POOL, 48, 64, reserved=SERVER)
    blocks = [scratch.allocate(n) for n in lengths]
    rng.shuffle(blocks)  # the database returns them in no useful order
    return blocks


def scattered_layout(rng: random.Random) -> list[IPv6Network]:
    """The same blocks at random places: /56s and /64s spread over the /48s not taken whole."""
    base = int(POOL.network_address)
    n48 = 1 << (48 - POOL.prefixlen)
    slots = rng.sample(range(1, n48), n48 - 1)  # /48 number 0 holds SERVER
    whole = slots[: COUNTS[48]]
    rest = slots[COUNTS[48] :]
    blocks = [IPv6Network((base | s << 80, 48)) for s in whole]
    taken56: set[tuple[int, int]] = set()
    while len(taken56) < COUNTS[56]:
        taken56.add((rng.choice(rest), rng.randrange(256)))
    blocks += [IPv6Network((base | s << 80 | i << 72, 56)) for s, i in taken56]
    taken64: set[tuple[int, int]] = set()
    while len(taken64) < COUNTS[64]:
        s, i = rng.choice(rest), rng.randrange(1 << 16)
        if (s, i >> 8) not in taken56:
            taken64.add((s, i))
    blocks += [IPv6Network((base | s << 80 | i << 64, 64)) for s, i in taken64]
    rng.shuffle(blocks)
    return blocks


def rebuild(blocks: list[IPv6Network]) -> PrefixPool[IPv6Network]:
    pool = PrefixPool(POOL, 48, 64, reserved=SERVER)
    for block in blocks:
        pool.reserve(block)
    return pool


def best_of(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def fresh_cycles(pool_net: IPv4Network | IPv6Network, length: int, n: int) -> Callable[[], None]:
    def run() -> None:
        pool = PrefixPool(pool_net, length, length)
        allocate, release = pool.allocate, pool.release
        for _ in range(n):
            release(allocate(length))

    return run


def churn_seconds(blocks: list[IPv6Network], n: int, seed: int) -> float:
    """Time ``n`` release-then-allocate cycles on a rebuilt pool (the rebuild is not timed)."""
    pool = rebuild(blocks)
    live = list(blocks)
    rng = random.Random(seed)
    # Drawn up front so that the loop measures the allocator, not the RNG.
    picks = [rng.randrange(len(live)) for _ in range(n)]
    start = time.perf_counter()
    for i in picks:
        old = live[i]
        pool.release(old)
        live[i] = pool.allocate(old.prefixlen)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    n_blocks = sum(COUNTS.values())
    rows: list[tuple[str, int, float, str]] = []

    for name, blocks in (
        ("packed", packed_layout(rng)),
        ("scattered", scattered_layout(rng)),
    ):
        secs = best_of(args.repeat, functools.partial(rebuild, blocks))
        free_entries = len(rebuild(blocks).free_blocks())
        rows.append((f"rebuild {name} ({free_entries} free blocks)", n_blocks, secs, "< 0.5 s"))

    n = 100_000
    for label, run in (
        ("cycle fresh /40 -> /64", fresh_cycles(IPv6Network("2001:db8::/40"), 64, n)),
        ("cycle fresh /32 -> /48", fresh_cycles(IPv6Network("2001:db8::/32"), 48, n)),
        ("cycle fresh v4 /16 -> /30", fresh_cycles(IPv4Network("100.64.0.0/16"), 30, n)),
    ):
        rows.append((label, n, best_of(args.repeat, run), ""))

    for name, blocks in (("packed", packed_layout(rng)), ("scattered", scattered_layout(rng))):
        secs = min(churn_seconds(blocks, n, args.seed) for _ in range(args.repeat))
        rows.append((f"cycle churn {name} /34", n, secs, ""))

    print(f"{'scenario':<44} {'ops':>8} {'seconds':>9} {'ops/s':>10}  target")
    for label, ops, secs, target in rows:
        if not target:
            target = "> 50,000/s"
        print(f"{label:<44} {ops:>8,} {secs:>9.4f} {ops / secs:>10,.0f}  {target}")


if __name__ == "__main__":
    main()
