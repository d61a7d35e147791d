"""Per-packet cost of the tunnel server's hot-path pieces (:mod:`tunnelbroker.tunnelserver`).

Run from the repository root::

    .venv/bin/python bench/bench_dataplane_core.py [--repeat N] [--seed S]

Every figure is the best of ``--repeat`` timeit runs (default 7), in nanoseconds per packet,
on one core of whatever machine runs it. It measures:

* **route**: ``ipv6_dst(pkt)`` + ``PrefixTable.lookup()`` (the bytes API), and
  ``ipv6_dst_int(pkt)`` + ``lookup_int()`` (the int API), over a stream of 4,096 packets.
  Tables hold 1, 4, 1,000, 10,000 and 100,000 prefixes. From 4 up they mix /128 (40%), /64
  (30%), /56 (20%) and /48 (10%), and the destinations follow the same mix, so every row from 4
  up makes the same dict probes (2.0 a packet on average). The 1-entry table holds one /128
  and so probes one length only.
* **route, 10,000 prefixes, traffic to 4 of them**: the same table and mix with only 4
  destinations' prefixes in use. Against the 4-prefix row it shows what the table's structure
  costs; against the 10,000 row, what cache misses cost when traffic spreads over all
  prefixes.
* **route by depth**: every destination in a /128 (first probe), in a /48 (fourth probe), or
  nowhere (a miss probes all four), in the 10,000-entry table.
* **echo**: ``echo_reply()`` for a ping with 56 data bytes (a 64-byte ICMPv6 message, as
  ``ping`` prints it; 104 bytes with the IPv6 header), with and without ``our_addresses``.
* **checksum**: ``internet_checksum()`` of 1,400 bytes, beside the ``array('H')`` word sum it
  replaced.
* **others**: ``check_ipv6()`` and ``packet_too_big()`` for a 1,500-byte packet.

The "loop" row is the cost of the bare ``for pkt in pkts: pass`` that the stream rows include;
it is not subtracted.

The bar: the route cost at 10,000 prefixes is within 10% of that at 1,000 (the exit status is 0
only then). The script also prints 10,000 against 4 and 100,000 against 10,000: the probe count
is the same, so what those add is memory (the working set leaves the CPU caches), not work.
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from array import array
from collections.abc import Callable
from ipaddress import IPv6Network

from tunnelbroker.tunnelserver.packet import (
    build_ipv6,
    check_ipv6,
    echo_reply,
    icmpv6_checksum,
    internet_checksum,
    ipv6_dst,
    ipv6_dst_int,
    packet_too_big,
)
from tunnelbroker.tunnelserver.table import PrefixTable

STREAM = 4096
MIX = {128: 0.4, 64: 0.3, 56: 0.2, 48: 0.1}
SRC = bytes.fromhex("20010db8ffff00000000000000000002")
SERVER = bytes.fromhex("20010db8ffff00000000000000000001")
#: Where each length's prefixes live (a /34 each), so that prefixes of different lengths never
#: nest.
REGION = {length: 0x20010DB8 << 96 | i << 94 for i, length in enumerate(sorted(MIX))}


def make_prefixes(n: int, rng: random.Random) -> dict[int, list[IPv6Network]]:
    """``n`` distinct prefixes, split by length as in ``MIX`` (a single /128 when n == 1)."""
    if n == 1:
        counts = {128: 1}
    elif n == 4:
        counts = dict.fromkeys(MIX, 1)
    else:
        counts = {length: round(n * share) for length, share in MIX.items()}
    out: dict[int, list[IPv6Network]] = {}
    for length, count in counts.items():
        numbers: set[int] = set()  # distinct prefix numbers inside the /34
        while len(numbers) < count:
            numbers.add(rng.getrandbits(length - 34))
        out[length] = [IPv6Network((REGION[length] | k << (128 - length), length)) for k in numbers]
    return out


def packet_to(addr: int) -> bytes:
    return build_ipv6(SRC, addr.to_bytes(16, "big"), 17, bytes(24))


def inside(net: IPv6Network, rng: random.Random) -> int:
    return int(net.network_address) | rng.getrandbits(128) & int(net.hostmask)


def stream(
    by_length: dict[int, list[IPv6Network]], rng: random.Random, lengths: list[int] | None = None
) -> list[bytes]:
    """``STREAM`` packets to addresses inside the prefixes, lengths drawn from ``MIX``."""
    lengths = lengths or [n for n in MIX if n in by_length]
    weights = [MIX[n] for n in lengths]
    pkts = []
    for length in rng.choices(lengths, weights, k=STREAM):
        pkts.append(packet_to(inside(rng.choice(by_length[length]), rng)))
    return pkts


def best_ns(fn: Callable[[], object], per_call: int, repeat: int) -> float:
    """Best-of-``repeat`` nanoseconds per item for ``fn`` doing ``per_call`` items a call."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number / per_call * 1e9


def route_bytes(table: PrefixTable[int], pkts: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        lookup = table.lookup
        for pkt in pkts:
            lookup(ipv6_dst(pkt))

    return run


def route_int(table: PrefixTable[int], pkts: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        lookup_int = table.lookup_int
        for pkt in pkts:
            lookup_int(ipv6_dst_int(pkt))

    return run


def empty_loop(pkts: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for _pkt in pkts:
            pass

    return run


def array_checksum(data: bytes) -> int:
    words = array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs; the best is shown")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows: list[tuple[str, float, str]] = []

    def row(name: str, ns: float, note: str = "") -> None:
        rows.append((name, ns, note))
        print(f"{name:<58} {ns:>8.0f} ns {1e9 / ns / 1e6:>7.2f} M/s  {note}", flush=True)

    print(f"Python {sys.version.split()[0]}, best of {args.repeat}\n")
    print(f"{'operation':<58} {'per pkt':>11} {'rate':>9}")
    route_int_rows: dict[int, float] = {}
    route_bytes_rows: dict[int, float] = {}
    tables: dict[int, tuple[PrefixTable[int], dict[int, list[IPv6Network]]]] = {}
    for n in (1, 4, 1_000, 10_000, 100_000):
        by_length = make_prefixes(n, rng)
        table: PrefixTable[int] = PrefixTable()
        for nets in by_length.values():
            for i, net in enumerate(nets):
                table.add(net, i)
        tables[n] = (table, by_length)
        pkts = stream(by_length, rng)
        assert all(table.lookup(ipv6_dst(p)) is not None for p in pkts)
        lengths = "/".join(str(x) for x in sorted(by_length, reverse=True))
        ns_b = best_ns(route_bytes(table, pkts), len(pkts), args.repeat)
        ns_i = best_ns(route_int(table, pkts), len(pkts), args.repeat)
        route_int_rows[n] = ns_i
        route_bytes_rows[n] = ns_b
        row(f"route, {len(table):>6,} prefixes: ipv6_dst + lookup", ns_b, f"lengths {lengths}")
        row(f"route, {len(table):>6,} prefixes: ipv6_dst_int + lookup_int", ns_i)
    loop = best_ns(empty_loop(pkts), len(pkts), args.repeat)
    row("loop: for pkt in pkts: pass (included above)", loop)

    table, by_length = tables[10_000]
    few = {length: nets[:1] for length, nets in by_length.items()}
    pkts = stream(few, rng)
    few_ns = best_ns(route_int(table, pkts), len(pkts), args.repeat)
    row("route, 10,000 prefixes, traffic to 4 of them", few_ns, "(memory-cache effect)")
    for label, only in (("a /128 (probe 1 of 4)", [128]), ("a /48 (probe 4 of 4)", [48])):
        pkts = stream(by_length, rng, only)
        ns = best_ns(route_int(table, pkts), len(pkts), args.repeat)
        row(f"route, 10,000 prefixes, every dst in {label}", ns)
    misses = [packet_to(0x20010DB9 << 96 | rng.getrandbits(96)) for _ in range(STREAM)]
    assert all(table.lookup(ipv6_dst(p)) is None for p in misses)
    ns = best_ns(route_int(table, misses), STREAM, args.repeat)
    row("route, 10,000 prefixes, every dst a miss (4 probes)", ns)

    # A ping with 56 data bytes: an 8-byte echo header + 56 = 64 bytes of ICMPv6.
    dst = SERVER
    body = bytearray(b"\x80\x00\x00\x00\x12\x34\x00\x01" + bytes(range(56)))
    body[2:4] = icmpv6_checksum(SRC, dst, bytes(body)).to_bytes(2, "big")
    ping = build_ipv6(SRC, dst, 58, bytes(body))
    assert len(ping) == 104 and echo_reply(ping) is not None
    ours = frozenset({dst})
    row("echo_reply, 64-byte ICMPv6 ping (104-byte packet)", best_ns(
        lambda: echo_reply(ping), 1, args.repeat))  # fmt: skip
    row("echo_reply, same, our_addresses=frozenset of 1", best_ns(
        lambda: echo_reply(ping, ours), 1, args.repeat))  # fmt: skip

    data = rng.randbytes(1400)
    assert internet_checksum(data) == array_checksum(data)
    row("internet_checksum, 1,400 bytes", best_ns(lambda: internet_checksum(data), 1, args.repeat))
    row("  (array('H') word sum, for comparison)", best_ns(
        lambda: array_checksum(data), 1, args.repeat))  # fmt: skip

    big = build_ipv6(SRC, SERVER, 17, bytes(1460))
    row("check_ipv6, 1,500 bytes", best_ns(lambda: check_ipv6(big), 1, args.repeat))
    row("packet_too_big, 1,500 bytes, mtu 1,480", best_ns(
        lambda: packet_too_big(big, 1480, SERVER), 1, args.repeat))  # fmt: skip

    print()
    for api, results in (("bytes", route_bytes_rows), ("int", route_int_rows)):
        for small, large in ((1_000, 10_000), (4, 10_000), (10_000, 100_000)):
            change = results[large] / results[small] - 1
            print(f"route ({api} API), {large:>7,} vs {small:>6,} prefixes: {change:+6.1%}")
    worst = max(rows[10_000] / rows[1_000] - 1 for rows in (route_bytes_rows, route_int_rows))
    verdict = "met" if worst <= 0.10 else "NOT met"
    print(f"bar: 1,000 -> 10,000 prefixes within 10%: {verdict} ({worst:+.1%} at most)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
