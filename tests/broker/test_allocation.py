"""Tests for the buddy prefix allocator."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tunnelbroker.broker.allocation import (
    AlreadyAllocated,
    NotAllocated,
    NotInPool,
    PoolExhausted,
    PrefixPool,
)

V6 = IPv6Network


def test_allocates_lowest_first_and_aligned() -> None:
    pool = PrefixPool(V6("2001:db8::/56"), 56, 64)
    assert pool.allocate(64) == V6("2001:db8::/64")
    assert pool.allocate(64) == V6("2001:db8:0:1::/64")
    # The next /62 cannot use the half-full first /62.
    assert pool.allocate(62) == V6("2001:db8:0:4::/62")
    assert pool.allocate(64) == V6("2001:db8:0:2::/64")
    assert pool.allocated == 4


def test_lowest_address_wins_over_smallest_block() -> None:
    pool = PrefixPool(V6("2001:db8::/56"), 56, 64)
    first = pool.allocate(57)  # 2001:db8::/57
    pool.allocate(64)  # 2001:db8:0:80::/64, leaves a /64 fragment next to it
    pool.release(first)
    # The free /57 at the bottom has a lower address than the free /64 at :81.
    assert pool.allocate(64) == V6("2001:db8::/64")


def test_release_merges_buddies_back() -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    blocks = [pool.allocate(64) for _ in range(5)] + [pool.allocate(56)]
    for block in reversed(blocks):
        pool.release(block)
    assert pool.free_blocks() == [V6("2001:db8::/48")]
    assert pool.allocated == 0
    assert pool.utilisation() == 0.0


def test_exhaustion_and_length_bounds() -> None:
    pool = PrefixPool(IPv4Network("192.0.2.0/28"), 29, 30)
    got = [pool.allocate(30) for _ in range(4)]
    assert got == [IPv4Network(f"192.0.2.{i}/30") for i in (0, 4, 8, 12)]
    with pytest.raises(PoolExhausted):
        pool.allocate(30)
    assert pool.utilisation() == 1.0
    with pytest.raises(ValueError):
        pool.allocate(28)  # shorter than min_length
    with pytest.raises(ValueError):
        pool.allocate(31)
    with pytest.raises(ValueError):
        pool.free_count(31)


def test_exhaustion_of_large_blocks_while_small_remain() -> None:
    pool = PrefixPool(V6("2001:db8::/63"), 63, 64)
    pool.allocate(64)
    with pytest.raises(PoolExhausted):
        pool.allocate(63)
    assert pool.free_count(64) == 1
    assert pool.free_count(63) == 0


@pytest.mark.parametrize(
    ("pool", "lo", "hi"),
    [(V6("2001:db8::/32"), 33, 32), (V6("2001:db8::/32"), 31, 64), (V6("::/0"), 0, 129)],
)
def test_bad_bounds(pool: IPv6Network, lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        PrefixPool(pool, lo, hi)


def test_reserved_blocks_are_carved_out() -> None:
    # The server keeps the first /64 and the subnet-router anycast address of the second.
    reserved = [V6("2001:db8::/64"), V6("2001:db8:0:1::/128")]
    pool = PrefixPool(V6("2001:db8::/56"), 56, 64, reserved=reserved)
    assert pool.reserved == reserved
    assert pool.allocated == 0
    assert pool.free_count(64) == 256 - 2
    assert pool.allocate(64) == V6("2001:db8:0:2::/64")
    with pytest.raises(NotAllocated):
        pool.release(V6("2001:db8::/64"))
    assert not pool.is_allocated(V6("2001:db8::/64"))
    with pytest.raises(AlreadyAllocated):
        pool.reserve(V6("2001:db8::/63"))
    # The /128 leaves 127 fragments of /65../128 behind: one per level, never one per address.
    assert len(pool.free_blocks()) < 200


def test_reserved_must_fit() -> None:
    with pytest.raises(NotInPool):
        PrefixPool(V6("2001:db8::/56"), 56, 64, reserved=[V6("2001:db9::/64")])
    with pytest.raises(AlreadyAllocated):
        PrefixPool(V6("2001:db8::/56"), 56, 64, reserved=[V6("2001:db8::/60")] * 2)


def test_reserve_rebuilds_state() -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    pool.reserve(V6("2001:db8:0:ff00::/56"))
    pool.reserve(V6("2001:db8:0:5::/64"))
    assert pool.is_allocated(V6("2001:db8:0:5::/64"))
    assert not pool.is_allocated(V6("2001:db8:0:4::/63"))
    assert pool.allocated == 2
    assert pool.allocate(64) == V6("2001:db8::/64")
    assert pool.allocate(63) == V6("2001:db8:0:2::/63")
    assert pool.allocate(64) == V6("2001:db8:0:1::/64")
    assert pool.allocate(64) == V6("2001:db8:0:4::/64")
    assert pool.allocate(64) == V6("2001:db8:0:6::/64")


@pytest.mark.parametrize(
    "net",
    [
        "2001:db8:0:5::/64",  # the same block
        "2001:db8:0:4::/63",  # a block containing it
        "2001:db8:0:5::/80",  # a block inside it
        "2001:db8::/48",  # the whole pool
    ],
)
def test_reserve_overlap_rejected(net: str) -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    pool.reserve(V6("2001:db8:0:5::/64"))
    before = pool.free_blocks()
    with pytest.raises(AlreadyAllocated):
        pool.reserve(V6(net))
    assert pool.free_blocks() == before  # a failed reserve changes nothing


@pytest.mark.parametrize(
    "net",
    ["2001:db9::/64", "2001:db8::/47", "::/0", "192.0.2.0/30"],
)
def test_outside_pool(net: str) -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    block = ip_network(net)
    assert block not in pool
    assert not pool.is_allocated(block)
    with pytest.raises(NotInPool):
        pool.reserve(block)
    with pytest.raises(NotInPool):
        pool.release(block)


def test_contains() -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    assert V6("2001:db8::/48") in pool
    assert V6("2001:db8:0:ffff::1/128") in pool
    assert "2001:db8::/64" not in pool
    assert None not in pool


def test_release_errors() -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    block = pool.allocate(56)
    with pytest.raises(NotAllocated):
        pool.release(V6("2001:db8::/64"))  # inside an allocation, not one itself
    with pytest.raises(NotAllocated):
        pool.release(V6("2001:db8::/55"))
    pool.release(block)
    with pytest.raises(NotAllocated):
        pool.release(block)  # double free


def test_huge_pools_are_never_enumerated() -> None:
    pool = PrefixPool(V6("::/0"), 0, 128)
    assert pool.allocate(128) == V6("::/128")
    assert pool.allocate(1) == V6("8000::/1")
    assert pool.free_count(128) == 2**127 - 1
    assert len(pool.free_blocks()) == 127
    assert pool.utilisation() == pytest.approx(0.5)


def test_v4_pool() -> None:
    pool = PrefixPool(IPv4Network("100.64.0.0/10"), 30, 30, reserved=[IPv4Network("100.64.0.0/30")])
    assert pool.allocate(30) == IPv4Network("100.64.0.4/30")
    assert pool.free_count(30) == 2**20 - 2
    assert pool.utilisation() == pytest.approx(2 / 2**20)


def test_free_blocks_are_canonical() -> None:
    # Whatever order blocks are taken and released in, equal states have equal free lists.
    a = PrefixPool(V6("2001:db8::/56"), 56, 64)
    b = PrefixPool(V6("2001:db8::/56"), 56, 64)
    blocks = [a.allocate(64) for _ in range(7)]
    for block in blocks[::2]:
        a.release(block)
    for block in reversed(blocks[1::2]):
        b.reserve(block)
    assert a.free_blocks() == b.free_blocks()


def test_heaps_stay_bounded_under_churn() -> None:
    pool = PrefixPool(V6("2001:db8::/40"), 40, 64)
    for _ in range(5_000):
        pool.release(pool.allocate(64))
    assert max(len(h) for h in pool._heap) < 100


# -- model-based testing ----------------------------------------------------------------------

Net = IPv4Network | IPv6Network


class PoolMachine(RuleBasedStateMachine):
    """Random allocate/release/reserve sequences against a brute-force model.

    The model is the list of taken blocks. The pool is small enough to enumerate every aligned
    block down to ``UNIT`` bits, which the real allocator never does.
    """

    POOL: Net = V6("2001:db8::/56")
    MIN, MAX = 57, 64
    UNIT = 66  # finest length the reserve rule draws
    RESERVED: tuple[Net, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.pool = PrefixPool(self.POOL, self.MIN, self.MAX, reserved=self.RESERVED)
        self.taken: list[Net] = []

    def _block(self, offset: int, length: int) -> Net:
        """The aligned block of ``length`` holding the ``offset``-th ``MAX``-sized slot."""
        bits = self.POOL.max_prefixlen
        addr = int(self.POOL.network_address) + (offset << (bits - self.MAX))
        return ip_network((addr >> (bits - length) << (bits - length), length))

    def _fully_free(self) -> dict[int, list[bool]]:
        """Per length, whether each aligned block of the pool is entirely free in the model."""
        bits, plen = self.POOL.max_prefixlen, self.POOL.prefixlen
        base = int(self.POOL.network_address)
        units = [True] * (1 << (self.UNIT - plen))
        for net in (*self.taken, *self.RESERVED):
            start = (int(net.network_address) - base) >> (bits - self.UNIT)
            count = max(1, net.num_addresses >> (bits - self.UNIT))
            units[start : start + count] = [False] * count
        tree = {self.UNIT: units}
        for length in range(self.UNIT - 1, plen - 1, -1):
            child = tree[length + 1]
            tree[length] = [child[i] and child[i + 1] for i in range(0, len(child), 2)]
        return tree

    @initialize()
    def check_fresh(self) -> None:
        assert self.pool.allocated == 0

    @rule(data=st.data())
    def allocate(self, data: st.DataObject) -> None:
        length = data.draw(st.integers(self.MIN, self.MAX), label="length")
        free = self._fully_free()[length]
        if not any(free):
            with pytest.raises(PoolExhausted):
                self.pool.allocate(length)
            return
        block = self.pool.allocate(length)
        size = 1 << (self.POOL.max_prefixlen - length)
        index = (int(block.network_address) - int(self.POOL.network_address)) // size
        assert index == free.index(True)  # the lowest free address
        self.taken.append(block)

    @precondition(lambda self: self.taken)
    @rule(i=st.integers(0, 1_000))
    def release(self, i: int) -> None:
        block = self.taken.pop(i % len(self.taken))
        self.pool.release(block)
        assert not self.pool.is_allocated(block)

    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        # Any length inside the pool is accepted by reserve(), even outside MIN..MAX.
        offset = data.draw(st.integers(0, (1 << (self.MAX - self.POOL.prefixlen)) - 1))
        length = data.draw(st.integers(self.POOL.prefixlen, self.UNIT), label="length")
        block = self._block(offset, length)
        if any(block.overlaps(t) for t in (*self.taken, *self.RESERVED)):
            before = self.pool.free_blocks()
            with pytest.raises(AlreadyAllocated):
                self.pool.reserve(block)
            assert self.pool.free_blocks() == before
        else:
            self.pool.reserve(block)
            self.taken.append(block)

    @rule(data=st.data())
    def release_unallocated(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(0, (1 << (self.MAX - self.POOL.prefixlen)) - 1))
        block = self._block(offset, data.draw(st.integers(self.MIN, self.MAX)))
        if block not in self.taken:
            assert not self.pool.is_allocated(block)
            with pytest.raises(NotAllocated):
                self.pool.release(block)

    @invariant()
    def taken_blocks_allocated(self) -> None:
        assert self.pool.allocated == len(self.taken)
        for block in self.taken:
            assert block in self.pool
            assert self.pool.is_allocated(block)

    @invariant()
    def free_counts_exact(self) -> None:
        tree = self._fully_free()
        for length in range(self.MIN, self.MAX + 1):
            assert self.pool.free_count(length) == sum(tree[length])
        slots = len(tree[self.MAX])
        assert self.pool.utilisation() == pytest.approx(1 - sum(tree[self.MAX]) / slots)

    @invariant()
    def space_partitioned(self) -> None:
        """Free, allocated and reserved blocks are aligned, disjoint and cover the pool."""
        free = self.pool.free_blocks()
        spans = sorted(
            (int(b.network_address), b.num_addresses) for b in (*free, *self.taken, *self.RESERVED)
        )
        cursor = int(self.POOL.network_address)
        for start, size in spans:
            assert start == cursor  # no gap, no overlap
            assert start % size == 0  # aligned
            cursor += size
        assert cursor == int(self.POOL.broadcast_address) + 1
        # Maximal: a free block's buddy is never free too.
        keys = {(int(b.network_address), b.prefixlen) for b in free}
        for start, length in keys:
            if length > self.POOL.prefixlen:
                buddy = start ^ (1 << (self.POOL.max_prefixlen - length))
                assert (buddy, length) not in keys

    def teardown(self) -> None:
        for block in self.taken:
            self.pool.release(block)
        fresh = PrefixPool(self.POOL, self.MIN, self.MAX, reserved=self.RESERVED)
        assert self.pool.free_blocks() == fresh.free_blocks()
        if not self.RESERVED:
            assert self.pool.free_blocks() == [self.POOL]
        assert self.pool.allocated == 0


class PoolWithReservedMachine(PoolMachine):
    # The server's /64 and a subnet-router anycast address, as in the daemon's config.
    RESERVED = (V6("2001:db8::/64"), V6("2001:db8:0:80::/128"))


class V4PoolMachine(PoolMachine):
    # /30s for v4v6 tunnels, with up to /25 for the bigger links.
    POOL = IPv4Network("192.0.2.0/24")
    MIN, MAX = 25, 30
    UNIT = 32


_settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestPool = PoolMachine.TestCase
TestPool.settings = _settings
TestPoolWithReserved = PoolWithReservedMachine.TestCase
TestPoolWithReserved.settings = _settings
TestV4Pool = V4PoolMachine.TestCase
TestV4Pool.settings = _settings


@given(st.lists(st.integers(0, 2**16 - 1), unique=True, max_size=200))
def test_reserve_then_release_all_restores_pool(offsets: list[int]) -> None:
    pool = PrefixPool(V6("2001:db8::/48"), 48, 64)
    blocks = [V6((0x20010DB8 << 96 | o << 64, 64)) for o in offsets]
    for block in blocks:
        pool.reserve(block)
    assert pool.free_count(64) == 2**16 - len(blocks)
    for block in reversed(blocks):
        pool.release(block)
    assert pool.free_blocks() == [V6("2001:db8::/48")]
