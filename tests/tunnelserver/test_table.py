"""PrefixTable: longest-prefix match against a brute-force model, add/replace/remove."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from tunnelbroker.tunnelserver.table import PrefixTable

Net = IPv4Network | IPv6Network
T = TypeVar("T")


def brute_force(model: Mapping[Net, T], addr: int, version: int) -> T | None:
    """Longest-prefix match by scanning every prefix."""
    best: tuple[int, T] | None = None
    for net, value in model.items():
        if net.version != version:
            continue
        bits = net.max_prefixlen
        shift = bits - net.prefixlen
        if addr >> shift == int(net.network_address) >> shift:
            if best is None or net.prefixlen > best[0]:
                best = (net.prefixlen, value)
    return None if best is None else best[1]


def network(bits: int, address: int, length: int) -> Net:
    mask = ((1 << length) - 1) << (bits - length) if length else 0
    if bits == 128:
        return IPv6Network((address & mask, length))
    return IPv4Network((address & mask, length))


# Prefixes packed in a small region, so that they nest and overlap often.
def prefixes(bits: int, lengths: st.SearchStrategy[int]) -> st.SearchStrategy[Net]:
    base = 0x20010DB8 << 96 if bits == 128 else 0xC6120000
    return st.builds(
        lambda high, low, length: network(bits, base | high << (bits - 16) >> 16 | low, length),
        st.integers(0, 3),
        st.integers(0, (1 << (bits - 16)) - 1),
        lengths,
    )


def probes(bits: int, nets: list[Net], extra: list[int]) -> list[int]:
    """Addresses inside each prefix (first, last, one beyond), plus arbitrary ones."""
    out = list(extra)
    top = (1 << bits) - 1
    for net in nets:
        first = int(net.network_address)
        last = int(net.broadcast_address)
        out += [first, last, min(last + 1, top), max(first - 1, 0), (first + last) // 2]
    return out


MIXED_V6 = st.sampled_from([0, 16, 32, 40, 48, 56, 60, 64, 96, 127, 128])


@pytest.mark.parametrize(
    ("bits", "lengths"),
    [(128, MIXED_V6), (128, st.integers(0, 128)), (32, st.integers(0, 32))],
)
def test_lookup_matches_brute_force(bits: int, lengths: st.SearchStrategy[int]) -> None:
    @settings(max_examples=200)
    @given(
        st.lists(st.tuples(prefixes(bits, lengths), st.text(min_size=1, max_size=3))),
        st.lists(st.integers(0, (1 << bits) - 1), max_size=10),
        st.data(),
    )
    def check(entries: list[tuple[Net, str]], extra: list[int], data: st.DataObject) -> None:
        table: PrefixTable[str] = PrefixTable(bits)
        model: dict[Net, str] = {}
        for net, value in entries:
            table.add(net, value)
            model[net] = value
        version = 6 if bits == 128 else 4
        addresses = probes(bits, list(model), extra)
        for addr in addresses:
            expected = brute_force(model, addr, version)
            assert table.lookup_int(addr) == expected
            assert table.lookup(addr.to_bytes(bits // 8, "big")) == expected
        # Remove some, and check again; emptied lengths are no longer probed.
        doomed = data.draw(st.lists(st.sampled_from(list(model)), unique=True)) if model else []
        for net in doomed:
            assert table.remove(net) == model.pop(net)
            assert table.remove(net) is None
        for addr in addresses:
            assert table.lookup_int(addr) == brute_force(model, addr, version)
        assert len(table) == len(model)
        assert dict(table.items()) == model
        assert set(table) == set(model)
        assert {bits - shift for shift, _ in table._probe} == {n.prefixlen for n in model}

    check()


def test_longest_prefix_wins_and_replace() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.add(IPv6Network("2001:db8::/32"), "pool")
    t.add(IPv6Network("2001:db8:1::/48"), "site")
    t.add(IPv6Network("2001:db8:1:2::/64"), "link")
    t.add(IPv6Network("2001:db8:1:2::1/128"), "host")

    def look(a: str) -> str | None:
        return t.lookup(IPv6Address(a).packed)

    assert look("2001:db8:1:2::1") == "host"
    assert look("2001:db8:1:2::2") == "link"
    assert look("2001:db8:1:3::1") == "site"
    assert look("2001:db8:2::1") == "pool"
    assert look("2001:db9::1") is None
    t.add(IPv6Network("2001:db8:1::/48"), "site2")
    assert look("2001:db8:1:3::1") == "site2"
    assert len(t) == 4
    assert t.get(IPv6Network("2001:db8:1::/48")) == "site2"
    assert t.get(IPv6Network("2001:db8:1::/56")) is None
    assert t.get(IPv6Network("2001:db8:1::/48")) == "site2"
    assert t.lookup_prefix(IPv6Address("2001:db8:1:3::1").packed) == (
        IPv6Network("2001:db8:1::/48"),
        "site2",
    )
    assert t.lookup_prefix(IPv6Address("2001:db9::1").packed) is None
    assert [n.prefixlen for n, _ in t.items()] == [128, 64, 48, 32]
    assert "4 prefixes" in repr(t) and "[128, 64, 48, 32]" in repr(t)


def test_default_route_and_remove() -> None:
    t: PrefixTable[int] = PrefixTable(32)
    t.add(IPv4Network("0.0.0.0/0"), 0)
    t.add(IPv4Network("192.0.2.0/24"), 24)
    assert t.lookup(IPv4Address("192.0.2.9").packed) == 24
    assert t.lookup(IPv4Address("10.0.0.1").packed) == 0
    assert t.remove(IPv4Network("192.0.2.0/24")) == 24
    assert t.lookup(IPv4Address("192.0.2.9").packed) == 0
    assert t.remove(IPv4Network("192.0.2.0/24")) is None
    assert t.remove(IPv4Network("192.0.2.0/25")) is None
    assert t.remove(IPv4Network("0.0.0.0/0")) == 0
    assert len(t) == 0 and t._probe == () and t.lookup_int(0) is None


def test_remove_keeps_other_entries_of_the_same_length() -> None:
    t: PrefixTable[str] = PrefixTable()
    a, b = IPv6Network("2001:db8:a::/48"), IPv6Network("2001:db8:b::/48")
    t.add(a, "a")
    t.add(b, "b")
    assert t.remove(a) == "a"
    assert a not in t and b in t
    assert t.lookup(IPv6Address("2001:db8:b::1").packed) == "b"
    assert t.lookup(IPv6Address("2001:db8:a::1").packed) is None


def test_contains_and_errors() -> None:
    t: PrefixTable[str] = PrefixTable()
    net = IPv6Network("2001:db8::/64")
    t.add(net, "x")
    assert net in t
    assert IPv6Network("2001:db8::/63") not in t
    assert IPv4Network("192.0.2.0/24") not in t
    assert "2001:db8::/64" not in t
    with pytest.raises(ValueError):
        t.add(IPv4Network("192.0.2.0/24"), "v4")
    with pytest.raises(ValueError):
        t.remove(IPv4Network("192.0.2.0/24"))
    with pytest.raises(ValueError):
        t.add(IPv6Network("2001:db8:1::/64"), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.lookup(b"\0" * 4)
    with pytest.raises(ValueError):
        t.lookup_prefix(b"\0" * 4)
    with pytest.raises(ValueError):
        PrefixTable(64)
    empty: PrefixTable[str] = PrefixTable()
    assert empty.lookup(bytes(16)) is None and empty.lookup_int(0) is None
    with pytest.raises(ValueError, match="address of 4 bytes, expected 16"):
        empty.lookup(bytes(4))
    assert PrefixTable(32).bits == 32


class TableMachine(RuleBasedStateMachine):
    """Random add / replace / remove / lookup sequences against a dict model."""

    nets = Bundle("nets")

    def __init__(self) -> None:
        super().__init__()
        self.table: PrefixTable[int] = PrefixTable()
        self.model: dict[Net, int] = {}

    @rule(target=nets, net=prefixes(128, MIXED_V6), value=st.integers())
    def add(self, net: Net, value: int) -> Net:
        self.table.add(net, value)
        self.model[net] = value
        return net

    @rule(net=consumes(nets))
    def remove(self, net: Net) -> None:
        assert self.table.remove(net) == self.model.pop(net, None)

    @rule(net=nets, addr_low=st.integers(0, (1 << 64) - 1))
    def lookup_inside(self, net: Net, addr_low: int) -> None:
        addr = int(net.network_address) | (addr_low & int(net.hostmask))
        assert self.table.lookup_int(addr) == brute_force(self.model, addr, 6)

    @invariant()
    def same_size(self) -> None:
        assert len(self.table) == len(self.model)
        lengths = [128 - shift for shift, _ in self.table._probe]
        assert lengths == sorted({n.prefixlen for n in self.model}, reverse=True)


TestTableMachine = TableMachine.TestCase


def test_ip_network_strings() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.add(ip_network("::/0"), "default")
    assert t.lookup(bytes(16)) == "default"
