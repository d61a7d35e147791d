"""Longest-prefix match from an IPv6 (or IPv4) address to a value, e.g. the tunnel to use.

Theory of operation
-------------------
The table keeps one dict per prefix length in use, keyed by the prefix's network bits as an int
(``address >> (bits - length)``). A lookup probes those dicts from the longest length to the
shortest and stops at the first hit. So its cost is a few shifts and dict probes per distinct
length in use (a tunnel server has a handful: /128 client addresses, /64, /56 and /48
delegations), and does not grow with the number of entries.

``add`` and ``remove`` keep the probe order, a tuple of ``(shift, dict)`` pairs, up to date; a
length whose dict empties is dropped, so it costs nothing on later lookups.

Whenever the set of lengths changes (rarely: not when a prefix of a length already in use is
added or removed), ``lookup`` and ``lookup_int`` are regenerated as straight-line code
with one ``get`` per length and the shifts as constants, the way :mod:`dataclasses` generates
``__init__``. That is about 30% faster than looping over the probe tuple (see
``bench/bench_dataplane_core.py``). The generated source is built from ints only. Both are
replaced by one assignment each, so a lookup never sees a half-built table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Generic, TypeVar, cast

__all__ = ["PrefixTable"]

V = TypeVar("V")


def _compile(
    probe: Sequence[tuple[int, Mapping[int, object]]], nbytes: int
) -> tuple[Callable[[int], Any], Callable[[bytes], Any]]:
    """Straight-line ``lookup_int(a)`` and ``lookup(addr)`` for the lengths in ``probe``."""
    namespace: dict[str, object] = {"from_bytes": int.from_bytes}
    body = []
    for i, (shift, entries) in enumerate(probe):
        namespace[f"get{i}"] = entries.get
        key = "a" if shift == 0 else f"a >> {int(shift)}"
        if i == len(probe) - 1:
            body.append(f"    return get{i}({key})")
        else:
            body += [f"    v = get{i}({key})", "    if v is not None:", "        return v"]
    if not probe:
        body.append("    return None")
    nbytes = int(nbytes)
    source = "\n".join(
        [
            "def lookup_int(a):",
            *body,
            "",
            "def lookup(addr):",
            f"    if len(addr) != {nbytes}:",
            f"        raise ValueError(f'address of {{len(addr)}} bytes, expected {nbytes}')",
            "    a = from_bytes(addr, 'big')",
            *body,
        ]
    )
    exec(compile(source, f"<PrefixTable lookup, {len(probe)} lengths>", "exec"), namespace)
    return (
        cast(Callable[[int], Any], namespace["lookup_int"]),
        cast(Callable[[bytes], Any], namespace["lookup"]),
    )


class PrefixTable(Generic[V]):
    """Longest-prefix match over ``bits``-bit addresses (128 for IPv6, 32 for IPv4).

    Values must not be None: :attr:`lookup` returns None for "no match".
    """

    __slots__ = (
        "_bits",
        "_nbytes",
        "_version",
        "_by_length",
        "_probe",
        "_count",
        "lookup",
        "lookup_int",
    )

    lookup: Callable[[bytes], V | None]
    """``lookup(addr)``: the value of the longest prefix holding ``addr`` (raw 16 or 4 bytes),
    or None. Raises ValueError when ``addr`` is not ``bits // 8`` bytes long."""

    lookup_int: Callable[[int], V | None]
    """``lookup_int(addr)``: as :attr:`lookup`, for an address already converted to an int
    (``0 <= addr < 2**bits``; not checked: an int out of range matches nothing or a wrong
    prefix)."""

    def __init__(self, bits: int = 128) -> None:
        if bits not in (128, 32):
            raise ValueError(f"bits must be 128 (IPv6) or 32 (IPv4), not {bits}")
        self._bits = bits
        self._nbytes = bits // 8
        self._version = 6 if bits == 128 else 4
        #: prefix length -> {network bits: value}
        self._by_length: dict[int, dict[int, V]] = {}
        #: ``(bits - length, dict)`` for every length in use, longest prefix first.
        self._probe: tuple[tuple[int, dict[int, V]], ...] = ()
        self._count = 0
        self.lookup_int, self.lookup = _compile(self._probe, self._nbytes)

    @property
    def bits(self) -> int:
        """The address size: 128 or 32."""
        return self._bits

    def _key(self, net: IPv4Network | IPv6Network) -> tuple[int, int]:
        if net.version != self._version:
            raise ValueError(f"{net} is not an IPv{self._version} network")
        length = net.prefixlen
        return length, int(net.network_address) >> (self._bits - length)

    def _reprobe(self) -> None:
        bits = self._bits
        by_length = self._by_length
        self._probe = tuple((bits - n, by_length[n]) for n in sorted(by_length, reverse=True))
        self.lookup_int, self.lookup = _compile(self._probe, self._nbytes)

    def add(self, net: IPv4Network | IPv6Network, value: V) -> None:
        """Map ``net`` to ``value``, replacing any value ``net`` had.

        Raises:
            ValueError: ``net`` is of the other IP version, or ``value`` is None.
        """
        if value is None:
            raise ValueError("a PrefixTable value cannot be None")
        length, key = self._key(net)
        entries = self._by_length.get(length)
        if entries is None:
            entries = self._by_length[length] = {}
            self._reprobe()
        if key not in entries:
            self._count += 1
        entries[key] = value

    def remove(self, net: IPv4Network | IPv6Network) -> V | None:
        """Remove ``net`` (exactly that prefix) and return its value; None if it was absent.

        Raises:
            ValueError: ``net`` is of the other IP version.
        """
        length, key = self._key(net)
        entries = self._by_length.get(length)
        if entries is None:
            return None
        value = entries.pop(key, None)
        if value is not None:
            self._count -= 1
            if not entries:
                del self._by_length[length]
                self._reprobe()
        return value

    def get(self, net: IPv4Network | IPv6Network) -> V | None:
        """The value of exactly ``net`` (no longest-prefix match), or None.

        Raises:
            ValueError: ``net`` is of the other IP version.
        """
        length, key = self._key(net)
        entries = self._by_length.get(length)
        return None if entries is None else entries.get(key)

    def lookup_prefix(self, addr: bytes) -> tuple[IPv4Network | IPv6Network, V] | None:
        """The longest prefix holding ``addr`` and its value, or None (slower, for logs).

        Raises:
            ValueError: ``addr`` is not ``bits // 8`` bytes long.
        """
        if len(addr) != self._nbytes:
            raise ValueError(f"address of {len(addr)} bytes, expected {self._nbytes}")
        a = int.from_bytes(addr, "big")
        for shift, entries in self._probe:
            value = entries.get(a >> shift)
            if value is not None:
                return self._network(a >> shift << shift, self._bits - shift), value
        return None

    def _network(self, address: int, length: int) -> IPv4Network | IPv6Network:
        if self._version == 6:
            return IPv6Network((address, length))
        return IPv4Network((address, length))

    def __len__(self) -> int:
        return self._count

    def __contains__(self, net: object) -> bool:
        """Whether exactly the prefix ``net`` is in the table (no longest-prefix match)."""
        if not isinstance(net, IPv4Network | IPv6Network) or net.version != self._version:
            return False
        return self.get(net) is not None

    def items(self) -> list[tuple[IPv4Network | IPv6Network, V]]:
        """Every ``(prefix, value)``, longest prefixes first."""
        bits = self._bits
        return [
            (self._network(key << shift, bits - shift), value)
            for shift, entries in self._probe
            for key, value in entries.items()
        ]

    def __iter__(self) -> Iterator[IPv4Network | IPv6Network]:
        return iter([net for net, _ in self.items()])

    def __repr__(self) -> str:
        lengths = [self._bits - shift for shift, _ in self._probe]
        return f"<PrefixTable IPv{self._version} {self._count} prefixes, lengths {lengths}>"
