"""The forwarding core: tables, ingress filtering, keepalive echo, MTU, expiry. No sockets."""

from __future__ import annotations

import ipaddress
import struct
from ipaddress import IPv6Address

import pytest

from tunnelbroker.protocols.ayiya import AyiyaDrop, AyiyaLink, Role
from tunnelbroker.tunnelserver import packet
from tunnelbroker.tunnelserver.engine import (
    Drop,
    Encap,
    Expired,
    ForwardingCore,
    Out,
    TunnelState,
)


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


INTERNET = "2001:db8:ffff::100"


def udp6(src: str, dst: str, size: int = 64) -> bytes:
    payload = struct.pack("!HHHH", 1000, 2000, 8 + size, 0) + b"x" * size
    return packet.build_ipv6(a6(src), a6(dst), 17, payload)


def echo_request(src: str, dst: str, ident: int = 7, seq: int = 1) -> bytes:
    body = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"ping"
    csum = packet.icmpv6_checksum(a6(src), a6(dst), body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    return packet.build_ipv6(a6(src), a6(dst), 58, body)


def tunnel(
    tid: int,
    encap: Encap = Encap.V6V4,
    remote: str = "198.51.100.10",
    port: int | None = None,
    link: str = "2001:db8:8000:1::",
    delegated: str | None = None,
    mtu: int = 1280,
) -> TunnelState:
    prefixes: list[ipaddress.IPv6Network | ipaddress.IPv4Network] = [
        ipaddress.IPv6Network(f"{link}2/128")
    ]
    if delegated:
        prefixes.append(ipaddress.IPv6Network(delegated))
    return TunnelState(
        tid,
        encap,
        remote,
        port,
        prefixes,
        f"{link}1",
        mtu=mtu,
        keepalive_interval=10,
        expires_at=10_000.0,
    )


@pytest.fixture
def core() -> ForwardingCore:
    c = ForwardingCore()
    c.add(tunnel(1, delegated="2001:db8:c000:100::/56"), 0.0)
    c.add(tunnel(2, Encap.V6UDPV4, "198.51.100.2", 40000, "2001:db8:8000:2::"), 0.0)
    return c


def test_tun_to_tunnel_by_longest_prefix(core: ForwardingCore) -> None:
    pkt = udp6(INTERNET, "2001:db8:8000:1::2")
    assert core.from_tun(pkt, 1.0) == [(Out.PROTO41, pkt, a4("198.51.100.10"))]
    pkt = udp6(INTERNET, "2001:db8:c000:1ff::77")  # inside the delegated /56
    assert core.from_tun(pkt, 1.0) == [(Out.PROTO41, pkt, a4("198.51.100.10"))]
    pkt = udp6(INTERNET, "2001:db8:8000:2::2")
    assert core.from_tun(pkt, 1.0) == [(Out.UDP, pkt, ("198.51.100.2", 40000))]
    assert core.from_tun(udp6(INTERNET, "2001:db8:9999::1"), 1.0) == []
    assert core.drops[Drop.NO_ROUTE] == 1
    t = core.get(1)
    assert t is not None and t.packets_out == 2


def test_tunnel_to_tun_with_ingress_filter(core: ForwardingCore) -> None:
    good = udp6("2001:db8:8000:1::2", INTERNET)
    assert core.from_proto41(good, a4("198.51.100.10"), 5.0) == [(Out.TUN, good, None)]
    from_prefix = udp6("2001:db8:c000:100::9", INTERNET)
    assert core.from_proto41(from_prefix, a4("198.51.100.10"), 5.0) == [
        (Out.TUN, from_prefix, None)
    ]
    # Tunnel 2's address through tunnel 1: spoofed.
    assert core.from_proto41(udp6("2001:db8:8000:2::2", INTERNET), a4("198.51.100.10"), 5.0) == []
    # A stranger's outer source.
    assert core.from_proto41(good, a4("203.0.113.9"), 5.0) == []
    # Tunnel 2 must come from its own address and port.
    own = udp6("2001:db8:8000:2::2", INTERNET)
    assert core.from_udp(own, ("198.51.100.2", 40000), 5.0) == [(Out.TUN, own, None)]
    assert core.from_udp(own, ("198.51.100.2", 40001), 5.0) == []
    assert core.drops[Drop.SPOOFED_SOURCE] == 1
    assert core.drops[Drop.UNKNOWN_ENDPOINT] == 2
    t = core.get(1)
    assert t is not None and t.last_seen == 5.0 and t.packets_in == 2


def test_keepalive_echo_is_answered_through_the_same_tunnel(core: ForwardingCore) -> None:
    req = echo_request("2001:db8:8000:2::2", "2001:db8:8000:2::1")
    out = core.from_udp(req, ("198.51.100.2", 40000), 3.0)
    assert len(out) == 1
    where, reply, dest = out[0]
    assert where is Out.UDP and dest == ("198.51.100.2", 40000)
    assert reply[8:24] == a6("2001:db8:8000:2::1") and reply[24:40] == a6("2001:db8:8000:2::2")
    assert reply[40] == 129
    # Anything else to the server's address is dropped, not forwarded.
    assert (
        core.from_udp(
            udp6("2001:db8:8000:2::2", "2001:db8:8000:2::1"), ("198.51.100.2", 40000), 3.0
        )
        == []
    )
    assert core.drops[Drop.TO_SERVER] == 1


def test_router_solicitations_are_not_forwarded(core: ForwardingCore) -> None:
    rs = packet.build_ipv6(a6("fe80::1"), a6("ff02::2"), 58, b"\x85\x00\x00\x00\x00\x00\x00\x00")
    assert core.from_udp(rs, ("198.51.100.2", 40000), 1.0) == []
    assert core.drops[Drop.LINK_LOCAL] == 1


def test_oversized_packets_get_packet_too_big(core: ForwardingCore) -> None:
    big = udp6(INTERNET, "2001:db8:8000:1::2", size=1400)
    out = core.from_tun(big, 1.0)
    assert len(out) == 1 and out[0][0] is Out.TUN
    ptb = out[0][1]
    assert ptb[24:40] == a6(INTERNET) and ptb[8:24] == a6("2001:db8:8000:1::1")
    assert ptb[40] == 2 and struct.unpack("!I", ptb[44:48])[0] == 1280
    assert len(ptb) <= 1280
    assert core.drops[Drop.TOO_BIG] == 1


def test_mtu_is_per_tunnel() -> None:
    c = ForwardingCore()
    c.add(tunnel(9, mtu=1480), 0.0)
    pkt = udp6(INTERNET, "2001:db8:8000:1::2", size=1400)
    assert c.from_tun(pkt, 1.0)[0][0] is Out.PROTO41


def test_v4v6_forwarding_and_filter() -> None:
    c = ForwardingCore()
    t = TunnelState(
        5,
        Encap.V4V6,
        "2001:db8:1::10",
        None,
        [ipaddress.IPv4Network("100.64.0.5/32")],
        "100.64.0.6",
    )
    c.add(t, 0.0)
    inner = packet.build_ipv4(a4("100.64.0.5"), a4("192.0.2.99"), 17, b"\0" * 16)
    assert c.from_4in6(inner, a6("2001:db8:1::10"), 1.0) == [(Out.TUN, inner, None)]
    spoofed = packet.build_ipv4(a4("100.64.0.9"), a4("192.0.2.99"), 17, b"\0" * 16)
    assert c.from_4in6(spoofed, a6("2001:db8:1::10"), 1.0) == []
    back = packet.build_ipv4(a4("192.0.2.99"), a4("100.64.0.5"), 17, b"\0" * 16)
    assert c.from_tun(back, 1.0) == [(Out.IP4IN6, back, a6("2001:db8:1::10"))]


def test_endpoint_update_moves_the_tunnel(core: ForwardingCore) -> None:
    pkt = udp6("2001:db8:8000:2::2", INTERNET)
    assert core.update_endpoint(2, "198.51.100.2", 41000, 2.0)
    assert core.from_udp(pkt, ("198.51.100.2", 40000), 3.0) == []
    assert core.from_udp(pkt, ("198.51.100.2", 41000), 3.0) == [(Out.TUN, pkt, None)]
    back = udp6(INTERNET, "2001:db8:8000:2::2")
    assert core.from_tun(back, 3.0) == [(Out.UDP, back, ("198.51.100.2", 41000))]


def test_idle_and_lifetime_expiry(core: ForwardingCore) -> None:
    assert core.expire(30.0) == []  # 3 x 10 s + 10 s grace not yet over
    core.from_proto41(udp6("2001:db8:8000:1::2", INTERNET), a4("198.51.100.10"), 35.0)
    assert core.expire(41.0) == [Expired(2, "keepalive timeout")]
    assert core.expire(10_000.0) == [Expired(1, "lifetime expired")]
    assert len(core) == 0
    assert core.from_tun(udp6(INTERNET, "2001:db8:8000:1::2"), 1.0) == []


def test_remove_and_replace(core: ForwardingCore) -> None:
    core.add(tunnel(1, remote="198.51.100.11"), 0.0)  # replaced: new endpoint, no prefix
    pkt = udp6(INTERNET, "2001:db8:c000:100::1")
    assert core.from_tun(pkt, 1.0) == []
    assert core.remove(1) is not None and core.remove(1) is None
    assert core.from_proto41(udp6("2001:db8:8000:1::2", INTERNET), a4("198.51.100.11"), 1.0) == []


def test_cost_does_not_depend_on_the_number_of_tunnels() -> None:
    # Structural check (timings are in bench/): lookups probe one dict per prefix length.
    c = ForwardingCore()
    for i in range(1, 2001):
        c.add(
            tunnel(
                i,
                remote=f"10.{i >> 8}.{i & 255}.1",
                link=f"2001:db8:8000:{i:x}::",
                delegated=f"2001:db8:c{i:03x}::/48",
            ),
            0.0,
        )
    assert len(c) == 2000
    pkt = udp6(INTERNET, "2001:db8:8000:7d0::2")
    assert c.from_tun(pkt, 1.0) == [(Out.PROTO41, pkt, a4("10.7.208.1"))]


def test_garbage_is_counted_not_raised(core: ForwardingCore) -> None:
    for junk in (b"", b"\x60", b"\x45" + b"\0" * 5, b"\x00" * 60, b"\x60" + b"\0" * 10):
        core.from_tun(junk, 1.0)
        core.from_proto41(junk, a4("198.51.100.10"), 1.0)
        core.from_udp(junk, ("198.51.100.2", 40000), 1.0)
    assert core.drops[Drop.MALFORMED] >= 10


def test_no_keepalive_means_no_idle_expiry() -> None:
    c = ForwardingCore()
    t = tunnel(3, remote="198.51.100.30", link="2001:db8:8000:3::")
    t.keepalive_interval = 0  # a managed static tunnel
    c.add(t, 0.0)
    assert c.expire(9_999.0) == []
    assert c.expire(10_000.0) == [Expired(3, "lifetime expired")]


def test_v4v6_keepalive_echo_is_answered_by_the_data_plane() -> None:
    from tunnelbroker.protocols.tsp.keepalive import KeepaliveMachine

    c = ForwardingCore()
    t = TunnelState(
        5,
        Encap.V4V6,
        "2001:db8:1::10",
        None,
        [ipaddress.IPv4Network("100.64.0.5/32")],
        "100.64.0.6",
    )
    c.add(t, 0.0)
    ka = KeepaliveMachine(10, a4("100.64.0.6"), a4("100.64.0.5"), 77)
    ka.next_send(0.0, 0.0)
    echo = ka.due(7.5)
    assert echo is not None
    [(where, reply, dest)] = c.from_4in6(echo, a6("2001:db8:1::10"), 7.5)
    assert where is Out.IP4IN6 and dest == a6("2001:db8:1::10")
    assert ka.receive(reply, 7.6) and ka.missed == 0 and ka.answered == 1
    # Any other packet to the server's address is not forwarded either.
    other = packet.build_ipv4(a4("100.64.0.5"), a4("100.64.0.6"), 17, b"\0" * 16)
    assert c.from_4in6(other, a6("2001:db8:1::10"), 8.0) == []
    assert c.drops[Drop.TO_SERVER] == 1


def _ayiya_pair(secret: str = "tunnel secret") -> tuple[TunnelState, AyiyaLink]:
    client, server = IPv6Address("2001:db8:8000:7::2"), IPv6Address("2001:db8:8000:7::1")
    state = TunnelState(
        7,
        Encap.AYIYA,
        "",
        None,
        [ipaddress.IPv6Network(f"{client}/128")],
        str(server),
        keepalive_interval=0,
        ayiya=AyiyaLink(secret, role=Role.SERVER, local=server, remote=client),
    )
    return state, AyiyaLink(secret, role=Role.CLIENT, local=client, remote=server)


def test_ayiya_learns_the_endpoint_forwards_and_signs() -> None:
    c = ForwardingCore()
    c.wall_offset = 1_800_000_000.0  # "now" 0 is this epoch second
    state, client = _ayiya_pair()
    c.add(state, 0.0)
    out6 = udp6(INTERNET, "2001:db8:8000:7::2")
    # Not heard from yet: sixxsd's Destination Unreachable, address unreachable (3).
    [(where, err, _)] = c.from_tun(out6, 0.5)
    assert where is Out.TUN and c.drops[Drop.NO_ENDPOINT] == 1
    assert _unreachable(err, out6) == 3
    inner = udp6("2001:db8:8000:7::2", INTERNET)
    datagram = client.forward(inner, 1_800_000_001.0)
    assert c.from_ayiya(datagram, ("203.0.113.5", 40000), 1.0) == [(Out.TUN, inner, None)]
    assert c.learned == [(7, "203.0.113.5", 40000)] and state.remote == "203.0.113.5"
    # The same datagram again, from anywhere, is a replay: dropped, the endpoint stays.
    assert c.from_ayiya(datagram, ("198.51.100.66", 1), 1.1) == []
    assert c.ayiya_drops[AyiyaDrop.REPLAYED] == 1 and state.remote == "203.0.113.5"
    # Towards the client: a Forward the client accepts, to the learnt endpoint.
    [(where, signed, dest)] = c.from_tun(out6, 2.0)
    assert where is Out.AYIYA and dest == ("203.0.113.5", 40000)
    got = client.receive(signed, 1_800_000_002.0)
    assert not isinstance(got, AyiyaDrop) and got.payload == out6
    # A NOOP keeps it alive and follows a NAT's new port, forwarding nothing.
    assert c.from_ayiya(client.noop(1_800_000_003.0), ("203.0.113.5", 40001), 3.0) == []
    assert state.port == 40001 and c.learned[-1] == (7, "203.0.113.5", 40001)


def test_ayiya_drops_are_counted_by_reason() -> None:
    c = ForwardingCore()
    c.wall_offset = 1_800_000_000.0
    state, client = _ayiya_pair()
    c.add(state, 0.0)
    inner = udp6("2001:db8:8000:7::2", INTERNET)
    _, stranger = _ayiya_pair("another secret")
    cases = [
        (stranger.forward(inner, 1_800_000_001.0), AyiyaDrop.BAD_SIGNATURE),
        (client.forward(inner, 1_800_000_001.0 - 500), AyiyaDrop.CLOCK_SKEW),
        (client.forward(inner, 1_800_000_001.0)[:30], AyiyaDrop.TRUNCATED),
    ]
    for datagram, reason in cases:
        assert c.from_ayiya(datagram, ("203.0.113.5", 40000), 1.0) == []
        assert c.ayiya_drops[reason] == 1, reason
    other = AyiyaLink(
        "tunnel secret",
        role=Role.CLIENT,
        local=IPv6Address("2001:db8:8000:9::2"),
        remote=IPv6Address("2001:db8:8000:9::1"),
    )
    assert c.from_ayiya(other.forward(inner, 1_800_000_001.0), ("203.0.113.5", 1), 1.0) == []
    assert c.ayiya_drops[AyiyaDrop.UNKNOWN_IDENTITY] == 1
    # A valid datagram whose inner source is not the tunnel's.
    spoofed = client.forward(udp6("2001:db8:9999::1", INTERNET), 1_800_000_001.0)
    assert c.from_ayiya(spoofed, ("203.0.113.5", 40000), 1.0) == []
    assert c.drops[Drop.SPOOFED_SOURCE] == 1 and c.learned == [(7, "203.0.113.5", 40000)]
    assert c.drops[Drop.BAD_AYIYA] == 4


def test_reinstalling_an_ayiya_tunnel_keeps_its_replay_window() -> None:
    c = ForwardingCore()
    c.wall_offset = 1_800_000_000.0
    state, client = _ayiya_pair()
    c.add(state, 0.0)
    datagram = client.noop(1_800_000_001.0)
    assert c.from_ayiya(datagram, ("203.0.113.5", 40000), 1.0) == []
    again, _ = _ayiya_pair()
    c.add(again, 2.0)  # e.g. the broker recorded the learnt endpoint
    assert c.from_ayiya(datagram, ("198.51.100.66", 1), 2.0) == []
    assert c.ayiya_drops[AyiyaDrop.REPLAYED] == 1
    changed, _ = _ayiya_pair("a new secret")
    c.add(changed, 3.0)  # a new secret starts afresh
    assert changed.ayiya is not again.ayiya


def test_only_a_newer_ayiya_datagram_moves_the_endpoint() -> None:
    c = ForwardingCore()
    c.wall_offset = 1_800_000_000.0
    state, client = _ayiya_pair()
    c.add(state, 0.0)
    inner = udp6("2001:db8:8000:7::2", INTERNET)
    first = client.forward(inner, 1_800_000_005.0)
    assert c.from_ayiya(first, ("203.0.113.5", 40000), 5.0) == [(Out.TUN, inner, None)]
    # Another datagram of the same second from elsewhere (what a replay of anything the
    # client sent would be at best) forwards nothing and moves nothing.
    other = client.forward(udp6("2001:db8:8000:7::2", INTERNET, 65), 1_800_000_005.0)
    assert c.from_ayiya(other, ("198.51.100.66", 1), 5.5) == []
    assert c.ayiya_drops[AyiyaDrop.STALE_MOVE] == 1 and state.remote == "203.0.113.5"
    # From the endpoint itself the same second is fine, and older ones too (clock steps).
    assert c.from_ayiya(other, ("203.0.113.5", 40000), 5.5) != []
    older = client.forward(udp6("2001:db8:8000:7::2", INTERNET, 66), 1_800_000_001.0)
    assert c.from_ayiya(older, ("203.0.113.5", 40000), 5.6) != []
    # The client's next second, from a new NAT mapping, moves the tunnel.
    newer = client.noop(1_800_000_006.0)
    assert c.from_ayiya(newer, ("203.0.113.5", 40002), 6.0) == []
    assert state.port == 40002 and c.learned[-1] == (7, "203.0.113.5", 40002)


def test_a_silent_ayiya_tunnel_is_down_until_its_next_newer_datagram() -> None:
    c = ForwardingCore()
    c.wall_offset = 1_800_000_000.0
    state, client = _ayiya_pair()
    c.add(state, 0.0)
    assert c.silence(500.0, 120.0) == []  # never heard: nothing to forget
    inner = udp6("2001:db8:8000:7::2", INTERNET)
    # The client's clock is 60 s ahead (within the window), so what it sent before the
    # silence is still fresh enough for the clock check afterwards.
    assert c.from_ayiya(client.forward(inner, 1_800_000_070.0), ("203.0.113.5", 40000), 10.0)
    assert c.silence(129.9, 120.0) == [] and state.remote == "203.0.113.5"
    # sixxs.md §3.8: silent for 120 s or more is down; the endpoint is forgotten.
    assert c.silence(130.0, 120.0) == [7]
    assert (state.remote, state.port) == ("", None)
    assert c.silence(131.0, 120.0) == []
    out6 = udp6(INTERNET, "2001:db8:8000:7::2")
    # Down: Destination Unreachable, no route (0).
    [(where, err, _)] = c.from_tun(out6, 131.0)
    assert where is Out.TUN and _unreachable(err, out6) == 0
    assert c.drops[Drop.NO_ENDPOINT] == 1
    # A datagram of that old second cannot bring it back anywhere: every move needs one newer
    # than all accepted.
    old = client.forward(udp6("2001:db8:8000:7::2", INTERNET, 65), 1_800_000_070.0)
    assert c.from_ayiya(old, ("198.51.100.66", 1), 131.0) == []
    assert c.ayiya_drops[AyiyaDrop.STALE_MOVE] == 1 and state.remote == ""
    # The client's next datagram does, wherever it comes from now.
    assert c.from_ayiya(client.noop(1_800_000_191.0), ("203.0.113.5", 40009), 131.0) == []
    assert (state.remote, state.port) == ("203.0.113.5", 40009)
    assert c.learned[-1] == (7, "203.0.113.5", 40009)
    [(where, _, dest)] = c.from_tun(out6, 132.0)
    assert where is Out.AYIYA and dest == ("203.0.113.5", 40009)


def _unreachable(err: bytes, invoking: bytes) -> int:
    """The code of ``err``, a Destination Unreachable from the server about ``invoking``."""
    assert err[6] == 58 and err[40] == packet.ICMPv6Type.DEST_UNREACHABLE
    assert err[8:24] == IPv6Address("2001:db8:8000:7::1").packed and err[24:40] == invoking[8:24]
    assert err[48:] == invoking
    return err[41]


def test_icmp_errors_are_rate_limited() -> None:
    """RFC 4443 §2.4(f): a burst, then the rate; what is over it is counted, not sent."""
    c = ForwardingCore(icmp_rate=10.0, icmp_burst=3.0)
    c.add(tunnel(1), 0.0)
    big = udp6(INTERNET, "2001:db8:8000:1::2", 1300)
    sent = [len(c.from_tun(big, 1.0)) for _ in range(5)]
    assert sent == [1, 1, 1, 0, 0] and c.icmp_rate_limited == 2
    assert c.drops[Drop.TOO_BIG] == 5
    assert len(c.from_tun(big, 1.1)) == 1  # one more token after 0.1 s
    assert len(c.from_tun(big, 1.1)) == 0 and c.icmp_rate_limited == 3
