"""A UDP endpoint that answers from the address each datagram was sent to.

A socket bound to ``0.0.0.0`` or ``::`` lets the kernel pick the source of every reply by route,
which on a host with several addresses may not be the address the client targeted; gogoc's
connected UDP socket then drops the reply (tsp.md §2.3). With IP_PKTINFO / IPV6_RECVPKTINFO the
destination of each datagram is known and the reply is sent from it. It also drains up to
``_BATCH`` datagrams per wake-up, which asyncio's own datagram transport does one at a time.

With a ``data_sink`` (the tunnel server, for v6udpv4) the socket is read by a thread of its
own instead of the event loop: datagrams whose first nibble is 6 (tunnelled IPv6) go straight
to the sink from that thread, and only signalling is handed to the loop. Forwarding then never
waits for a busy loop (TSP sign-ups, the web, the database).

With a ``reader`` that adopts the socket (the tunnel server's C fast path) no Python thread
reads it at all: the reader forwards the data itself and hands signalling back in batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
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


#: A datagram handed back by a reader: (data, source, our address or None).
Datagram = tuple[bytes, tuple[str, int], str | None]


class UdpReader(Protocol):
    """Something that reads a UDP socket on a thread of its own (the C fast path)."""

    def adopt_udp(self, sock: socket.socket, deliver: Callable[[list[Datagram]], None]) -> bool:
        """Read ``sock`` from now on and pass what is not tunnelled data to ``deliver`` (from
        any thread). False: not taken, the endpoint reads it itself."""

    def release_udp(self, sock: socket.socket) -> None:
        """Stop reading ``sock``; it is closed right after this returns."""


class DatagramReceiver(Protocol):
    def datagram_received_on(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        """A datagram from ``addr`` to our address ``local`` (None if unknown)."""


class PktinfoEndpoint:
    """Reads datagrams with their destination address; sends from a chosen source."""

    def __init__(
        self,
        sock: socket.socket,
        receiver: DatagramReceiver,
        data_sink: Callable[[bytes, tuple[str, int]], None] | None = None,
        reader: UdpReader | None = None,
    ) -> None:
        self._sock = sock
        self._receiver = receiver
        self._family = sock.family
        self._closed = False
        if self._family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._loop = asyncio.get_running_loop()
        self.send_errors = 0
        self._sink = data_sink
        self._thread: threading.Thread | None = None
        self._reader: UdpReader | None = None
        if reader is not None and reader.adopt_udp(sock, self._from_reader):
            self._reader = reader
        elif data_sink is None:
            self._loop.add_reader(sock.fileno(), self._readable)
        else:
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._read_thread, name=f"udp-{sock.getsockname()[1]}", daemon=True
            )
            self._thread.start()

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
        if self._reader is not None:
            self._reader.release_udp(self._sock)
        elif self._thread is None:
            self._loop.remove_reader(self._sock.fileno())
        else:
            os.write(self._wake_w, b"x")
            self._thread.join(5)
            os.close(self._wake_r)
            os.close(self._wake_w)
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
            got = self._receive()
            if got is None:
                return
            if not isinstance(got, tuple):
                continue  # an error, not the end
            data, addr, local = got
            self._receiver.datagram_received_on(data, addr, local)
            if self._closed:
                return

    def _receive(self) -> tuple[bytes, tuple[str, int], str | None] | bool | None:
        """One datagram with its destination; None when drained, False after an error."""
        try:
            data, ancdata, _flags, addr = self._sock.recvmsg(65535, _ANC)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            # ICMP errors surface here (port unreachable from an earlier send): not fatal.
            log.debug("udp receive: %s", e)
            return False
        local = None
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                local = socket.inet_ntoa(_IN_PKTINFO.unpack(value[: _IN_PKTINFO.size])[2])
            elif level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO:
                raw = _IN6_PKTINFO.unpack(value[: _IN6_PKTINFO.size])[0]
                local = socket.inet_ntop(socket.AF_INET6, raw)
        return data, (addr[0], addr[1]), local

    def _read_thread(self) -> None:
        """Tunnelled IPv6 to the sink from here; signalling to the loop, a batch at a time."""
        sink = self._sink
        assert sink is not None
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closed:
            ready = {fd for fd, _ in poller.poll(1000)}
            if self._wake_r in ready:
                return
            signalling: list[tuple[bytes, tuple[str, int], str | None]] = []
            for _ in range(_BATCH):
                got = self._receive()
                if got is None:
                    break
                if not isinstance(got, tuple):
                    continue
                data = got[0]
                if data and data[0] >> 4 == 6:
                    try:
                        sink(data, got[1])
                    except Exception:
                        log.exception("v6udpv4 data handler failed")
                else:
                    signalling.append(got)
            if signalling and not self._closed:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, signalling)
                except RuntimeError:
                    return  # the loop is closed: we are shutting down

    def _from_reader(self, batch: list[Datagram]) -> None:
        """Signalling from the adopting reader's thread: on to the loop."""
        if self._closed:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    def _deliver(self, batch: list[tuple[bytes, tuple[str, int], str | None]]) -> None:
        for data, addr, local in batch:
            if self._closed:
                return
            self._receiver.datagram_received_on(data, addr, local)
