"""The TUN device under the userspace data plane.

A TUN device is a network interface whose packets go to and come from a file descriptor:
the kernel routes an IPv6 (or IPv4) packet into it and we ``read`` the bare packet; we
``write`` a packet and the kernel receives it as if it had arrived on that interface.

The device is created with ``TUNSETIFF`` on ``/dev/net/tun`` in the network namespace of the
calling thread, with ``IFF_NO_PI`` (no 4-byte packet-information prefix: every read is
exactly one IP packet). It is not persistent, so the kernel removes it when the last of its
file descriptors is closed. With ``IFF_MULTI_QUEUE`` each queue is its own descriptor,
attached by opening ``/dev/net/tun`` again with the same name; the kernel spreads flows over
the queues, so one forwarding thread per queue scales on more cores.

Addresses, MTU and routes are set over rtnetlink with pyroute2 (:func:`iproute_call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

__all__ = [
    "MAX_PACKET",
    "TunDevice",
    "address_args",
    "iproute_call",
    "off_event_loop",
    "wait_until_local",
]

#: Path of the TUN clone device.
TUN_CLONE_DEVICE = "/dev/net/tun"

# <linux/if_tun.h>: _IOW('T', 202, int), and the ifr_flags bits we use.
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_MULTI_QUEUE = 0x0100
#: Interface names are at most IFNAMSIZ - 1 bytes (the last one is the terminating NUL).
_IFNAMSIZ = 16
_IFA_F_NODAD = 0x02
_RTN_LOCAL = 2
#: Upper bound for the kernel to finish installing new addresses (normally milliseconds).
_ADDRESS_TIMEOUT = 2.0
#: The kernel's limit on queues per TUN device (MAX_TAP_QUEUES).
_MAX_QUEUES = 256
# struct ifreq: char ifr_name[16]; then a union of 24 bytes whose first member is ifr_flags.
_IFREQ = struct.Struct("16sH22x")

#: Bytes asked for per read. The kernel hands a TUN without offloads at most its MTU, which
#: could be raised behind our back; a read shorter than the packet silently truncates it, and
#: asking for the maximum costs next to nothing (os.read shrinks the result to fit).
MAX_PACKET = 65535

T = TypeVar("T")


def _netlink_error(e: NetlinkError, what: str) -> OSError:
    return OSError(e.code, f"{what}: {os.strerror(e.code)}")


def off_event_loop(fn: Callable[[], T]) -> T:
    """Call ``fn()``, on a short-lived helper thread if this thread runs an asyncio loop.

    pyroute2's synchronous API drives an asyncio loop of its own and fails inside a running
    one. A new thread starts in its creator's network namespace, so netlink sockets that
    ``fn`` opens see the same interfaces either way. The caller blocks; these are
    control-path calls.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed back to the caller's thread below
            error.append(e)

    helper = threading.Thread(target=run, name="tb-netlink")
    helper.start()
    helper.join()
    if error:
        raise error[0]
    return result[0]


def address_args(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> dict[str, Any]:
    """pyroute2 ``addr`` arguments for ``iface``.

    IPv6 addresses get IFA_F_NODAD: even on a NOARP device, where no DAD is done, the kernel
    first adds the address as tentative and clears that from a work queue, so a socket that
    sends at once could fail with EADDRNOTAVAIL. Our point-to-point links have no neighbours
    to collide with.
    """
    args: dict[str, Any] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 6:
        args["flags"] = _IFA_F_NODAD
    return args


def wait_until_local(
    ipr: Any,
    addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    timeout: float = _ADDRESS_TIMEOUT,
) -> None:
    """Block until the kernel accepts packets to each of ``addresses`` (on an up link).

    A new IPv6 address, even with IFA_F_NODAD, gets its local route from a work queue a few
    milliseconds later; until then packets to it are dropped (Ip6InAddrErrors). IPv4 ones
    are local at once.

    Raises:
        OSError: ETIMEDOUT after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    for iface in addresses:
        if iface.version != 6:
            continue
        while ipr.route("get", dst=str(iface.ip))[0]["type"] != _RTN_LOCAL:
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, f"{iface.ip} did not become a local address")
            time.sleep(0.001)


def bring_up_link(
    ipr: Any,
    index: int,
    addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    routes: Sequence[str],
    prepare: Callable[[], None] | None = None,
) -> None:
    """Run ``prepare``, set link ``index`` up, give it ``addresses`` and route ``routes``
    through it, once the addresses are local.

    For a tunnel device just made: if any step fails the link is deleted (its addresses and
    routes go with it) and the first error is raised, so nothing is left half made.
    """
    try:
        if prepare is not None:
            prepare()
        ipr.link("set", index=index, state="up")
        for a in addresses:
            ipr.addr("replace", index=index, **address_args(a))
        wait_until_local(ipr, addresses)
        for route in routes:
            ipr.route("replace", dst=route, oif=index)
    except BaseException:
        with contextlib.suppress(NetlinkError):  # keep the first error
            ipr.link("del", index=index)
        raise


def iproute_call(fn: Callable[[Any], T]) -> T:
    """Run ``fn(ipr)`` with a fresh pyroute2 ``IPRoute`` in this thread's network namespace.

    Opening one costs well under a millisecond, less than sharing one safely across threads.
    """

    def run() -> T:
        with IPRoute() as ipr:
            return fn(ipr)

    return off_event_loop(run)


class TunDevice:
    """One TUN interface and its queue file descriptors (non-blocking).

    Attributes:
        name: The interface name the kernel gave it (``%d`` filled in).
        fds: One descriptor per queue; empty once closed.
        index: The interface index.
    """

    __slots__ = ("name", "fds", "index")

    def __init__(self, name: str, fds: list[int], index: int) -> None:
        self.name = name
        self.fds = fds
        self.index = index

    @classmethod
    def open(cls, name: str = "tb%d", *, multi_queue: bool = False, queues: int = 1) -> TunDevice:
        """Create a TUN device (IFF_TUN | IFF_NO_PI) in this thread's network namespace.

        Args:
            name: Interface name; a ``%d`` in it is replaced by the kernel with a free number.
            multi_queue: Create it with IFF_MULTI_QUEUE.
            queues: Number of queue descriptors to open (more than one needs multi_queue).

        Raises:
            ValueError: A bad name or queue count.
            OSError: From the kernel: no /dev/net/tun, no permission (needs CAP_NET_ADMIN),
                the name is taken by another kind of device or by a busy TUN (EBUSY).
        """
        raw = name.encode()
        if not raw or len(raw) >= _IFNAMSIZ or b"/" in raw or b"\0" in raw:
            raise ValueError(f"invalid interface name {name!r}")
        if not 1 <= queues <= _MAX_QUEUES:
            raise ValueError(f"queues must be 1..{_MAX_QUEUES}, not {queues}")
        if queues > 1 and not multi_queue:
            raise ValueError("more than one queue needs multi_queue=True")
        flags = _IFF_TUN | _IFF_NO_PI | (_IFF_MULTI_QUEUE if multi_queue else 0)
        fds: list[int] = []
        try:
            for _ in range(queues):
                fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                fds.append(fd)
                # The first TUNSETIFF resolves "%d"; later queues attach to that exact name.
                ifr = fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(raw, flags))
                raw = _IFREQ.unpack(ifr)[0].rstrip(b"\0")
            actual = raw.decode()
            return cls(actual, fds, socket.if_nametoindex(actual))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            e.add_note(f"while creating TUN device {name!r} via {TUN_CLONE_DEVICE}")
            raise

    # ------------------------------------------------------------------ packets (hot path)

    def read(self, fd_index: int = 0) -> bytes | None:
        """One packet from queue ``fd_index``, or None when none is waiting."""
        try:
            return os.read(self.fds[fd_index], MAX_PACKET)
        except BlockingIOError:
            return None

    def read_batch(self, max_packets: int = 64, fd_index: int = 0) -> list[bytes]:
        """Up to ``max_packets`` packets from queue ``fd_index``, stopping when none is left."""
        fd = self.fds[fd_index]
        size = MAX_PACKET
        read = os.read
        out: list[bytes] = []
        append = out.append
        try:
            for _ in range(max_packets):
                append(read(fd, size))
        except BlockingIOError:
            pass
        return out

    def read_into(self, buffer: bytearray | memoryview, fd_index: int = 0) -> int | None:
        """Read one packet into ``buffer`` (no allocation); its length, or None if none waits.

        The buffer must hold at least the device MTU, or the packet is truncated.
        """
        try:
            return os.readv(self.fds[fd_index], [buffer])
        except BlockingIOError:
            return None

    def write(self, pkt: bytes | bytearray | memoryview, fd_index: int = 0) -> int:
        """Hand one IP packet to the kernel as if it arrived on this interface.

        Raises:
            OSError: EIO while the interface is down, EINVAL for a malformed packet.
        """
        return os.write(self.fds[fd_index], pkt)

    def fileno(self) -> int:
        """The first queue's descriptor (for selectors)."""
        return self.fds[0]

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every queue; the kernel then removes the interface. Idempotent."""
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return not self.fds

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TunDevice {self.name} index={self.index} queues={len(self.fds)}>"

    # ------------------------------------------------------------------ configuration

    def configure(self, mtu: int, addresses: Sequence[str] = (), up: bool = True) -> None:
        """Set the MTU, bring the link up (if ``up``) and add ``addresses`` (CIDR strings).

        Addresses already present are kept (``replace``), so configuring twice is harmless.
        With ``up``, the addresses are usable as soon as this returns (see
        :func:`address_args` and :func:`wait_until_local`).

        Raises:
            ValueError: An address is not in CIDR form.
            OSError: From rtnetlink.
        """
        parsed = [ipaddress.ip_interface(a) for a in addresses]

        def run(ipr: Any) -> None:
            try:
                ipr.link("set", index=self.index, mtu=mtu)
                if up:
                    ipr.link("set", index=self.index, state="up")
                for iface in parsed:
                    ipr.addr("replace", index=self.index, **address_args(iface))
                if up:
                    wait_until_local(ipr, parsed)
            except NetlinkError as e:
                raise _netlink_error(e, f"configuring {self.name}") from e

        iproute_call(run)

    def add_route(self, prefix: str, via: str | None = None) -> None:
        """Route ``prefix`` (IPv6 or IPv4, CIDR) into this device, optionally via a gateway.

        Uses ``replace``: an existing route to the same prefix is taken over.
        """
        net = ipaddress.ip_network(prefix)

        def run(ipr: Any) -> None:
            try:
                ipr.route("replace", dst=str(net), oif=self.index, gateway=via)
            except NetlinkError as e:
                raise _netlink_error(e, f"route {net} dev {self.name}") from e

        iproute_call(run)

    def del_route(self, prefix: str) -> None:
        """Remove the route to ``prefix`` through this device; absent routes are ignored."""
        net = ipaddress.ip_network(prefix)

        def run(ipr: Any) -> None:
            try:
                ipr.route("del", dst=str(net), oif=self.index)
            except NetlinkError as e:
                if e.code != errno.ESRCH:
                    raise _netlink_error(e, f"deleting route {net} dev {self.name}") from e

        iproute_call(run)
