"""The keepalive echo through a tunnel device, seen from the host's side of it.

Where the packets of a tunnel do not pass through Python (a kernel sit or ip6tnl device, or a
TUN served by the C fast path), the keepalive cannot pick its replies out of the packet
stream. It talks through the device instead: :class:`EchoSocket` sends the
:class:`~tunnelbroker.protocols.tsp.keepalive.KeepaliveMachine`'s echoes into it and hands
the replies that come out of it back to the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct

from tunnelbroker.protocols.tsp.keepalive import KeepaliveMachine
from tunnelbroker.tunnelserver.packet import build_ipv6

__all__ = ["EchoSocket", "watch_replies"]

log = logging.getLogger(__name__)

# <linux/icmpv6.h>: the socket option, and the one type we let through it.
_ICMP6_FILTER = 1
_ECHO_REPLY6 = 129
_READ_SIZE = 65535
_BATCH = 64


class EchoSocket:
    """A raw ICMP socket bound to the tunnel device and our tunnel address: the keepalive.

    Why this and not ping(8): the keepalive must behave exactly as in userspace (the echo
    schedule with jitter, 5 s per reply, three misses and the tunnel is renegotiated), and
    :class:`~tunnelbroker.protocols.tsp.keepalive.KeepaliveMachine` is that behaviour, on
    whole packets. This socket sends the machine's very echo into the device (the kernel
    only adds the IP header, as for our raw sockets in userspace) and hands back only
    replies that came out of this device to this address, for the machine to match by
    identifier, sequence and checksum. A ping process would put a subprocess and its output
    between us and the miss count; ping sockets replace the identifier with their own and
    depend on ``net.ipv4.ping_group_range``. And it is testable on any interface, even where
    the kernel has no tunnel drivers (tests/client/test_kernel_client.py uses ``lo``).
    """

    def __init__(self, ifname: str, source: str) -> None:
        self.v6 = ipaddress.ip_address(source).version == 6
        if self.v6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            sock.bind((source, 0))
            if self.v6:
                # Only echo replies (a set bit blocks its type); the machine checks the rest.
                blocked = [0xFFFFFFFF] * 8
                blocked[_ECHO_REPLY6 >> 5] &= ~(1 << (_ECHO_REPLY6 & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *blocked))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.source = ipaddress.ip_address(source).packed

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, pkt: bytes) -> None:
        """Send the machine's echo ``pkt`` (a whole IP packet) without its IP header."""
        if self.v6:
            body, dst = pkt[40:], str(ipaddress.IPv6Address(pkt[24:40]))
        else:
            body, dst = pkt[(pkt[0] & 0x0F) * 4 :], str(ipaddress.IPv4Address(pkt[16:20]))
        try:
            self.sock.sendto(body, (dst, 0))
        except OSError as e:
            log.debug("keepalive echo: %s", e)  # as for a lost one: the machine counts it

    def replies(self) -> list[bytes]:
        """The packets waiting, as whole IP packets (what the machine reads in userspace)."""
        out = []
        for _ in range(_BATCH):
            try:
                data, addr = self.sock.recvfrom(_READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("keepalive socket: %s", e)
                break
            if self.v6:
                # A raw ICMPv6 socket gets the message alone; the header is rebuilt from the
                # source it reports and the address we are bound to.
                src = ipaddress.IPv6Address(addr[0].split("%")[0]).packed
                out.append(build_ipv6(src, self.source, socket.IPPROTO_ICMPV6, data))
            else:
                out.append(data)  # a raw IPv4 socket gets the header too
        return out

    def close(self) -> None:
        self.sock.close()


def watch_replies(echo: EchoSocket, machine: KeepaliveMachine, stack: contextlib.ExitStack) -> None:
    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        for pkt in echo.replies():
            if machine.receive(pkt, loop.time()):
                log.debug("keepalive reply, rtt %.1f ms", (machine.last_rtt or 0) * 1000)

    loop.add_reader(echo.fileno(), on_readable)
    stack.callback(loop.remove_reader, echo.fileno())
