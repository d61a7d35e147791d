"""The C fast path through the userspace data plane, against the real kernel.

Each scenario runs in a throwaway network namespace (a thread of its own, see
``in_throwaway_netns``): a real TUN, a real TSP-style UDP socket, a raw protocol-41 socket and
an AYIYA socket on loopback; "clients" are sockets on other loopback addresses and "the
internet" is an IPv6 address on lo with a UDP socket behind it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.tunnelserver.netns import needs_netns

from tunnelbroker.protocols.ayiya import (
    NEXT_HEADER_NONE,
    AyiyaDrop,
    AyiyaLink,
    AyiyaPacket,
    OpCode,
    ReplayCache,
    Role,
    Verdict,
    encode,
)
from tunnelbroker.tunnelserver import fastpath
from tunnelbroker.tunnelserver.engine import Drop, Encap, TunnelState
from tunnelbroker.tunnelserver.kernel import in_throwaway_netns
from tunnelbroker.tunnelserver.tun import address_args, iproute_call, wait_until_local
from tunnelbroker.tunnelserver.userspace import Datagram, DataPlaneConfig, UserspaceDataPlane

T = TypeVar("T")

SERVER4 = "127.0.0.1"
UDP_CLIENT4 = "127.0.0.2"
V6V4_CLIENT4 = "127.0.0.3"
HOST6 = "2001:db8:ffff::100"
UDP_CLIENT6 = "2001:db8:8000::2"
UDP_SERVER6 = "2001:db8:8000::1"
UDP_ROUTED = "2001:db8:8100::/64"
V6V4_CLIENT6 = "2001:db8:8001::2"
V6V4_SERVER6 = "2001:db8:8001::1"
AY_CLIENT4 = "127.0.0.4"
AY_MOVED4 = "127.0.0.5"
AY_CLIENT6 = "2001:db8:8002::2"
AY_SERVER6 = "2001:db8:8002::1"
AY_SECRET = "tunnel secret"
AY_ID = 5


needs_ext = pytest.mark.skipif(fastpath.load() is None, reason="the C extension is not built")
needs_lanes = pytest.mark.skipif(
    not getattr(fastpath.load(), "SHA1_LANES", 0),
    reason="no sixteen-lane SHA-1 here (needs the extension and AVX-512 F and BW)",
)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def udp6(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    head = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", 8 + len(data), 17)
    )
    csum = _checksum(pseudo + head + data) or 0xFFFF
    return ipv6(src, dst, 17, head[:6] + struct.pack("!H", csum) + data)


def echo_request(src: str, dst: str, seq: int) -> bytes:
    icmp = struct.pack("!BBHHH", 128, 0, 0, 0x7462, seq) + b"keepalive"
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", len(icmp), 58)
    )
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    return ipv6(src, dst, 58, icmp)


def wait_for(what: str, cond: Callable[[], T], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def recv_from(sock: socket.socket, match: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
    """The first datagram on ``sock`` that ``match``es, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            data = sock.recv(65535)
            if match(data):
                return data
    raise AssertionError("nothing matching arrived")


class Plane:
    """A started data plane in the current namespace, with one TSP-style UDP socket (and an
    AYIYA socket, with a client socket for it, if asked)."""

    def __init__(self, fast: bool, ayiya: bool = False) -> None:
        def up(ipr: Any) -> None:
            ipr.link("set", index=1, state="up")
            iface = ipaddress.IPv6Interface(f"{HOST6}/128")
            ipr.addr("add", index=1, **address_args(iface))
            wait_until_local(ipr, [iface])

        iproute_call(up)
        self.learned: list[tuple[int, str, int]] = []
        self.dp = UserspaceDataPlane(
            DataPlaneConfig(
                tun_name="tbfast0",
                tun_mtu=1500,
                server_ipv4=SERVER4,
                routes=("2001:db8:8000::/33",),
                ayiya_port=0 if ayiya else None,
                fast_path=fast,
            ),
            on_learned=self.learned.extend,
        )
        self.dp.start()
        self.ayiya_to = (SERVER4, self.dp.ayiya_port)
        #: An AYIYA client's socket.
        self.ay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ay.bind((AY_CLIENT4, 0))
        self.tsp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tsp.bind((SERVER4, 0))
        self.tsp.setblocking(False)
        self.signalling: list[Datagram] = []
        self.adopted = self.dp.adopt_udp(self.tsp, self.signalling.extend)
        self.dp.set_udp_sender(lambda pkt, addr: self.tsp.sendto(pkt, addr) and None)
        self.port = self.tsp.getsockname()[1]
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind((UDP_CLIENT4, 0))
        self.host = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.host.bind((HOST6, 7000))

    def close(self) -> None:
        if self.adopted:
            self.dp.release_udp(self.tsp)
        self.dp.stop()
        for s in (self.tsp, self.client, self.host, self.ay):
            s.close()

    def add_udp_tunnel(self, tunnel_id: int = 1, mtu: int = 1280) -> TunnelState:
        state = TunnelState(
            tunnel_id=tunnel_id,
            encap=Encap.V6UDPV4,
            remote=UDP_CLIENT4,
            port=self.client.getsockname()[1],
            prefixes=[
                ipaddress.IPv6Network(f"{UDP_CLIENT6}/128"),
                ipaddress.IPv6Network(UDP_ROUTED),
            ],
            server_inner=UDP_SERVER6,
            mtu=mtu,
        )
        self.dp.add_tunnel(state)
        return state

    def drops(self) -> dict[Drop, int]:
        self.dp.fold_counters()
        with self.dp._lock:
            return dict(self.dp.core.drops)

    def ayiya_drops(self) -> dict[AyiyaDrop, int]:
        self.dp.fold_counters()
        with self.dp._lock:
            return dict(self.dp.core.ayiya_drops)

    def tunnel(self, tunnel_id: int) -> TunnelState:
        self.dp.fold_counters()
        with self.dp._lock:
            t = self.dp.core.get(tunnel_id)
        assert t is not None
        return t


@contextmanager
def plane(fast: bool = True, ayiya: bool = False) -> Iterator[Plane]:
    p = Plane(fast, ayiya)
    try:
        yield p
    finally:
        p.close()


def _is_udp_payload(data: bytes) -> Callable[[bytes], bool]:
    return lambda pkt: len(pkt) >= 48 and pkt[0] >> 4 == 6 and pkt[6] == 17 and pkt[48:] == data


@needs_netns
@needs_ext
def test_v6udpv4_both_ways_in_c_with_counters_and_the_keepalive_punted() -> None:
    def scenario() -> None:
        with plane() as p:
            assert p.adopted and p.dp.fast is not None
            t = p.add_udp_tunnel()
            before = p.dp.fast.stats()
            # Client -> internet: decapsulated, filtered, into the TUN, to the host's socket.
            p.client.sendto(udp6(UDP_CLIENT6, HOST6, 5000, 7000, b"up"), (SERVER4, p.port))
            p.host.settimeout(5)
            data, addr = p.host.recvfrom(100)
            assert data == b"up" and addr[:2] == (UDP_CLIENT6, 5000)
            # Internet -> client: from the TUN, encapsulated, out of the TSP socket.
            p.host.sendto(b"down", (UDP_CLIENT6, 5000))
            pkt = recv_from(p.client, _is_udp_payload(b"down"))
            assert pkt[8:24] == ipaddress.IPv6Address(HOST6).packed
            stats = p.dp.fast.stats()
            assert stats["fast_in"] - before["fast_in"] == 1
            assert stats["fast_out"] - before["fast_out"] == 1
            state = p.tunnel(1)
            assert state is t
            assert (t.packets_in, t.packets_out) == (1, 1)
            assert t.bytes_in == 40 + 8 + 2 and t.bytes_out == 40 + 8 + 4
            # The keepalive echo is punted to the Python core, which answers through the tunnel.
            p.client.sendto(echo_request(UDP_CLIENT6, UDP_SERVER6, 1), (SERVER4, p.port))
            reply = recv_from(p.client, lambda d: len(d) > 40 and d[6] == 58 and d[40] == 129)
            assert reply[24:40] == ipaddress.IPv6Address(UDP_CLIENT6).packed
            assert p.dp.fast.stats()["punted"] - before["punted"] == 1
            # The core counted what it handled; the C counts are folded in on top.
            assert (p.tunnel(1).packets_in, p.tunnel(1).packets_out) == (2, 2)

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_v6udpv4_download_before_the_clients_first_packet_goes_in_c() -> None:
    """Only signalled, never heard from: with one TSP socket bound to one address there is
    only one way out, so C takes it rather than punting every packet to Python."""

    def scenario() -> None:
        with plane() as p:
            assert p.dp.fast is not None
            p.add_udp_tunnel()
            before = p.dp.fast.stats()
            for i in range(3):
                p.host.sendto(b"down %d" % i, (UDP_CLIENT6, 5000))
                pkt = recv_from(p.client, _is_udp_payload(b"down %d" % i))
                assert pkt[8:24] == ipaddress.IPv6Address(HOST6).packed
            stats = p.dp.fast.stats()
            assert stats["fast_out"] - before["fast_out"] == 3
            assert stats["punted"] == before["punted"]

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_ingress_filter_drops_are_counted_by_reason() -> None:
    def scenario() -> None:
        with plane() as p:
            p.add_udp_tunnel()
            base = p.drops()
            to = (SERVER4, p.port)
            send = p.client.sendto
            send(udp6("2001:db8:9999::1", HOST6, 1, 7000, b"spoofed"), to)
            send(udp6("2001:db8:8100::42", HOST6, 1, 7000, b"from the routed /64"), to)
            send(udp6("fe80::2", HOST6, 1, 7000, b"link-local source"), to)
            send(udp6(UDP_CLIENT6, "ff02::1", 1, 7000, b"multicast destination"), to)
            send(b"\x60" + b"\0" * 20, to)  # IPv6 by its nibble, shorter than a header
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.bind(("127.0.0.9", 0))
                stranger.sendto(udp6(UDP_CLIENT6, HOST6, 1, 7000, b"stranger"), to)

            def settled() -> dict[Drop, int] | None:
                d = p.drops()
                delta = {k: d[k] - base[k] for k in d if d[k] != base[k]}
                # The kernel's own router solicitations and MLD reports into the TUN.
                delta.pop(Drop.NO_ROUTE, None)
                return delta if sum(delta.values()) >= 5 else None

            delta = wait_for("the drops", settled)
            assert delta == {
                Drop.SPOOFED_SOURCE: 1,
                Drop.LINK_LOCAL: 2,
                Drop.MALFORMED: 1,
                Drop.UNKNOWN_ENDPOINT: 1,  # decided in Python: unknown endpoints are punted
            }
            p.host.settimeout(5)
            assert p.host.recvfrom(100)[0] == b"from the routed /64"  # allowed: its prefix

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_signalling_goes_back_to_the_listener_with_our_address() -> None:
    def scenario() -> None:
        with plane() as p:
            p.client.sendto(b"\xf0\0\0\0\0\0\0\0VERSION=2.0.0\r\n", (SERVER4, p.port))
            p.client.sendto(b"\x30odd", (SERVER4, p.port))
            got = wait_for("signalling", lambda: len(p.signalling) >= 2 and p.signalling)
            assert got[0] == (
                b"\xf0\0\0\0\0\0\0\0VERSION=2.0.0\r\n",
                (UDP_CLIENT4, p.client.getsockname()[1]),
                SERVER4,
            )
            assert got[1][0] == b"\x30odd"  # anything that is not IPv6: the listener decides

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_oversize_and_removed_tunnels_follow_the_core() -> None:
    def scenario() -> None:
        with plane() as p:
            p.add_udp_tunnel(mtu=1280)
            # Say hello first, so the fast path knows the flow to send on.
            p.client.sendto(udp6(UDP_CLIENT6, HOST6, 5000, 7000, b"hi"), (SERVER4, p.port))
            p.host.settimeout(5)
            p.host.recvfrom(100)
            base = p.drops()
            p.host.sendto(b"x" * 1300, (UDP_CLIENT6, 5000))  # 1348 bytes > the tunnel's 1280
            wait_for("Packet Too Big", lambda: p.drops()[Drop.TOO_BIG] == base[Drop.TOO_BIG] + 1)
            p.dp.remove_tunnel(1)
            p.client.sendto(udp6(UDP_CLIENT6, HOST6, 5000, 7000, b"gone"), (SERVER4, p.port))
            wait_for(
                "unknown endpoint",
                lambda: p.drops()[Drop.UNKNOWN_ENDPOINT] == base[Drop.UNKNOWN_ENDPOINT] + 1,
            )
            p.host.sendto(b"to nobody", (UDP_CLIENT6, 5000))
            # (>=: the kernel's own chatter into the TUN is NO_ROUTE too)
            wait_for("no route", lambda: p.drops()[Drop.NO_ROUTE] >= base[Drop.NO_ROUTE] + 1)
            assert p.dp.fast is not None and p.dp.fast.stats()["tunnels"] == 0

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_v6v4_both_ways_in_c() -> None:
    def scenario() -> None:
        with plane() as p:
            p.dp.add_tunnel(
                TunnelState(
                    tunnel_id=2,
                    encap=Encap.V6V4,
                    remote=V6V4_CLIENT4,
                    port=None,
                    prefixes=[ipaddress.IPv6Network(f"{V6V4_CLIENT6}/128")],
                    server_inner=V6V4_SERVER6,
                )
            )
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, 41) as raw:
                raw.bind((V6V4_CLIENT4, 0))
                raw.sendto(udp6(V6V4_CLIENT6, HOST6, 6000, 7000, b"6in4 up"), (SERVER4, 0))
                p.host.settimeout(5)
                data, addr = p.host.recvfrom(100)
                assert data == b"6in4 up" and addr[0] == V6V4_CLIENT6
                p.host.sendto(b"6in4 down", addr)

                def is_ours(d: bytes) -> bool:
                    ihl = (d[0] & 15) * 4
                    return d[12:16] == socket.inet_aton(SERVER4) and d[ihl + 48 :] == b"6in4 down"

                recv_from(raw, is_ours)
            t = p.tunnel(2)
            assert (t.packets_in, t.packets_out) == (1, 1)
            assert p.dp.fast is not None and p.dp.fast.stats()["punted"] == 0

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=80).map(lambda b: bytes([0x60 | b[0] & 15]) + b[1:]),
            st.binary(min_size=0, max_size=80).map(
                lambda b: ipv6(UDP_CLIENT6, HOST6, 17, b)[: 40 + len(b) // 2]
            ),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_every_datagram_from_a_tunnel_is_forwarded_dropped_or_punted(packets: list[bytes]) -> None:
    """Junk from a known endpoint: each datagram is accounted for exactly once, and the
    engine keeps running."""

    def scenario() -> None:
        with plane() as p:
            p.add_udp_tunnel()
            fast = p.dp.fast
            assert fast is not None
            for pkt in packets:
                p.client.sendto(pkt, (SERVER4, p.port))

            def accounted() -> int:
                # The kernel's own chatter into the TUN (router solicitations, MLD reports to
                # ff02::) is dropped as NO_ROUTE, which nothing from the client can be.
                while True:
                    s = fast.stats()
                    no_route = p.drops()[Drop.NO_ROUTE]
                    if fast.stats()["dropped"] == s["dropped"]:
                        break
                return s["fast_in"] + s["send_errors"] + s["punted"] + s["dropped"] - no_route

            wait_for("every datagram accounted for", lambda: accounted() >= len(packets))
            time.sleep(0.05)
            assert accounted() == len(packets)  # and none twice
            s = fast.stats()
            assert s["thread_errno"] == 0 and fast.engine.running

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_tsp_listener_socket_adopted_data_flows_while_the_loop_is_blocked() -> None:
    """The TSP endpoint hands its socket to the fast path: data is forwarded while the event
    loop is blocked, and signalling still reaches the protocol on the loop afterwards."""
    import asyncio
    import threading

    from tunnelbroker.listeners.udp_endpoint import PktinfoEndpoint

    class Receiver:
        def __init__(self) -> None:
            self.got: list[tuple[bytes, tuple[str, int], str | None, str]] = []

        def datagram_received_on(
            self, data: bytes, addr: tuple[str, int], local: str | None
        ) -> None:
            self.got.append((data, addr, local, threading.current_thread().name))

    def scenario() -> None:
        with plane() as p:
            state = p.add_udp_tunnel()

            async def main() -> None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((SERVER4, 0))
                sock.setblocking(False)
                receiver = Receiver()
                endpoint = PktinfoEndpoint(sock, receiver, reader=p.dp)
                port = sock.getsockname()[1]
                arrived: list[float] = []

                def traffic() -> None:
                    p.client.sendto(b"\xf0signalling", (SERVER4, port))
                    p.client.sendto(udp6(UDP_CLIENT6, HOST6, 5000, 7000, b"busy"), (SERVER4, port))
                    p.host.settimeout(5)
                    if p.host.recvfrom(100)[0] == b"busy":
                        arrived.append(time.monotonic())

                try:
                    helper = threading.Thread(target=traffic)
                    blocked = time.monotonic()
                    helper.start()
                    time.sleep(1.0)  # the event loop is busy (sign-ups, the database...)
                    helper.join(5)
                    assert arrived and arrived[0] - blocked < 0.5
                    assert receiver.got == []  # signalling waits for the loop
                    for _ in range(100):
                        await asyncio.sleep(0.01)
                        if receiver.got:
                            break
                    data, addr, local, thread = receiver.got[0]
                    assert data == b"\xf0signalling" and local == SERVER4
                    assert addr == (UDP_CLIENT4, state.port)
                    assert thread == threading.current_thread().name
                finally:
                    endpoint.close()
                # Released before the close: only the plane's own socket is left.
                assert list(p.dp._udp_index) == [p.tsp.fileno()]

            asyncio.run(main())

    in_throwaway_netns(scenario)


# ---------------------------------------------------------------------- AYIYA


def _server_link(secret: str = AY_SECRET) -> AyiyaLink:
    return AyiyaLink(
        secret,
        role=Role.SERVER,
        local=ipaddress.IPv6Address(AY_SERVER6),
        remote=ipaddress.IPv6Address(AY_CLIENT6),
    )


def _client_link(secret: str = AY_SECRET) -> AyiyaLink:
    return AyiyaLink(
        secret,
        role=Role.CLIENT,
        local=ipaddress.IPv6Address(AY_CLIENT6),
        remote=ipaddress.IPv6Address(AY_SERVER6),
    )


def ayiya_state(remote: str = "", port: int | None = None, secret: str = AY_SECRET) -> TunnelState:
    """The AYIYA tunnel as the daemon installs it: found by its identity, endpoint learnt."""
    return TunnelState(
        tunnel_id=AY_ID,
        encap=Encap.AYIYA,
        remote=remote,
        port=port,
        prefixes=[ipaddress.IPv6Network(f"{AY_CLIENT6}/128")],
        server_inner=AY_SERVER6,
        ayiya=_server_link(secret),
    )


def _up(data: bytes, sport: int = 5000) -> bytes:
    """A UDP packet from the AYIYA client to the host."""
    return udp6(AY_CLIENT6, HOST6, sport, 7000, data)


def _whole_second() -> float:
    """Now, in whole seconds: datagrams built from it carry exactly this epoch."""
    return float(int(time.time()))


def _ayiya_up(
    p: Plane, link: AyiyaLink, at: float | None = None
) -> tuple[TunnelState, fastpath.FastPath]:
    """The AYIYA tunnel installed, and its endpoint learnt from a first datagram (signed at
    ``at``, default now)."""
    assert p.dp.fast is not None
    state = ayiya_state()
    p.dp.add_tunnel(state)
    p.ay.sendto(link.forward(_up(b"hello"), time.time() if at is None else at), p.ayiya_to)
    p.host.settimeout(5)
    assert p.host.recvfrom(100)[0] == b"hello"
    return state, p.dp.fast


def _deltas(now: dict[Any, int], base: dict[Any, int]) -> dict[Any, int]:
    return {k: now[k] - base[k] for k in now if now[k] != base[k]}


@needs_netns
@needs_ext
def test_ayiya_both_ways_in_c_after_python_learns_the_endpoint() -> None:
    def scenario() -> None:
        with plane(ayiya=True) as p:
            assert p.dp.fast is not None
            link = _client_link()
            before = p.dp.fast.stats()
            state, fast = _ayiya_up(p, link)
            # The first datagram: no endpoint yet, so Python learnt it (and told C).
            assert p.learned == [(AY_ID, AY_CLIENT4, p.ay.getsockname()[1])]
            assert isinstance(state.ayiya and state.ayiya.replay, fastpath.EngineReplay)
            after_first = fast.stats()
            assert after_first["punted"] - before["punted"] == 1
            # From the endpoint: verified and forwarded in C.
            p.ay.sendto(link.forward(_up(b"in C"), time.time()), p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"in C"
            # Internet -> client: encapsulated, signed with the server's identity, in C.
            p.host.sendto(b"down", (AY_CLIENT6, 5000))
            got = link.receive(recv_from(p.ay, lambda d: True), time.time())
            assert isinstance(got, AyiyaPacket) and got.opcode is OpCode.FORWARD
            assert got.payload[8:24] == ipaddress.IPv6Address(HOST6).packed
            assert got.payload[48:] == b"down"
            stats = fast.stats()
            assert stats["fast_in"] - after_first["fast_in"] == 1
            assert stats["fast_out"] - after_first["fast_out"] == 1
            assert stats["punted"] == after_first["punted"]
            t = p.tunnel(AY_ID)
            assert (t.packets_in, t.packets_out) == (2, 1)
            assert t.bytes_in == 2 * 48 + 5 + 4 and t.bytes_out == 48 + 4
            # The keepalive echo to the server's address is punted and answered by Python.
            p.ay.sendto(
                link.forward(echo_request(AY_CLIENT6, AY_SERVER6, 1), time.time()), p.ayiya_to
            )
            reply = link.receive(recv_from(p.ay, lambda d: True), time.time())
            assert isinstance(reply, AyiyaPacket) and reply.payload[40] == 129
            assert fast.stats()["punted"] == after_first["punted"] + 1
            assert p.learned == [(AY_ID, AY_CLIENT4, p.ay.getsockname()[1])]

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_ayiya_replays_bad_signatures_and_clock_skew_are_dropped_in_c() -> None:
    def scenario() -> None:
        with plane(ayiya=True) as p:
            link = _client_link()
            _, fast = _ayiya_up(p, link)
            base, base_ay, base_stats = p.drops(), p.ayiya_drops(), fast.stats()
            datagram = link.forward(_up(b"once"), time.time())
            p.ay.sendto(datagram, p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"once"
            p.ay.sendto(datagram, p.ayiya_to)
            p.ay.sendto(
                _client_link("another secret").forward(_up(b"forged"), time.time()), p.ayiya_to
            )
            p.ay.sendto(link.forward(_up(b"late"), time.time() - 500), p.ayiya_to)
            wait_for("the drops", lambda: sum(_deltas(p.ayiya_drops(), base_ay).values()) >= 3)
            assert _deltas(p.ayiya_drops(), base_ay) == {
                AyiyaDrop.REPLAYED: 1,
                AyiyaDrop.BAD_SIGNATURE: 1,
                AyiyaDrop.CLOCK_SKEW: 1,
            }
            delta = _deltas(p.drops(), base)
            delta.pop(Drop.NO_ROUTE, None)  # the kernel's own chatter into the TUN
            assert delta == {Drop.BAD_AYIYA: 3}
            assert fast.stats()["punted"] == base_stats["punted"]  # all decided in C
            p.host.settimeout(0.2)
            with pytest.raises(TimeoutError):
                p.host.recvfrom(100)

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_ayiya_move_is_decided_in_python_then_c_forwards_from_the_new_address() -> None:
    def scenario() -> None:
        with plane(ayiya=True) as p, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as moved:
            moved.bind((AY_MOVED4, 0))
            link = _client_link()
            second = _whole_second()
            state, fast = _ayiya_up(p, link, second)
            before = fast.stats()
            # The NAT mapping changed: a newer datagram from elsewhere moves the tunnel.
            moved.sendto(link.forward(_up(b"moved"), second + 1), p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"moved"
            where = (AY_MOVED4, moved.getsockname()[1])
            assert p.learned[-1] == (AY_ID, *where)
            assert (state.remote, state.port) == where
            after_move = fast.stats()
            assert after_move["punted"] == before["punted"] + 1
            moved.sendto(link.forward(_up(b"moved, in C"), second + 1), p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"moved, in C"
            p.host.sendto(b"to the new address", (AY_CLIENT6, 5000))
            got = link.receive(recv_from(moved, lambda d: True), time.time())
            assert isinstance(got, AyiyaPacket) and got.payload[48:] == b"to the new address"
            stats = fast.stats()
            assert stats["punted"] == after_move["punted"]
            assert stats["fast_in"] == after_move["fast_in"] + 1
            assert stats["fast_out"] == after_move["fast_out"] + 1
            # The old address is a stranger now: its datagrams go to Python, which refuses a
            # move to an older second.
            base_ay = p.ayiya_drops()
            p.ay.sendto(link.forward(_up(b"old address"), second), p.ayiya_to)
            wait_for("stale move", lambda: _deltas(p.ayiya_drops(), base_ay))
            assert _deltas(p.ayiya_drops(), base_ay) == {AyiyaDrop.STALE_MOVE: 1}

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_a_replay_from_a_new_address_does_not_move_the_tunnel() -> None:
    """C accepted the datagram; Python sees its replay from elsewhere, checks it against the
    same replay cache, and refuses it: the tunnel stays where it is."""

    def scenario() -> None:
        with plane(ayiya=True) as p, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief:
            thief.bind((AY_MOVED4, 0))
            link = _client_link()
            second = _whole_second()
            state, fast = _ayiya_up(p, link, second)
            before = fast.stats()
            accepted = link.forward(_up(b"accepted in C"), second)
            p.ay.sendto(accepted, p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"accepted in C"
            assert fast.stats()["fast_in"] == before["fast_in"] + 1
            base_ay = p.ayiya_drops()
            thief.sendto(accepted, p.ayiya_to)
            # Not a replay, but no newer than what was accepted: no move either.
            thief.sendto(link.forward(_up(b"same second"), second), p.ayiya_to)
            wait_for("both refused", lambda: sum(_deltas(p.ayiya_drops(), base_ay).values()) >= 2)
            assert _deltas(p.ayiya_drops(), base_ay) == {
                AyiyaDrop.REPLAYED: 1,
                AyiyaDrop.STALE_MOVE: 1,
            }
            assert (state.remote, state.port) == (AY_CLIENT4, p.ay.getsockname()[1])
            assert len(p.learned) == 1
            p.host.settimeout(0.2)
            with pytest.raises(TimeoutError):
                p.host.recvfrom(100)

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_reinstalling_an_ayiya_tunnel_with_its_key_keeps_the_replay_cache() -> None:
    def scenario() -> None:
        with plane(ayiya=True) as p:
            link = _client_link()
            state, fast = _ayiya_up(p, link)
            accepted = link.forward(_up(b"accepted"), time.time())
            p.ay.sendto(accepted, p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"accepted"
            # As the daemon does when the record changes (the learnt endpoint stored, say).
            again = ayiya_state(AY_CLIENT4, p.ay.getsockname()[1])
            p.dp.add_tunnel(again)
            assert again.ayiya is state.ayiya  # the core kept the link, C kept its cache
            base_ay, base_stats = p.ayiya_drops(), fast.stats()
            p.ay.sendto(accepted, p.ayiya_to)
            wait_for("the replay", lambda: _deltas(p.ayiya_drops(), base_ay))
            assert _deltas(p.ayiya_drops(), base_ay) == {AyiyaDrop.REPLAYED: 1}
            assert fast.stats()["punted"] == base_stats["punted"]  # C knew the endpoint too
            p.ay.sendto(link.forward(_up(b"still forwarded"), time.time()), p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"still forwarded"

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_peer_forwarder_speaks_ayiya_to_a_pop() -> None:
    """The client end in C (PeerForwarder in AYIYA mode) against the PoP's Python link."""

    def scenario() -> None:
        from tunnelbroker.tunnelserver.tun import TunDevice

        iproute_call(lambda ipr: ipr.link("set", index=1, state="up"))
        client = _client_link()
        pop_link = _server_link()
        with (
            TunDevice.open("tbpeer0") as tun,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pop,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        ):
            tun.configure(mtu=1280, addresses=[f"{AY_CLIENT6}/128"])
            tun.add_route(f"{HOST6}/128")
            pop.bind((SERVER4, 0))
            sock.bind((AY_CLIENT4, 0))
            sock.setblocking(False)
            fw = fastpath.PeerForwarder(tun.fds[0], sock, pop.getsockname(), ayiya=client)
            assert isinstance(client.replay, fastpath.EngineReplay)
            fw.start()
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as app:
                    app.bind((AY_CLIENT6, 5000))
                    app.settimeout(5)
                    # Up: from the TUN, a signed Forward from the client's identity.
                    app.sendto(b"up", (HOST6, 7000))
                    # (The kernel's own router solicitations go that way too.)
                    up = recv_from(pop, lambda d: d.endswith(b"up"))
                    got = pop_link.receive(up, time.time())
                    assert isinstance(got, AyiyaPacket) and got.opcode is OpCode.FORWARD
                    assert got.payload[8:24] == ipaddress.IPv6Address(AY_CLIENT6).packed
                    assert got.payload[48:] == b"up"
                    # Down: verified as a client does, into the TUN.
                    down = pop_link.forward(
                        udp6(HOST6, AY_CLIENT6, 7000, 5000, b"down"), time.time()
                    )
                    to = sock.getsockname()
                    pop.sendto(down, to)
                    assert app.recvfrom(100) == (b"down", (HOST6, 7000, 0, 0))
                    pop.sendto(down, to)  # a replay
                    forged = _server_link("another secret").forward(
                        udp6(HOST6, AY_CLIENT6, 7000, 5000, b"forged"), time.time()
                    )
                    pop.sendto(forged, to)
                    # An echo request (and anything not a Forward) is left to a slow path.
                    echo = encode(
                        OpCode.ECHO_REQUEST,
                        NEXT_HEADER_NONE,
                        int(time.time()),
                        pop_link.local,
                        b"",
                        pop_link.key,
                    )
                    pop.sendto(echo, to)
                    punts = wait_for("the punt", lambda: fw.take_punts())
                    assert [(k, d) for k, _, d, *_ in punts] == [(fw.module.PUNT_AYIYA, echo)]
                    drops: Counter[str] = Counter()

                    def dropped() -> bool:
                        drops.update(fw.drops())
                        return drops["BAD_AYIYA"] >= 2

                    wait_for("the drops", dropped)
                    assert drops == {"BAD_AYIYA": 2, "REPLAYED": 1, "BAD_SIGNATURE": 1}
                    app.settimeout(0.2)
                    with pytest.raises(TimeoutError):
                        app.recvfrom(100)
                    stats = fw.stats()
                    # (Out: the router solicitations as well.)
                    assert stats["fast_in"] == 1 and stats["fast_out"] >= 1
            finally:
                fw.stop()

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
def test_a_silent_ayiya_tunnel_stops_in_c_and_comes_back_at_its_next_datagram() -> None:
    def scenario() -> None:
        with plane(ayiya=True) as p:
            link = _client_link()
            second = _whole_second()
            _, fast = _ayiya_up(p, link, second)
            assert p.dp.silence(3600.0) == []
            # (down_after 0: silent already.) C forgets the endpoint with the core.
            assert p.dp.silence(0.0) == [AY_ID]
            assert p.tunnel(AY_ID).remote == ""
            base = p.drops()
            p.host.sendto(b"nowhere", (AY_CLIENT6, 5000))
            wait_for("the drop", lambda: _deltas(p.drops(), base).get(Drop.NO_ENDPOINT) == 1)
            p.ay.settimeout(0.2)
            with pytest.raises(TimeoutError):
                p.ay.recvfrom(2000)
            # The client's next datagram: learnt again (in Python), then C sends to it.
            p.ay.sendto(link.forward(_up(b"back"), second + 1), p.ayiya_to)
            assert p.host.recvfrom(100)[0] == b"back"
            assert p.learned[-1] == (AY_ID, AY_CLIENT4, p.ay.getsockname()[1])
            before = fast.stats()["fast_out"]
            p.host.sendto(b"there", (AY_CLIENT6, 5000))
            got = link.receive(recv_from(p.ay, lambda d: True), time.time())
            assert isinstance(got, AyiyaPacket) and got.payload[48:] == b"there"
            assert fast.stats()["fast_out"] == before + 1

    in_throwaway_netns(scenario)


@needs_netns
@needs_ext
@needs_lanes
def test_an_ayiya_burst_is_verified_and_signed_in_lanes() -> None:
    """A batch of AYIYA datagrams each way is hashed in sixteen-lane SHA-1, with the same
    verdicts, order and signatures as one at a time."""

    def scenario() -> None:
        with plane(ayiya=True) as p:
            link = _client_link()
            _, fast = _ayiya_up(p, link)
            base_ay, base_lanes = p.ayiya_drops(), fast.stats()["sha1_lanes"]
            now = time.time()
            good = [link.forward(_up(b"up %d" % i), now) for i in range(40)]
            forged = _client_link("another secret").forward(_up(b"forged"), now)
            # The engine held, so each burst waits whole in its socket or TUN queue and is read
            # as one batch.
            fast.stop()
            try:
                for datagram in good[:20] + [forged, good[0]] + good[20:]:
                    p.ay.sendto(datagram, p.ayiya_to)
                for i in range(40):
                    p.host.sendto(b"down %d" % i, (AY_CLIENT6, 5000))
            finally:
                fast.start()
            p.host.settimeout(5)
            assert [p.host.recvfrom(100)[0] for _ in range(40)] == [b"up %d" % i for i in range(40)]
            down = [link.receive(recv_from(p.ay, lambda d: True), time.time()) for _ in range(40)]
            assert all(isinstance(d, AyiyaPacket) for d in down)
            assert [d.payload[48:] for d in down if isinstance(d, AyiyaPacket)] == [
                b"down %d" % i for i in range(40)
            ]
            wait_for("the drops", lambda: sum(_deltas(p.ayiya_drops(), base_ay).values()) >= 2)
            assert _deltas(p.ayiya_drops(), base_ay) == {
                AyiyaDrop.BAD_SIGNATURE: 1,
                AyiyaDrop.REPLAYED: 1,
            }
            # 42 verified and 40 signed, all in lanes (fewer than X16_MIN would not be).
            assert fast.stats()["sha1_lanes"] - base_lanes == 82

    in_throwaway_netns(scenario)


_MESSAGE = st.one_of(
    st.tuples(st.binary(max_size=300)),
    st.tuples(st.binary(max_size=70), st.binary(max_size=70)),
    st.tuples(st.binary(max_size=24), st.binary(max_size=20), st.binary(max_size=1500)),
)


@needs_lanes
@settings(max_examples=300, deadline=None)
@given(st.lists(_MESSAGE, max_size=40))
def test_sha1_lanes_is_sha1(messages: list[tuple[bytes, ...]]) -> None:
    module = fastpath.load()
    assert module is not None
    assert module.sha1_lanes(messages) == [hashlib.sha1(b"".join(m)).digest() for m in messages]


@needs_lanes
def test_sha1_lanes_at_every_length_around_the_padding() -> None:
    """Every length from 0 to 200 bytes (the padding takes one block or two, the length field
    lands on each side of a block's end), split into parts at every place a block can meet
    them, in sets of lanes of mixed block counts."""
    module = fastpath.load()
    assert module is not None
    data = bytes(range(256)) * 8
    messages = [
        (data[:cut], data[cut : cut + 20], data[cut + 20 : n]) if n >= cut + 20 else (data[:n],)
        for n in range(201)
        for cut in (0, 24, 55, 56, 64)
    ]
    assert module.sha1_lanes(messages) == [hashlib.sha1(b"".join(m)).digest() for m in messages]
    with pytest.raises(TypeError):
        module.sha1_lanes([("not bytes",)])
    with pytest.raises(TypeError):
        module.sha1_lanes([(b"a", b"b", b"c", b"d")])


# ---------------------------------------------------------------------- without the extension


def test_the_extension_is_built_wherever_it_can_be() -> None:
    """scripts/install builds it (optional in setup.py, so a failed build would pass
    silently): with a compiler, the Python headers and OpenSSL's here, it must be importable,
    or every test above would be skipped and the daemon would forward in Python."""
    import shutil
    import subprocess
    import sysconfig

    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    gcc = shutil.which("gcc")
    if gcc is None or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the pure-Python path is expected")
    # Where the compiler looks, as the build does (AYIYA's SHA-1 is libcrypto's).
    openssl = subprocess.run(
        [gcc, "-E", "-x", "c", "-"],
        input=b"#include <openssl/evp.h>\n",
        capture_output=True,
        timeout=60,
    )
    if openssl.returncode != 0:
        pytest.skip("no OpenSSL headers (libssl-dev) here: the pure-Python path is expected")
    assert fastpath.load() is not None, "pip install -e . did not build _fastpath"


def test_load_warns_once_and_returns_none_without_the_extension(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing() -> Any:
        raise ImportError("No module named 'tunnelbroker.tunnelserver._fastpath'")

    monkeypatch.setattr(fastpath, "_import", missing)
    monkeypatch.setattr(fastpath, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="tunnelbroker.tunnelserver.fastpath"):
        assert fastpath.load() is None
        assert fastpath.load() is None
    warnings = [r for r in caplog.records if "slower" in r.getMessage()]
    assert len(warnings) == 1
    assert "not available" in warnings[0].getMessage()


@needs_netns
def test_the_python_path_forwards_when_the_extension_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> Any:
        raise ImportError("not built")

    monkeypatch.setattr(fastpath, "_import", missing)

    def scenario() -> None:
        with plane() as p:
            assert p.dp.fast is None and not p.adopted
            p.add_udp_tunnel()
            # The listener would hand the data in (it reads the socket itself): do as it does.
            datagram = udp6(UDP_CLIENT6, HOST6, 5000, 7000, b"python")
            p.dp.from_udp(datagram, (UDP_CLIENT4, p.client.getsockname()[1]))
            p.host.settimeout(5)
            assert p.host.recvfrom(100)[0] == b"python"
            p.host.sendto(b"back", (UDP_CLIENT6, 5000))
            recv_from(p.client, _is_udp_payload(b"back"))
            assert (p.tunnel(1).packets_in, p.tunnel(1).packets_out) == (1, 1)

    in_throwaway_netns(scenario)


@needs_netns
def test_fast_path_can_be_switched_off() -> None:
    def scenario() -> None:
        with plane(fast=False) as p:
            assert p.dp.fast is None and not p.adopted

    in_throwaway_netns(scenario)


# ---------------------------------------------------------------------- the tables, without traffic


@pytest.fixture
def idle_fast() -> Iterator[fastpath.FastPath]:
    """An engine that is never started, over a pipe standing in for the TUN."""
    module = fastpath.load()
    if module is None:
        pytest.skip("the C extension is not built")
    r, w = os.pipe()
    try:
        yield fastpath.FastPath(module, r)
    finally:
        os.close(r)
        os.close(w)


def _state(tunnel_id: int, encap: Encap, remote: str, prefix: str) -> TunnelState:
    state = TunnelState(
        tunnel_id=tunnel_id,
        encap=encap,
        remote=remote,
        port=4000 if encap is Encap.V6UDPV4 else None,
        prefixes=[ipaddress.ip_network(prefix)],
        server_inner="2001:db8:8000::1" if encap is not Encap.V4V6 else "100.64.0.2",
        ayiya=_server_link() if encap is Encap.AYIYA else None,
    )
    state._derive()
    return state


def test_tables_follow_install_replace_and_remove(idle_fast: fastpath.FastPath) -> None:
    engine = idle_fast.engine
    idle_fast.install(_state(1, Encap.V6V4, "192.0.2.1", "2001:db8:8000::2/128"))
    idle_fast.install(_state(2, Encap.V6UDPV4, "192.0.2.2", "2001:db8:8001::/64"))
    idle_fast.install(_state(3, Encap.AYIYA, "", "2001:db8:8002::/64"))  # no endpoint yet
    assert engine.stats()["tunnels"] == 3
    idle_fast.install(_state(1, Encap.V6UDPV4, "192.0.2.9", "2001:db8:8000::2/128"))
    assert engine.stats()["tunnels"] == 3  # replaced, not added
    # The same id as v4v6 (IPv4 inside, all punted): the engine forgets the old entry.
    idle_fast.install(_state(2, Encap.V4V6, "2001:db8:1::10", "100.64.0.1/32"))
    assert engine.stats()["tunnels"] == 2
    assert engine.remove_tunnel(1) == (1, 0, 0, 0, 0, 0.0)
    assert engine.remove_tunnel(1) is None
    assert engine.take_counters() == [] and engine.take_drops() == {}
    assert engine.stats()["tunnels"] == 1


def test_thousands_of_tunnels_in_and_out(idle_fast: fastpath.FastPath) -> None:
    engine, m = idle_fast.engine, idle_fast.module
    for i in range(1, 5001):
        prefix = ipaddress.IPv6Address(f"2001:db8:9000:{i:x}::")
        engine.set_tunnel(
            i, m.KIND_V6UDPV4, bytes([198, 18, i >> 8, i & 255]), i, bytes(16), 1280,
            [(prefix.packed, 64), ((prefix + 2).packed, 128)],
        )  # fmt: skip
    assert engine.stats()["tunnels"] == 5000
    for i in range(1, 5001, 2):
        engine.remove_tunnel(i)
    assert engine.stats()["tunnels"] == 2500


def test_bad_tunnel_arguments_are_refused(idle_fast: fastpath.FastPath) -> None:
    engine, m = idle_fast.engine, idle_fast.module
    good: dict[str, Any] = {
        "tunnel_id": 1,
        "kind": m.KIND_V6V4,
        "remote": b"\xc0\0\2\1",
        "port": 0,
        "server_inner": bytes(16),
        "mtu": 1280,
        "prefixes": [(bytes(16), 64)],
    }
    engine.set_tunnel(**good)
    for bad in (
        {"kind": 7},
        {"remote": b"\1\2\3"},
        {"port": 70000},
        {"server_inner": bytes(4)},
        {"prefixes": [(bytes(16), 129)]},
        {"prefixes": [(bytes(4), 32)]},
        {"prefixes": [(bytes(16), 64)] * (m.MAX_PREFIXES + 1)},
        {"sock": 99},
    ):
        with pytest.raises(ValueError):
            engine.set_tunnel(**{**good, **bad})
    with pytest.raises(ValueError):
        engine.remove_udp(99)
    assert engine.stats()["tunnels"] == 1


def _ayiya_args(m: Any, key: bytes = b"k" * 20, remote: bytes = b"") -> dict[str, Any]:
    return {
        "tunnel_id": 1,
        "kind": m.KIND_AYIYA,
        "remote": remote,
        "port": 5072 if remote else 0,
        "server_inner": ipaddress.IPv6Address(AY_SERVER6).packed,
        "mtu": 1280,
        "prefixes": [(ipaddress.IPv6Address(AY_CLIENT6).packed, 128)],
        "identity": ipaddress.IPv6Address(AY_CLIENT6).packed,
        "local": ipaddress.IPv6Address(AY_SERVER6).packed,
        "key": key,
    }


def test_the_ayiya_replay_cache_survives_a_reinstall_with_the_same_key(
    idle_fast: fastpath.FastPath,
) -> None:
    engine, m = idle_fast.engine, idle_fast.module
    engine.set_tunnel(**_ayiya_args(m))
    assert engine.ayiya_replay_state(1) == (None, 0)
    digest = bytes(range(1, 21))
    assert engine.ayiya_replay_check(1, 100, digest, False) == 0
    engine.set_tunnel(**_ayiya_args(m, remote=b"\xc0\0\2\1"))  # same key, an endpoint now
    assert engine.ayiya_replay_state(1) == (100, 1)
    assert engine.ayiya_replay_check(1, 100, digest, False) == 1  # replayed
    assert engine.ayiya_replay_seen(1, digest)
    engine.set_tunnel(**_ayiya_args(m, key=b"n" * 20))  # a new secret: a new cache
    assert engine.ayiya_replay_state(1) == (None, 0) and not engine.ayiya_replay_seen(1, digest)
    assert engine.set_endpoint(1, b"\xc0\0\2\1", 5072)
    assert not engine.set_endpoint(2, b"\xc0\0\2\1", 5072)  # no such tunnel
    engine.remove_tunnel(1)
    with pytest.raises(KeyError):
        engine.ayiya_replay_check(1, 100, digest, False)


def test_engine_replay_falls_back_to_a_cache_of_its_own(idle_fast: fastpath.FastPath) -> None:
    replay = fastpath.EngineReplay(idle_fast.engine, 99)  # the engine has no tunnel 99
    assert replay.newest is None and len(replay) == 0 and replay.slots == 1024
    digest = bytes(range(1, 21))
    assert replay.check_and_record(7, digest) is Verdict.ACCEPTED
    assert replay.check_and_record(7, digest) is Verdict.REPLAYED
    assert replay.newest == 7 and replay.seen(digest) and len(replay) == 1


def test_bad_ayiya_arguments_are_refused(idle_fast: fastpath.FastPath) -> None:
    engine, m = idle_fast.engine, idle_fast.module
    good = _ayiya_args(m)
    for bad in (
        {"identity": bytes(4)},
        {"local": b""},
        {"key": bytes(16)},
        {"remote": b"\1\2"},
        {"clock_window": -1},
    ):
        with pytest.raises(ValueError):
            engine.set_tunnel(**{**good, **bad})
    engine.set_tunnel(**good)
    with pytest.raises(ValueError):
        engine.ayiya_replay_check(1, 1, b"short", False)
    with pytest.raises(ValueError):
        engine.set_endpoint(1, b"\1\2\3", 1)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as six:
        with pytest.raises(ValueError):
            engine.add_ayiya(six.fileno())
        with pytest.raises(ValueError, match="IPv4"):
            engine.add_udp(six.fileno())
    r, w = os.pipe()  # not a socket at all
    try:
        for add in (engine.add_udp, engine.add_ayiya):
            with pytest.raises(OSError):
                add(r)
    finally:
        os.close(r)
        os.close(w)
    assert engine.stats()["tunnels"] == 1


#: Digests that share slots (bytes 8-9), repeat, and one whose key is all zeros.
_DIGESTS = [bytes([a] * 8) + bytes([0, b]) + bytes(10) for a in (0, 1, 2) for b in (0, 1)] + [
    bytes([3] * 8) + bytes([4, 0]) + bytes(10)
]  # slot 0 again, through the 1,024 mask


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=6),
            st.sampled_from(_DIGESTS),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_the_c_replay_cache_decides_as_replay_cache(
    steps: list[tuple[int, bytes, bool]],
) -> None:
    """The engine's cache against the reference (protocols/ayiya/replay.py), step by step."""
    module = fastpath.load()
    if module is None:
        pytest.skip("the C extension is not built")
    r, w = os.pipe()
    try:
        engine = module.Engine(r)
        engine.set_tunnel(**_ayiya_args(module))
        replay = fastpath.EngineReplay(engine, 1)
        reference = ReplayCache()
        for epoch, digest, moving in steps:
            assert replay.check_and_record(epoch, digest, moving) is (
                reference.check_and_record(epoch, digest, moving)
            )
            assert replay.newest == reference.newest
            assert len(replay) == len(reference)
            assert replay.seen(digest) == reference.seen(digest)
    finally:
        os.close(r)
        os.close(w)
