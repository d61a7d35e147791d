"""Runs inside a lab namespace: negotiate a v6udpv4 tunnel, then ping through it by hand.

No TUN on this side: ICMPv6 echo requests are built here and sent bare in UDP on the signalling
flow, as gogoc's data path does (tsp.md §2.6). Prints one JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
import sys

from tunnelbroker.client.tsp import UdpFlow, negotiate
from tunnelbroker.tunnelserver import packet


def echo(src: str, dst: str, seq: int) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    body = struct.pack("!BBHHH", 128, 0, 0, 0x7B, seq) + b"tunnelbroker"
    body = body[:2] + struct.pack("!H", packet.icmpv6_checksum(s, d, body)) + body[4:]
    return packet.build_ipv6(s, d, 58, body)


async def ping(flow: UdpFlow, src: str, dst: str, seq: int) -> bool:
    flow.send(echo(src, dst, seq))
    try:
        async with asyncio.timeout(2):
            while True:
                reply = await flow.recv()
                if (
                    len(reply) > 48
                    and reply[40] == 129
                    and reply[8:24] == (ipaddress.IPv6Address(dst).packed)
                ):
                    return struct.unpack("!H", reply[46:48])[0] == seq
    except TimeoutError:
        return False


async def main(server: str, target: str, tunnel_type: str) -> None:
    n = await negotiate(server, transport="udp", tunnel_type=tunnel_type, timeout=20)
    assert isinstance(n.flow, UdpFlow)
    result = {
        "type": n.tunnel_type,
        "client_ipv6": n.client_ipv6,
        "local": list(n.flow.local),
        "keepalive": await ping(n.flow, n.client_ipv6, n.keepalive_address or "", 1),
        "internet": await ping(n.flow, n.client_ipv6, target, 2),
        # Another client's address as the inner source: the broker must drop it.
        "spoofed": await ping(n.flow, "2001:db8:8000:ffff::2", target, 3),
    }
    n.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
