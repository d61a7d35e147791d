"""The TUN device layer, against the real kernel.

Every device lives in a throwaway network namespace (``in_throwaway_netns``: a thread of its
own in a fresh, unnamed namespace), so the host's interfaces are never touched and nothing
outlives the test even if it is killed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from tests.tunnelserver.netns import needs_netns

from tunnelbroker.tunnelserver.kernel import in_throwaway_netns
from tunnelbroker.tunnelserver.tun import TunDevice, bring_up_link, iproute_call

T = TypeVar("T")

LOCAL = "2001:db8:1::1"
REMOTE_NET = "2001:db8:2::/64"
REMOTE = "2001:db8:2::5"


def in_netns(fn: Callable[[], T]) -> T:
    return in_throwaway_netns(fn)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def _echo_reply(src: str, dst: str, ident: int, seq: int, data: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", 129, 0, 0, ident, seq) + data
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", len(icmp), 58)
    )
    csum = _checksum(pseudo + icmp)
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    return _ipv6(src, dst, 58, icmp)


def _wait_packet(tun: TunDevice, match: Callable[[bytes], bool], fd_index: int = 0) -> bytes:
    """The first packet from queue ``fd_index`` that ``match``es, skipping the kernel's own
    (MLD reports, router solicitations); fails after 5 s."""
    deadline = time.monotonic() + 5
    poller = select.poll()
    poller.register(tun.fds[fd_index], select.POLLIN)
    while time.monotonic() < deadline:
        poller.poll(100)
        for pkt in tun.read_batch(16, fd_index):
            if match(pkt):
                return pkt
    raise AssertionError("no matching packet came out of the TUN within 5 s")


def _is_udp_to(dst: str) -> Callable[[bytes], bool]:
    packed = ipaddress.IPv6Address(dst).packed
    return lambda p: len(p) >= 48 and p[0] >> 4 == 6 and p[6] == 17 and p[24:40] == packed


def test_open_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TunDevice.open("x" * 16)
    with pytest.raises(ValueError):
        TunDevice.open("a/b")
    with pytest.raises(ValueError):
        TunDevice.open("tb%d", queues=2)  # needs multi_queue
    with pytest.raises(ValueError):
        TunDevice.open("tb%d", multi_queue=True, queues=0)


@needs_netns
def test_udp_out_and_icmp_echo_reply_in() -> None:
    def scenario() -> None:
        with TunDevice.open("tbtest%d") as tun:
            assert tun.name.startswith("tbtest")
            assert tun.index == socket.if_nametoindex(tun.name)
            assert tun.read() is None  # nothing yet, and non-blocking
            tun.configure(mtu=1400, addresses=[f"{LOCAL}/64"], up=True)
            tun.configure(mtu=1400, addresses=[f"{LOCAL}/64"], up=True)  # idempotent
            tun.add_route(REMOTE_NET)

            # Out: the kernel routes a UDP datagram into the TUN; we read the bare IPv6 packet.
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"hello tunnel", (REMOTE, 4000))
                sport = udp.getsockname()[1]
            pkt = _wait_packet(tun, _is_udp_to(REMOTE))
            assert pkt[6] == 17  # next header: UDP
            assert ipaddress.IPv6Address(pkt[8:24]) == ipaddress.IPv6Address(LOCAL)
            assert ipaddress.IPv6Address(pkt[24:40]) == ipaddress.IPv6Address(REMOTE)
            assert struct.unpack("!HH", pkt[40:44]) == (sport, 4000)
            assert pkt[48:] == b"hello tunnel"

            # In: an echo reply written into the TUN reaches a raw ICMPv6 socket.
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as raw:
                raw.settimeout(5)
                n = tun.write(_echo_reply(REMOTE, LOCAL, 0x7462, 1, b"ping-data"))
                assert n == 40 + 8 + 9
                while True:
                    data, addr = raw.recvfrom(2048)
                    if data[0] == 129:
                        break
                assert ipaddress.IPv6Address(addr[0].split("%")[0]) == ipaddress.IPv6Address(REMOTE)
                assert struct.unpack("!HH", data[4:8]) == (0x7462, 1)
                assert data[8:] == b"ping-data"

            # Routes can be removed again; removing twice is harmless.
            tun.del_route(REMOTE_NET)
            tun.del_route(REMOTE_NET)
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                with pytest.raises(OSError):
                    udp.sendto(b"x", (REMOTE, 4000))  # no route any more
            name = tun.name
        # Closing the only descriptor removes the interface.
        assert tun.closed
        tun.close()  # idempotent
        with pytest.raises(OSError):
            socket.if_nametoindex(name)

    in_netns(scenario)


@needs_netns
def test_read_into_and_batch() -> None:
    def scenario() -> None:
        with TunDevice.open("tbbatch") as tun:
            assert tun.name == "tbbatch"
            assert tun.read_batch() == []
            tun.configure(mtu=1280, addresses=[f"{LOCAL}/64"])
            tun.add_route(REMOTE_NET)
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                for i in range(10):
                    udp.sendto(bytes([i]) * 100, (REMOTE, 5000))
            time.sleep(0.2)
            got = [p for p in tun.read_batch(64) if _is_udp_to(REMOTE)(p)]
            assert [p[48] for p in got] == list(range(10))
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"z" * 200, (REMOTE, 5000))
            buf = bytearray(2048)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                n = tun.read_into(buf)
                if n is not None and _is_udp_to(REMOTE)(bytes(buf[:n])):
                    assert n == 40 + 8 + 200
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("read_into saw no packet")

    in_netns(scenario)


@needs_netns
def test_configure_from_inside_an_event_loop() -> None:
    """The control plane calls configure() on its asyncio loop; pyroute2 must not clash."""

    def scenario() -> None:
        async def main() -> None:
            with TunDevice.open("tbloop%d") as tun:
                tun.configure(mtu=1300, addresses=["192.0.2.1/24", f"{LOCAL}/64"])
                tun.add_route("198.51.100.0/24")
                # /sys shows the host's namespace, so ask rtnetlink (from the loop, too).
                link = iproute_call(lambda ipr: ipr.link("get", index=tun.index)[0])
                assert link.get("mtu") == 1300
                assert link.get("state") == "up"

        asyncio.run(main())

    in_netns(scenario)


@needs_netns
def test_multi_queue_both_fds_usable() -> None:
    def scenario() -> None:
        with TunDevice.open("tbmq%d", multi_queue=True, queues=2) as tun:
            assert len(tun.fds) == 2
            tun.configure(mtu=1500, addresses=[f"{LOCAL}/64"])
            tun.add_route(REMOTE_NET)
            # The kernel spreads flows over the queues by hash: many flows reach both.
            socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(32)]
            try:
                for s in socks:
                    s.sendto(b"flow", (REMOTE, 6000))
            finally:
                for s in socks:
                    s.close()
            time.sleep(0.2)
            per_queue = [
                [p for p in tun.read_batch(64, q) if _is_udp_to(REMOTE)(p)] for q in (0, 1)
            ]
            assert sum(len(q) for q in per_queue) == 32
            assert all(per_queue), [len(q) for q in per_queue]

            # Writing works on either queue.
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as raw:
                raw.settimeout(5)
                for q in (0, 1):
                    tun.write(_echo_reply(REMOTE, LOCAL, 0x6D71, q, b"q"), fd_index=q)
                seqs: set[int] = set()
                while len(seqs) < 2:
                    data, _ = raw.recvfrom(2048)
                    if data[0] == 129 and struct.unpack("!H", data[4:6])[0] == 0x6D71:
                        seqs.add(struct.unpack("!H", data[6:8])[0])
                assert seqs == {0, 1}

    in_netns(scenario)


@needs_netns
def test_open_failure_closes_what_it_opened() -> None:
    def scenario() -> None:
        with TunDevice.open("tbbusy") as first:
            fds_before = len(os.listdir("/proc/self/fd"))
            # A single-queue TUN with an attached queue cannot be opened twice.
            with pytest.raises(OSError):
                TunDevice.open("tbbusy")
            assert len(os.listdir("/proc/self/fd")) == fds_before
            assert not first.closed

    in_netns(scenario)


@needs_netns
def test_bring_up_link_configures_a_new_device_or_removes_it() -> None:
    """The shared last steps of making a tunnel device (the kernel backends use it)."""
    address = ipaddress.ip_interface("2001:db8:7::1/128")

    def scenario() -> tuple[bool, bool, bool, bool]:
        def make(ipr: Any, name: str) -> int:
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": name + "p"})
            (index,) = ipr.link_lookup(ifname=name)
            return int(index)

        def good(ipr: Any) -> tuple[bool, bool, bool]:
            index = make(ipr, "tbup0")
            bring_up_link(ipr, index, [address], ["2001:db8:70::/48"])
            up = bool(ipr.link("get", index=index)[0]["flags"] & 1)  # IFF_UP
            local = ipr.route("get", dst="2001:db8:7::1")[0]["type"] == 2  # RTN_LOCAL
            route = ipr.route("get", dst="2001:db8:70::5")[0].get_attr("RTA_OIF") == index
            return up, local, route

        def failing(ipr: Any) -> bool:
            index = make(ipr, "tbup1")

            def refuse() -> None:
                raise OSError("prepare failed")

            with pytest.raises(OSError, match="prepare failed"):
                bring_up_link(ipr, index, [address], [], prepare=refuse)
            return not ipr.link_lookup(ifname="tbup1")

        return (*iproute_call(good), iproute_call(failing))

    assert in_throwaway_netns(scenario) == (True, True, True, True)
