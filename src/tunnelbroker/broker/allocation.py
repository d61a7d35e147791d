"""Buddy allocation of aligned prefixes inside an address pool.

Theory of operation
-------------------
A pool such as ``2001:db8::/40`` hands out aligned blocks (link /64s, delegated /48../64s, or
IPv4 /30s for v4v6 tunnels). Every block of length *l* has exactly one *buddy*: the other half
of the block of length *l - 1* that contains it (``addr ^ size``). The allocator keeps:

* ``_free[l]``: the start addresses of the free blocks of exactly length *l*. Free blocks are
  maximal: two buddies are never both free, they are merged into their parent at once. So the
  free lists are the unique canonical decomposition of the free space, and any free aligned
  block lies inside exactly one listed free block.
* ``_heap[l]``: the same addresses as a min-heap, so "lowest address first" costs one peek per
  length rather than a sort.
* ``_allocated`` / ``_reserved``: start address -> length of every block that is taken.

``allocate(l)`` takes the lowest-addressed free block of any length <= *l* and splits it down,
keeping the low half and freeing each high half. ``release`` frees a block and merges it with its
buddy for as long as the buddy is free. ``reserve`` finds the free block that contains the
requested one (at most one set lookup per level) and splits it down the same way.

Splitting is lazy: a /40 holds 2**24 /64s, but one allocation only ever adds one free block per
level it splits. The free lists therefore hold O(taken blocks x depth) entries, and nothing here
ever enumerates addresses one by one. All arithmetic is on ints; ``ipaddress`` objects appear only
at the API boundary.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

__all__ = [
    "AlreadyAllocated",
    "AnyNetwork",
    "NotAllocated",
    "NotInPool",
    "PoolExhausted",
    "PrefixPool",
]

#: The network type of a pool; blocks handed out have the same type.
N = TypeVar("N", bound=IPv4Network | IPv6Network)
AnyNetwork = IPv4Network | IPv6Network

# Rebuild a heap from its set once stale entries outnumber live ones by this factor (plus a
# small floor, so tiny heaps are not rebuilt on every push).
_HEAP_SLACK = 2
_HEAP_FLOOR = 32


class PoolExhausted(Exception):
    """No free block of the requested length is left in the pool."""


class NotInPool(ValueError):
    """The block is not inside the pool (or belongs to the other address family)."""


class AlreadyAllocated(ValueError):
    """The block overlaps a block that is already allocated or reserved."""


class NotAllocated(ValueError):
    """The block is not currently allocated (so it cannot be released)."""


class PrefixPool(Generic[N]):
    """Aligned prefix allocator for one IPv4 or IPv6 pool.

    Args:
        pool: the whole address range, e.g. ``IPv6Network("2001:db8::/40")``.
        min_length: shortest prefix :meth:`allocate` will hand out (largest block).
        max_length: longest prefix :meth:`allocate` will hand out (smallest block).
        reserved: blocks never handed out, e.g. the server's own /64 or the subnet-router
            anycast address as a /128. Any length inside the pool is accepted. They are carved
            out once, are not counted in :attr:`allocated` and cannot be released.

    Raises:
        ValueError: unless ``pool.prefixlen <= min_length <= max_length <= address bits``.
        NotInPool, AlreadyAllocated: for a bad or overlapping ``reserved`` block.
    """

    __slots__ = (
        "_allocated",
        "_base",
        "_bits",
        "_cls",
        "_free",
        "_heap",
        "_max",
        "_min",
        "_plen",
        "_pool",
        "_reserved",
    )

    def __init__(
        self,
        pool: N,
        min_length: int,
        max_length: int,
        reserved: Iterable[AnyNetwork] = (),
    ) -> None:
        bits = pool.max_prefixlen
        if not pool.prefixlen <= min_length <= max_length <= bits:
            raise ValueError(
                f"need {pool.prefixlen} <= min_length <= max_length <= {bits}, "
                f"got {min_length}..{max_length}"
            )
        self._pool: N = pool
        self._cls: type[N] = type(pool)
        self._bits: int = bits
        self._plen = pool.prefixlen
        self._base = int(pool.network_address)
        self._min = min_length
        self._max = max_length
        # Indexed by absolute prefix length; lengths above max_length only ever hold the
        # fragments left over by carving out small reserved blocks.
        self._free: list[set[int]] = [set() for _ in range(bits + 1)]
        self._heap: list[list[int]] = [[] for _ in range(bits + 1)]
        self._allocated: dict[int, int] = {}
        self._reserved: dict[int, int] = {}
        self._push(self._base, self._plen)
        for net in reserved:
            addr, length = self._unpack(net)
            self._carve(addr, length)
            self._reserved[addr] = length

    # -- public API ---------------------------------------------------------------------------

    @property
    def pool(self) -> N:
        """The whole pool."""
        return self._pool

    @property
    def min_length(self) -> int:
        return self._min

    @property
    def max_length(self) -> int:
        return self._max

    @property
    def allocated(self) -> int:
        """How many blocks are allocated (through :meth:`allocate` or :meth:`reserve`)."""
        return len(self._allocated)

    @property
    def reserved(self) -> list[N]:
        """The blocks reserved at construction, lowest address first."""
        return [self._cls((a, n)) for a, n in sorted(self._reserved.items())]

    def allocate(self, length: int) -> N:
        """Take the lowest-addressed free aligned block of prefix length ``length``.

        Raises:
            ValueError: ``length`` is outside ``[min_length, max_length]``.
            PoolExhausted: no free block of that size is left.
        """
        if not self._min <= length <= self._max:
            raise ValueError(f"prefix length {length} outside {self._min}..{self._max}")
        free = self._free
        heap = self._heap
        best: int | None = None
        best_len = 0
        # Free blocks are maximal, so any free aligned block of this size lies inside one listed
        # free block of length <= `length`; the lowest such listed start is therefore the
        # lowest address where the block fits.
        for level in range(self._plen, length + 1):
            live = free[level]
            if live:
                h = heap[level]
                top = h[0]
                while top not in live:  # drop entries removed since they were pushed
                    heapq.heappop(h)
                    top = h[0]
                if best is None or top < best:
                    best = top
                    best_len = level
        if best is None:
            raise PoolExhausted(f"no free /{length} left in {self._pool}")
        free[best_len].remove(best)
        heapq.heappop(heap[best_len])  # `best` is that heap's top
        bits = self._bits
        for level in range(best_len + 1, length + 1):
            self._push(best | (1 << (bits - level)), level)
        self._allocated[best] = length
        return self._cls((best, length))

    def reserve(self, net: AnyNetwork) -> None:
        """Mark exactly ``net`` as allocated, e.g. when rebuilding state from the database.

        Any length inside the pool is accepted, so allocations made under an older
        ``min_length``/``max_length`` configuration can still be restored.

        Raises:
            NotInPool: ``net`` is not inside the pool.
            AlreadyAllocated: ``net`` overlaps an allocated or reserved block.
        """
        addr, length = self._unpack(net)
        self._carve(addr, length)
        self._allocated[addr] = length

    def release(self, net: AnyNetwork) -> None:
        """Free an allocated block, merging it with its free buddies.

        Raises:
            NotInPool: ``net`` is not inside the pool.
            NotAllocated: ``net`` is not exactly an allocated block (reserved blocks included).
        """
        addr, length = self._unpack(net)
        if self._allocated.get(addr) != length:
            raise NotAllocated(f"{net} is not allocated")
        del self._allocated[addr]
        self._merge(addr, length)

    def is_allocated(self, net: AnyNetwork) -> bool:
        """Whether ``net`` is exactly an allocated block (False for reserved blocks)."""
        try:
            addr, length = self._unpack(net)
        except NotInPool:
            return False
        return self._allocated.get(addr) == length

    def __contains__(self, net: object) -> bool:
        """Whether ``net`` (a network) lies inside the pool, allocated or not."""
        if not isinstance(net, IPv4Network | IPv6Network):
            return False
        try:
            self._unpack(net)
        except NotInPool:
            return False
        return True

    def free_count(self, length: int) -> int:
        """How many more blocks of prefix length ``length`` could be allocated right now.

        Exact: each free block of length *l* <= ``length`` holds ``2**(length - l)`` of them,
        and fragments smaller than ``length`` hold none.

        Raises:
            ValueError: ``length`` is outside ``[min_length, max_length]``.
        """
        if not self._min <= length <= self._max:
            raise ValueError(f"prefix length {length} outside {self._min}..{self._max}")
        free = self._free
        return sum(len(free[level]) << (length - level) for level in range(self._plen, length + 1))

    def utilisation(self) -> float:
        """Share of the pool's ``max_length``-sized slots that are not free, in ``[0, 1]``."""
        slots = 1 << (self._max - self._plen)
        return 1.0 - self.free_count(self._max) / slots

    def free_blocks(self) -> list[N]:
        """The free blocks (maximal, so buddies never both appear), lowest address first.

        Costs O(free blocks), which is O(taken blocks x depth); meant for status pages and tests.
        """
        blocks = [
            (a, level) for level in range(self._plen, self._bits + 1) for a in self._free[level]
        ]
        return [self._cls(b) for b in sorted(blocks)]

    def __repr__(self) -> str:
        return (
            f"<PrefixPool {self._pool} /{self._min}../{self._max} "
            f"allocated={len(self._allocated)} reserved={len(self._reserved)}>"
        )

    # -- internals ------------------------------------------------------------------------------

    def _unpack(self, net: AnyNetwork) -> tuple[int, int]:
        """``(start address, prefix length)`` of ``net``, checked to lie inside the pool."""
        length = net.prefixlen
        addr = int(net.network_address)
        shift = self._bits - self._plen
        if (
            net.version != self._pool.version
            or length < self._plen
            or (addr >> shift != self._base >> shift)
        ):
            raise NotInPool(f"{net} is not inside {self._pool}")
        return addr, length

    def _push(self, addr: int, level: int) -> None:
        """Add a free block to the lists (the caller has merged buddies already)."""
        live = self._free[level]
        live.add(addr)
        h = self._heap[level]
        if len(h) > _HEAP_SLACK * len(live) + _HEAP_FLOOR:
            # Too many stale entries: rebuild from the live set so heap size stays O(live).
            h[:] = live
            heapq.heapify(h)
        else:
            heapq.heappush(h, addr)

    def _carve(self, addr: int, length: int) -> None:
        """Take the block (addr, length) out of the free block that contains it, splitting down.

        Raises:
            AlreadyAllocated: no single free block contains it, i.e. some of it is taken.
        """
        bits = self._bits
        free = self._free
        level = length
        while True:
            start = addr >> (bits - level) << (bits - level)
            if start in free[level]:
                break
            if level == self._plen:
                net = self._cls((addr, length))
                raise AlreadyAllocated(f"{net} overlaps an allocated or reserved block")
            level -= 1
        # Left as a stale heap entry; allocate() skips it when it surfaces.
        free[level].remove(start)
        while level < length:
            level += 1
            half = 1 << (bits - level)
            if addr & half:  # `addr` is in the high half: the low half stays free
                self._push(start, level)
                start |= half
            else:
                self._push(start | half, level)

    def _merge(self, addr: int, length: int) -> None:
        """Return a block to the free lists, coalescing with free buddies upwards."""
        bits = self._bits
        free = self._free
        while length > self._plen:
            half = 1 << (bits - length)
            live = free[length]
            buddy = addr ^ half
            if buddy not in live:
                break
            live.remove(buddy)  # its heap entry goes stale
            addr &= ~half
            length -= 1
        self._push(addr, length)
