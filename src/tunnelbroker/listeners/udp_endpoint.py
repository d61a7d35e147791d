"""A UDP endpoint that answers from the address each datagram was sent to.

A socket bound to ``0.0.0.0`` or ``::`` lets the kernel pick the source of every reply by route,
which on a host with several addresses may not be the address the client targeted; gogoc's
connected UDP socket then drops the reply (tsp.md §2.3). With IP_PKTINFO / IPV6_RECVPKTINFO the
destination of each datagram is known and the reply is sent from it. It also drains up to
``_BATCH`` datagrams per wake-up, which asyncio's own datagram transport does one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Protocol

log = logging.getLogger(__name__)

_BATCH = 64
_ANC = socket.CMSG_SPACE(32)
# struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
_IN_PKTINFO = struct.Struct("@i4s4s")
# struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
_IN6_PKTINFO = struct.Struct("@16sI")
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


class DatagramReceiver(Protocol):
    def datagram_received_on(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        """A datagram from ``addr`` to our address ``local`` (None if unknown)."""


class PktinfoEndpoint:
    """Reads datagrams with their destination address; sends from a chosen source."""

    def __init__(self, sock: socket.socket, receiver: DatagramReceiver) -> None:
        self._sock = sock
        self._receiver = receiver
        self._family = sock.family
        self._closed = False
        if self._family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.send_errors = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def get_protocol(self) -> DatagramReceiver:
        return self._receiver

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        lost = getattr(self._receiver, "connection_lost", None)
        if lost is not None:
            lost(None)

    def sendto(self, data: bytes, addr: tuple[str, int], local: str | None = None) -> None:
        """Send ``data`` to ``addr`` from ``local`` (the kernel's choice when None)."""
        if self._closed:
            return
        anc = []
        if local is not None:
            if self._family == socket.AF_INET6:
                info = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, local), 0)
                anc = [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, info)]
            else:
                info = _IN_PKTINFO.pack(0, socket.inet_aton(local), b"\0\0\0\0")
                anc = [(socket.IPPROTO_IP, _IP_PKTINFO, info)]
        try:
            self._sock.sendmsg([data], anc, 0, addr)
        except (BlockingIOError, InterruptedError):
            # UDP has no backpressure worth queueing for: the client retransmits.
            self.send_errors += 1
        except OSError as e:
            self.send_errors += 1
            log.debug("udp send to %s failed: %s", addr, e)

    def _readable(self) -> None:
        for _ in range(_BATCH):
            try:
                data, ancdata, _flags, addr = self._sock.recvmsg(65535, _ANC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # ICMP errors surface here (port unreachable from an earlier send): not fatal.
                log.debug("udp receive: %s", e)
                continue
            local = None
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                    local = socket.inet_ntoa(_IN_PKTINFO.unpack(value[: _IN_PKTINFO.size])[2])
                elif level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO:
                    raw = _IN6_PKTINFO.unpack(value[: _IN6_PKTINFO.size])[0]
                    local = socket.inet_ntop(socket.AF_INET6, raw)
            self._receiver.datagram_received_on(data, (addr[0], addr[1]), local)
            if self._closed:
                return
