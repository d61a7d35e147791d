"""A SixXS tunnel's interface and AYIYA receive path, on a real TUN in a throwaway namespace.

Each test runs :func:`~tunnelbroker.client.dataplane.run_tunnel` in a network namespace of
its own (only ``lo`` in it) against a hand-made PoP on loopback: a UDP socket on port 5072
for AYIYA, a raw protocol-41 socket for 6in4. The PoP sends an ICMPv6 echo request to the
client's tunnel address; the kernel behind the TUN answers, and the reply coming back out of
the tunnel shows that the request reached the TUN. Both the C fast path (where it is built)
and the Python path are run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tunnelbroker.client.dataplane import STOPPED, DataPlane, run_tunnel
from tunnelbroker.client.sixxs import as_negotiated
from tunnelbroker.client.tsp import Negotiated
from tunnelbroker.protocols.ayiya import (
    NEXT_HEADER_IPV6,
    AyiyaPacket,
    OpCode,
    decode,
    encode,
    signing_key,
)
from tunnelbroker.protocols.tic import TicTunnel
from tunnelbroker.tunnelserver import fastpath
from tunnelbroker.tunnelserver.kernel import in_throwaway_netns
from tunnelbroker.tunnelserver.packet import build_ipv6, icmpv6_checksum
from tunnelbroker.tunnelserver.tun import iproute_call

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a TUN in a network namespace"),
]

SECRET = "tunnelpw"
CLIENT6 = ipaddress.IPv6Address("2001:db8:1:1::2")
POP6 = ipaddress.IPv6Address("2001:db8:1:1::1")
POP4, CLIENT4 = "127.0.0.2", "127.0.0.1"
#: Long enough that no keepalive is missed while a test runs.
INTERVAL = 60
#: How long a reply may take to come back out of the tunnel.
WAIT = 3.0

FAST_PATHS = [
    pytest.param(
        True,
        id="c-fast-path",
        marks=pytest.mark.skipif(fastpath.load() is None, reason="the C fast path is not built"),
    ),
    pytest.param(False, id="python"),
]


def sixxs_tunnel(kind: str, mtu: int, prefix_length: int = 64) -> Negotiated:
    tunnel = TicTunnel(
        tunnel_id="T1",
        type=kind,
        ipv6_endpoint=str(CLIENT6),
        ipv6_pop=str(POP6),
        ipv6_prefix_length=prefix_length,
        pop_id="pop01",
        ipv4_endpoint="ayiya" if kind == "ayiya" else "heartbeat",
        ipv4_pop=POP4,
        password=SECRET,
        heartbeat_interval=INTERVAL,
        mtu=mtu,
    )
    return as_negotiated("pop", tunnel, CLIENT4)


def echo_request(
    ident: int, seq: int, src: bytes = POP6.packed, dst: bytes = CLIENT6.packed
) -> bytes:
    body = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"sixxs" * 8
    body = body[:2] + icmpv6_checksum(src, dst, body).to_bytes(2, "big") + body[4:]
    return build_ipv6(src, dst, 58, body)


def echo_reply_of(pkt: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMPv6 echo reply from the client to the PoP, else None."""
    if len(pkt) < 48 or pkt[0] >> 4 != 6 or pkt[6] != 58 or pkt[40] != 129:
        return None
    if pkt[8:24] != CLIENT6.packed or pkt[24:40] != POP6.packed:
        return None
    ident, seq = struct.unpack("!HH", pkt[44:48])
    return ident, seq


def in_namespace(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` on an event loop in a new network namespace with ``lo`` up."""

    def run() -> None:
        iproute_call(lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up"))
        asyncio.run(scenario())

    in_throwaway_netns(run)


class Tunnel:
    """``run_tunnel`` as a task, up once ``on_up`` was called."""

    def __init__(self, n: Negotiated, fast: bool, backend: DataPlane = "userspace") -> None:
        self.n = n
        self.stop = asyncio.Event()
        self.up = asyncio.Event()
        self.task = asyncio.create_task(
            run_tunnel(
                n,
                stop=self.stop,
                on_up=lambda _: self.up.set(),
                fast_path=fast,
                rand=lambda: 1.0,
                backend=backend,
            )
        )

    async def started(self) -> None:
        up = asyncio.create_task(self.up.wait())
        await asyncio.wait([up, self.task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # raises what stopped it
        assert self.up.is_set(), "the tunnel did not come up in 10 s"

    async def stopped(self) -> str:
        self.stop.set()
        return await asyncio.wait_for(self.task, 10)


def interface(name: str = "tbc0") -> dict[str, Any]:
    """MTU, IPv6 addresses (with prefix lengths) and the route to the PoP's address."""

    def look(ipr: Any) -> dict[str, Any]:
        (index,) = ipr.link_lookup(ifname=name)
        link = ipr.link("get", index=index)[0]
        addresses = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=socket.AF_INET6, index=index)
            if a["scope"] == 0  # global; the kernel adds a link-local of its own
        }
        pop_route = ipr.route("get", dst=str(POP6))[0].get_attr("RTA_OIF")
        other_route = ipr.route("get", dst="2001:db8:ffff::1")[0].get_attr("RTA_OIF")
        return {
            "mtu": link.get_attr("IFLA_MTU"),
            "addresses": addresses,
            "routes": (pop_route == index, other_route == index),
        }

    return iproute_call(look)


# ------------------------------------------------------------------------------ AYIYA


class Pop:
    """The PoP's AYIYA socket on 127.0.0.2:5072: signs what it sends, decodes what it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((POP4, 5072))
        self.sock.setblocking(False)
        self.key = signing_key(SECRET)
        self.client: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def datagram(self, opcode: OpCode, payload: bytes, key: bytes | None = None) -> bytes:
        return encode(opcode, NEXT_HEADER_IPV6, int(time.time()), POP6, payload, key or self.key)

    async def receive(self, timeout: float = WAIT) -> AyiyaPacket | None:
        """The next datagram from the client, decoded, or None after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        try:
            data, self.client = await asyncio.wait_for(
                loop.sock_recvfrom(self.sock, 65535), timeout
            )
        except TimeoutError:
            return None
        got = decode(data)
        assert isinstance(got, AyiyaPacket), got
        assert got.identity == CLIENT6
        return got

    async def send(self, datagram: bytes) -> None:
        assert self.client is not None, "the client has not beaten yet"
        await asyncio.get_running_loop().sock_sendto(self.sock, datagram, self.client)

    async def replies(
        self, timeout: float = WAIT, until: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """The echo replies that come out of the tunnel within ``timeout`` seconds (or until
        the reply ``until``)."""
        found = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = await self.receive(left)
            if got is None:
                break
            if got.opcode is OpCode.FORWARD and (reply := echo_reply_of(got.payload)):
                found.append(reply)
                if reply == until:
                    break
        return found


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_ayiya_interface_and_what_reaches_the_tun(fast: bool) -> None:
    async def scenario() -> None:
        pop = Pop()
        tunnel = Tunnel(sixxs_tunnel("ayiya", mtu=1400), fast)
        try:
            await tunnel.started()
            # The interface as AICCU sets it up: Tunnel MTU, address/IPv6 PrefixLength; the
            # PoP's address is on-link through it and everything else routed into it.
            seen = interface()
            assert seen["mtu"] == 1400
            assert seen["addresses"] == {f"{CLIENT6}/64"}
            assert seen["routes"] == (True, True)

            # The beat (a NOOP) tells the PoP where the client is; the kernel's own packets
            # (router solicitations) may come first.
            opcodes: list[OpCode] = []
            while OpCode.NOOP not in opcodes and len(opcodes) < 10:
                beat = await pop.receive()
                assert beat is not None, f"no NOOP from the client, only {opcodes}"
                opcodes.append(beat.opcode)
            assert OpCode.NOOP in opcodes

            # Forward, Echo Request and Echo Request and Forward: each payload reaches the TUN
            # and the kernel answers it through the tunnel.
            for seq, opcode in enumerate(
                (OpCode.FORWARD, OpCode.ECHO_REQUEST, OpCode.ECHO_REQUEST_FORWARD), 1
            ):
                await pop.send(pop.datagram(opcode, echo_request(0x5158, seq)))
                assert await pop.replies(until=(0x5158, seq)) == [(0x5158, seq)], opcode

            # The same checks as for a Forward: a wrong signature, then a replay, reach nothing.
            await pop.send(pop.datagram(OpCode.ECHO_REQUEST, echo_request(0x5158, 10), bytes(20)))
            good = pop.datagram(OpCode.ECHO_REQUEST, echo_request(0x5158, 11))
            await pop.send(good)
            await pop.send(good)
            assert await pop.replies(until=(0x5158, 11)) == [(0x5158, 11)]
            # An echo request with nothing inside is accepted and delivers nothing.
            empty = encode(OpCode.ECHO_REQUEST, 59, int(time.time()), POP6, b"", pop.key)
            await pop.send(empty)
            assert await pop.replies(1.0) == []  # nor does the replay above, after all
        finally:
            reason = await tunnel.stopped()
            pop.close()
        assert reason == STOPPED

    in_namespace(scenario)


def test_ayiya_mtu_out_of_range_is_clamped_and_prefix_length_used() -> None:
    async def scenario() -> None:
        pop = Pop()
        tunnel = Tunnel(sixxs_tunnel("ayiya", mtu=9000, prefix_length=112), False)
        try:
            await tunnel.started()
            seen = interface()
            assert seen["mtu"] == 1480
            assert seen["addresses"] == {f"{CLIENT6}/112"}
        finally:
            await tunnel.stopped()
            pop.close()

    in_namespace(scenario)


# ------------------------------------------------------------------------------ 6in4-heartbeat


async def heartbeat_scenario(fast: bool, backend: DataPlane = "userspace") -> None:
    """A 6in4-heartbeat tunnel (MTU 1480, /64) against a raw protocol-41 PoP on 127.0.0.2:
    the interface as TIC describes it, and an echo request from the PoP answered through it.

    Also the guest side of tests/client/test_sixxs_kernel.py (``backend="kernel"``: sit).
    """
    loop = asyncio.get_running_loop()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 41)
    raw.bind((POP4, 0))
    raw.setblocking(False)
    tunnel = Tunnel(sixxs_tunnel("6in4-heartbeat", mtu=1480), fast, backend)
    try:
        await tunnel.started()
        seen = interface()
        assert seen["mtu"] == 1480, seen
        assert seen["addresses"] == {f"{CLIENT6}/64"}, seen
        assert seen["routes"] == (True, True), seen
        # A 6in4 echo request from the PoP; the reply comes back as 6in4.
        raw.sendto(echo_request(0x6464, 1), (CLIENT4, 0))
        deadline = time.monotonic() + WAIT
        reply = None
        while reply is None and (left := deadline - time.monotonic()) > 0:
            try:
                outer = await asyncio.wait_for(loop.sock_recv(raw, 65535), left)
            except TimeoutError:
                break
            ihl = (outer[0] & 15) * 4
            if outer[12:16] == socket.inet_aton(CLIENT4):
                reply = echo_reply_of(outer[ihl:])
        assert reply == (0x6464, 1)
    finally:
        reason = await tunnel.stopped()
        raw.close()
    assert reason == STOPPED


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_heartbeat_interface_and_traffic(fast: bool) -> None:
    in_namespace(lambda: heartbeat_scenario(fast))
