"""The tunnel server's forwarding core, sans-IO.

Theory of operation
-------------------
All tunnels share one TUN device. Packets from the TUN (the kernel routed them towards a
tunnel's addresses) are looked up in a longest-prefix-match table keyed by destination and go out
encapsulated to that tunnel's endpoint. Packets from the network arrive already decapsulated
together with their outer source; the tunnel is found by that outer source (protocol 41 and 4in6:
the remote address; v6udpv4: address and port), and the packet is checked before it reaches the
TUN:

* the outer source must be a known tunnel endpoint (RFC 4891 §3);
* the inner source must be the tunnel's own address or inside one of its prefixes
  (RFC 2827/3704 ingress filtering), so no client can spoof another's addresses;
* an ICMPv6 Echo Request to the tunnel's server address (the keepalive address) is answered here,
  through the same tunnel, which is what TSP keepalives need (RFC 5572 §5.2);
* a packet larger than the tunnel's MTU, on its way into a tunnel, gets an ICMPv6 Packet Too Big
  (RFC 4443 §3.2) back through the TUN instead of being sent.

Every drop is counted by reason. The per-packet cost does not depend on the number of tunnels:
dictionary look-ups by endpoint, and a prefix table probed once per prefix length in use.

Output is a list of ``(Out, payload, destination)`` tuples, built without allocating objects per
packet beyond the tuple.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from tunnelbroker.broker.limits import TokenBucket
from tunnelbroker.protocols.ayiya import AyiyaDrop, AyiyaLink, OpCode, decode
from tunnelbroker.protocols.ayiya.messages import NEXT_HEADER_IPV6
from tunnelbroker.tunnelserver import packet
from tunnelbroker.tunnelserver.table import PrefixTable


class Out(IntEnum):
    """Where an output packet goes."""

    #: Into the TUN device (to the kernel, towards the IPv6 or IPv4 internet).
    TUN = 0
    #: IPv6 in IPv4, protocol 41, to a 4-byte IPv4 address.
    PROTO41 = 1
    #: IPv6 in UDP to ``(ipv4 text, port)``, from the TSP port.
    UDP = 2
    #: IPv4 in IPv6, next header 4, to a 16-byte IPv6 address.
    IP4IN6 = 3
    #: A signed AYIYA datagram in UDP to ``(ipv4 text, port)``, from the AYIYA port.
    AYIYA = 4


class Drop(Enum):
    """Why a packet was not forwarded."""

    MALFORMED = "malformed packet"
    NO_ROUTE = "no tunnel for the destination"
    UNKNOWN_ENDPOINT = "outer source is not a tunnel endpoint"
    SPOOFED_SOURCE = "inner source not the tunnel's address or prefix"
    LINK_LOCAL = "link-local or multicast, not forwarded"
    TO_SERVER = "addressed to the server's tunnel address, not an echo request"
    TOO_BIG = "larger than the tunnel MTU (Packet Too Big sent)"
    WRONG_FAMILY = "wrong address family for the tunnel"
    NO_ENDPOINT = "the AYIYA client is not heard from (Destination Unreachable sent)"
    BAD_AYIYA = "an AYIYA datagram that failed its checks (counted by reason apart)"
    #: Only with the C fast path: its queue to the Python slow path was full.
    OVERLOAD = "the slow path's queue was full (C fast path)"


class Encap(Enum):
    V6V4 = "v6v4"
    V6UDPV4 = "v6udpv4"
    V4V6 = "v4v6"
    AYIYA = "ayiya"


@dataclass(eq=False, slots=True)
class TunnelState:
    """One tunnel as the data plane sees it."""

    tunnel_id: int
    encap: Encap
    #: The client's outer endpoint: IPv4 text for v6v4/v6udpv4, IPv6 text for v4v6.
    remote: str
    #: The client's UDP port (v6udpv4 only).
    port: int | None
    #: Inner networks the client may source from and receive for: its address and prefixes.
    prefixes: list[ipaddress.IPv6Network | ipaddress.IPv4Network]
    #: The server's inner address on the link: the keepalive address, and the source of errors.
    server_inner: str
    mtu: int = 1280
    keepalive_interval: int = 30
    expires_at: float = float("inf")
    last_seen: float = 0.0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: AYIYA only: signs and checks this tunnel's datagrams (its secret and replay window).
    ayiya: AyiyaLink | None = field(default=None, repr=False)
    # Derived, for the hot path.
    _remote_key: bytes | tuple[str, int] = field(default=b"", repr=False)
    _server_inner: bytes = field(default=b"", repr=False)
    _allowed: PrefixTable[bool] | None = field(default=None, repr=False)

    def _derive(self) -> None:
        if self.encap is Encap.V6UDPV4 or self.encap is Encap.AYIYA:
            # An AYIYA client's endpoint may not be known yet ("", None).
            assert self.port is not None or self.encap is Encap.AYIYA
            self._remote_key = (self.remote, self.port or 0)
        else:
            self._remote_key = ipaddress.ip_address(self.remote).packed
        self._server_inner = ipaddress.ip_address(self.server_inner).packed
        bits = 32 if self.encap is Encap.V4V6 else 128
        allowed: PrefixTable[bool] = PrefixTable(bits)
        for p in self.prefixes:
            allowed.add(p, True)
        self._allowed = allowed


#: Output tuple: (where, packet, destination). Destination: None for TUN, bytes for
#: PROTO41/IP4IN6 (the outer address), (host, port) for UDP.
Output = tuple[Out, bytes, object]


@dataclass(frozen=True, slots=True)
class Expired:
    tunnel_id: int
    reason: str


class ForwardingCore:
    """The forwarding state and decisions of one tunnel server. Not thread-safe."""

    def __init__(
        self,
        idle_factor: float = 3.0,
        idle_grace: float = 10.0,
        icmp_rate: float = 1000.0,
        icmp_burst: float = 50.0,
    ) -> None:
        """``idle_factor`` keepalive intervals plus ``idle_grace`` seconds of silence end a
        tunnel (gogoc gives up after three lost keepalives). ICMP errors the data plane makes
        are limited to ``icmp_rate`` a second with bursts of ``icmp_burst`` (RFC 4443
        §2.4(f); Linux's global default is the same)."""
        self.idle_factor = idle_factor
        self.idle_grace = idle_grace
        self._tunnels: dict[int, TunnelState] = {}
        self._routes6: PrefixTable[TunnelState] = PrefixTable(128)
        self._routes4: PrefixTable[TunnelState] = PrefixTable(32)
        self._by_v4: dict[bytes, TunnelState] = {}
        self._by_udp: dict[tuple[str, int], TunnelState] = {}
        self._by_v6: dict[bytes, TunnelState] = {}
        self._server_addrs: dict[bytes, TunnelState] = {}
        #: AYIYA tunnels by the client's identity (its tunnel address, 16 bytes).
        self._by_identity: dict[bytes, TunnelState] = {}
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        #: Why AYIYA datagrams were dropped (each also counts as :attr:`Drop.BAD_AYIYA`).
        self.ayiya_drops: dict[AyiyaDrop, int] = dict.fromkeys(AyiyaDrop, 0)
        #: AYIYA endpoints learnt since last taken: (tunnel id, address, port). The control
        #: plane records them (the data plane already uses them).
        self.learned: list[tuple[int, str, int]] = []
        #: Epoch seconds minus ``now``: AYIYA signs and checks epoch times, the rest of the
        #: core runs on the monotonic clock. The I/O layer keeps it current.
        self.wall_offset = 0.0
        self._icmp = TokenBucket(icmp_rate, icmp_burst)
        #: ICMP errors due but not sent: over the rate limit.
        self.icmp_rate_limited = 0

    # ------------------------------------------------------------------ configuration

    def __len__(self) -> int:
        return len(self._tunnels)

    def get(self, tunnel_id: int) -> TunnelState | None:
        return self._tunnels.get(tunnel_id)

    def tunnels(self) -> Iterable[TunnelState]:
        return self._tunnels.values()

    def add(self, t: TunnelState, now: float) -> None:
        """Install (or replace) a tunnel."""
        old = self._tunnels.get(t.tunnel_id)
        if old is not None:
            # An AYIYA tunnel re-installed with the same secret (a new endpoint, a setting
            # changed) keeps its replay window: a fresh one would accept old datagrams again.
            if old.ayiya is not None and t.ayiya is not None and old.ayiya.key == t.ayiya.key:
                t.ayiya = old.ayiya
            self.remove(t.tunnel_id)
        t._derive()
        if not t.last_seen:
            t.last_seen = now
        self._tunnels[t.tunnel_id] = t
        table = self._routes4 if t.encap is Encap.V4V6 else self._routes6
        for p in t.prefixes:
            table.add(p, t)
        if t.encap is Encap.AYIYA:
            assert t.ayiya is not None, "an AYIYA tunnel needs its link"
            self._by_identity[t.ayiya.remote.packed] = t
        else:
            self._endpoint_index(t)[t._remote_key] = t
        self._server_addrs[t._server_inner] = t

    def remove(self, tunnel_id: int) -> TunnelState | None:
        t = self._tunnels.pop(tunnel_id, None)
        if t is None:
            return None
        table = self._routes4 if t.encap is Encap.V4V6 else self._routes6
        for p in t.prefixes:
            if table.get(p) is t:
                table.remove(p)
        if t.encap is Encap.AYIYA:
            assert t.ayiya is not None
            if self._by_identity.get(t.ayiya.remote.packed) is t:
                del self._by_identity[t.ayiya.remote.packed]
        else:
            index = self._endpoint_index(t)
            if index.get(t._remote_key) is t:
                del index[t._remote_key]
        if self._server_addrs.get(t._server_inner) is t:
            del self._server_addrs[t._server_inner]
        return t

    def update_endpoint(self, tunnel_id: int, remote: str, port: int | None, now: float) -> bool:
        """The client moved (new IPv4 address, new NAT mapping): re-key the tunnel."""
        t = self._tunnels.get(tunnel_id)
        if t is None:
            return False
        if t.encap is Encap.AYIYA:
            t.remote, t.port = remote, port
            t._remote_key = (remote, port or 0)
            return True
        index = self._endpoint_index(t)
        if index.get(t._remote_key) is t:
            del index[t._remote_key]
        t.remote, t.port = remote, port
        t._derive()
        index[t._remote_key] = t
        t.last_seen = now
        return True

    def _endpoint_index(self, t: TunnelState) -> dict[object, TunnelState]:
        if t.encap is Encap.V6UDPV4:
            return self._by_udp  # type: ignore[return-value]
        if t.encap is Encap.V4V6:
            return self._by_v6  # type: ignore[return-value]
        return self._by_v4  # type: ignore[return-value]

    # ------------------------------------------------------------------ from the network

    def from_proto41(self, pkt: bytes, outer_src: bytes, now: float) -> list[Output]:
        """An IPv6 packet decapsulated from protocol 41 sent by ``outer_src`` (4 bytes)."""
        t = self._by_v4.get(outer_src)
        if t is None:
            self.drops[Drop.UNKNOWN_ENDPOINT] += 1
            return []
        return self._from_client6(t, pkt, now)

    def from_udp(self, pkt: bytes, addr: tuple[str, int], now: float) -> list[Output]:
        """An IPv6 packet that arrived bare in UDP on the TSP port from ``addr``."""
        t = self._by_udp.get(addr)
        if t is None:
            self.drops[Drop.UNKNOWN_ENDPOINT] += 1
            return []
        return self._from_client6(t, pkt, now)

    def from_4in6(self, pkt: bytes, outer_src: bytes, now: float) -> list[Output]:
        """An IPv4 packet decapsulated from IPv6 next header 4 sent by ``outer_src``."""
        t = self._by_v6.get(outer_src)
        if t is None:
            self.drops[Drop.UNKNOWN_ENDPOINT] += 1
            return []
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            self.drops[Drop.MALFORMED] += 1
            return []
        src = pkt[12:16]
        assert t._allowed is not None
        if t._allowed.lookup(src) is None:
            self.drops[Drop.SPOOFED_SOURCE] += 1
            return []
        t.last_seen = now
        t.packets_in += 1
        t.bytes_in += len(pkt)
        if pkt[16:20] == t._server_inner:
            # The keepalive: an ICMPv4 echo to the server's end of the /30.
            reply = packet.echo_reply4(pkt)
            if reply is None:
                self.drops[Drop.TO_SERVER] += 1
                return []
            return self._to_client(t, reply, now)
        return [(Out.TUN, pkt, None)]

    def from_ayiya(self, datagram: bytes, addr: tuple[str, int], now: float) -> list[Output]:
        """An AYIYA datagram from ``addr`` to the AYIYA port.

        A valid one (the tunnel found by its identity, then clock, signature, replay) moves
        the tunnel to ``addr`` if it came from elsewhere and is newer than every datagram
        accepted before (sixxsd's endpoint learning, safe from replays), and
        proves it alive; a Forward carries an IPv6 packet, filtered like any other.
        """
        decoded = decode(datagram)
        if isinstance(decoded, AyiyaDrop):
            return self._ayiya_drop(decoded)
        t = self._by_identity.get(decoded.identity_packed)
        if t is None or t.ayiya is None:
            return self._ayiya_drop(AyiyaDrop.UNKNOWN_IDENTITY)
        # Only a datagram newer than all before may move the endpoint, or set it again after
        # silence: no replay is. (The very first one has nothing before it.)
        moving = t._remote_key != addr
        checked = t.ayiya.verify(decoded, now + self.wall_offset, moving=moving)
        if isinstance(checked, AyiyaDrop):
            return self._ayiya_drop(checked)
        if t._remote_key != addr:
            t.remote, t.port = addr
            t._remote_key = addr
            self.learned.append((t.tunnel_id, addr[0], addr[1]))
        t.last_seen = now
        op = checked.opcode
        if op is not OpCode.FORWARD and op is not OpCode.ECHO_REQUEST_FORWARD:
            return []
        if checked.next_header != NEXT_HEADER_IPV6:
            self.drops[Drop.WRONG_FAMILY] += 1
            return []
        return self._from_client6(t, checked.payload, now)

    def _ayiya_drop(self, why: AyiyaDrop) -> list[Output]:
        self.ayiya_drops[why] += 1
        self.drops[Drop.BAD_AYIYA] += 1
        return []

    def _from_client6(self, t: TunnelState, pkt: bytes, now: float) -> list[Output]:
        if len(pkt) < 40 or pkt[0] >> 4 != 6:
            self.drops[Drop.MALFORMED] += 1
            return []
        src = pkt[8:24]
        dst = pkt[24:40]
        if src[0] == 0xFE and src[1] & 0xC0 == 0x80 or src[0] == 0xFF:
            # The client kernel's Router Solicitations and the like (tsp.md §2.6).
            self.drops[Drop.LINK_LOCAL] += 1
            return []
        assert t._allowed is not None
        if t._allowed.lookup(src) is None:
            self.drops[Drop.SPOOFED_SOURCE] += 1
            return []
        t.last_seen = now
        t.packets_in += 1
        t.bytes_in += len(pkt)
        if dst == t._server_inner:
            reply = packet.echo_reply(pkt)
            if reply is None:
                self.drops[Drop.TO_SERVER] += 1
                return []
            return self._to_client(t, reply, now)
        if dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80):
            self.drops[Drop.LINK_LOCAL] += 1
            return []
        return [(Out.TUN, pkt, None)]

    # ------------------------------------------------------------------ from the TUN

    def from_tun(self, pkt: bytes, now: float) -> list[Output]:
        """A packet the kernel routed into the TUN: send it into its tunnel."""
        if not pkt:
            self.drops[Drop.MALFORMED] += 1
            return []
        version = pkt[0] >> 4
        if version == 6:
            if len(pkt) < 40:
                self.drops[Drop.MALFORMED] += 1
                return []
            t = self._routes6.lookup(pkt[24:40])
            if t is None:
                self.drops[Drop.NO_ROUTE] += 1
                return []
            if len(pkt) > t.mtu:
                self.drops[Drop.TOO_BIG] += 1
                return self._icmp_error(packet.packet_too_big(pkt, t.mtu, t._server_inner), now)
            return self._to_client(t, pkt, now)
        if version == 4:
            if len(pkt) < 20:
                self.drops[Drop.MALFORMED] += 1
                return []
            t = self._routes4.lookup(pkt[16:20])
            if t is None:
                self.drops[Drop.NO_ROUTE] += 1
                return []
            if len(pkt) > t.mtu:
                self.drops[Drop.TOO_BIG] += 1
                # None with DF clear: the kernel would fragment; we do not, so it is dropped.
                return self._icmp_error(packet.frag_needed_v4(pkt, t.mtu, t._server_inner), now)
            return self._to_client(t, pkt, now)
        self.drops[Drop.MALFORMED] += 1
        return []

    def _to_client(self, t: TunnelState, pkt: bytes, now: float) -> list[Output]:
        t.packets_out += 1
        t.bytes_out += len(pkt)
        if t.encap is Encap.V6UDPV4:
            return [(Out.UDP, pkt, t._remote_key)]
        if t.encap is Encap.V6V4:
            return [(Out.PROTO41, pkt, t._remote_key)]
        if t.encap is Encap.AYIYA:
            assert t.ayiya is not None
            if not t.remote:
                t.packets_out -= 1
                t.bytes_out -= len(pkt)
                self.drops[Drop.NO_ENDPOINT] += 1
                # sixxsd (sixxs.md §3.8): address unreachable (3) for a tunnel never heard
                # from, no route (0) for one down after silence.
                code = 0 if t.ayiya.replay.newest is not None else 3
                err = packet.destination_unreachable(pkt, code, t._server_inner)
                return self._icmp_error(err, now)
            return [(Out.AYIYA, t.ayiya.forward(pkt, now + self.wall_offset), t._remote_key)]
        return [(Out.IP4IN6, pkt, t._remote_key)]

    def _icmp_error(self, err: bytes | None, now: float) -> list[Output]:
        """``err`` (an ICMP error for the TUN, or None: none due) if the rate limit allows."""
        if err is None:
            return []
        if not self._icmp.take(now):
            self.icmp_rate_limited += 1
            return []
        return [(Out.TUN, err, None)]

    # ------------------------------------------------------------------ expiry

    def silence(self, now: float, down_after: float) -> list[int]:
        """AYIYA tunnels without a valid datagram for ``down_after`` seconds are down
        (sixxs.md §3.8): their endpoint is forgotten, so nothing more goes to an address the
        client may have left, until its next datagram (newer than all before) brings the tunnel
        back up there. Returns their ids; the tunnels stay installed."""
        down = []
        for t in self._by_identity.values():
            if t.remote and now - t.last_seen >= down_after:
                t.remote, t.port, t._remote_key = "", None, ("", 0)
                down.append(t.tunnel_id)
        return down

    def expire(self, now: float) -> list[Expired]:
        """Take down tunnels silent past their keepalive or past their lifetime."""
        out = []
        for t in list(self._tunnels.values()):
            if now >= t.expires_at:
                reason = "lifetime expired"
            elif (
                # 0: no keepalive agreed (a managed static tunnel): silence is not an end.
                t.keepalive_interval
                and now - t.last_seen > t.keepalive_interval * self.idle_factor + self.idle_grace
            ):
                reason = "keepalive timeout"
            else:
                continue
            self.remove(t.tunnel_id)
            out.append(Expired(t.tunnel_id, reason))
        return out
