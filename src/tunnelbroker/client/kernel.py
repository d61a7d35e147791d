"""The client's kernel data plane: a negotiated tunnel as a sit or ip6tnl device.

Where the kernel has the tunnel drivers, ``tunnelbroker client --up`` lets it carry the
packets, and none passes through Python. The device is made over rtnetlink with pyroute2
and gets what the userspace TUN gets (:mod:`tunnelbroker.client.dataplane`):

* **v6v4** (TSP) and **heartbeat** (SixXS 6in4-heartbeat): a ``sit`` device from our IPv4
  address to the server's, TTL 255. The kernel applies RFC 4213 §3.6's ingress check itself
  (only protocol-41 packets from the server's address and to ours enter the device).
* **v4v6**: an ``ip6tnl`` device in mode ipip6 (IPv4 inside IPv6) from our IPv6 address to
  the server's, without the encapsulation-limit option, so its packets look like the
  userspace plane's (and the broker's own kernel backend's).
* Either way: the client's tunnel address as a /128 (a /32 for v4v6), MTU 1280, and the
  routes ``::/0`` (or ``0.0.0.0/1`` and ``128.0.0.0/1``) through the device. A SixXS tunnel
  (heartbeat, or static 6in4 from TIC) gets TIC's ``Tunnel MTU`` and ``IPv6 PrefixLength``
  instead, as AICCU's ``ip link set mtu`` and ``ip -6 addr add`` (sixxs.md §5.2). Removing
  the device removes its address and routes.

**v6udpv4 and AYIYA stay in userspace.** IPv6 in UDP needs the ``fou`` module and a UDP
port of its own for the kernel's receiving socket, while the broker expects the tunnel on
the very port of our signalling flow, which that flow holds; AYIYA's signed framing has no
kernel driver at all.

Everything around the packets is the userspace plane's own code, not a copy: the keepalive
(:class:`~tunnelbroker.protocols.tsp.keepalive.KeepaliveMachine` and its driver), the SixXS
heartbeat sender, router mode, the watch on our IPv4 source address, and the reconnect loop
with its backoff (:func:`~tunnelbroker.client.dataplane.run_client`, which calls
:func:`run_kernel_tunnel` through ``run_tunnel(backend="kernel")``).

What the kernel offers is found out by :func:`~tunnelbroker.tunnelserver.kernel.detect_features`,
the tunnel server's probe; :class:`BackendChooser` turns it into the choice of
``--backend auto|kernel|userspace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2.ethtool.ioctl import (  # type: ignore[import-untyped]
    EthtoolError,
    IoctlEthtool,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from tunnelbroker.client.dataplane import (
    DEFAULT_ROUTE,
    V4V6_ROUTES,
    DataPlane,
    _cancel_all,
    _keepalive_machine,
    _quietly,
    _start_heartbeats,
    _start_keepalive,
    _start_source_watch,
    _until_ended,
    _use_prefix,
    interface_address,
    interface_mtu,
)
from tunnelbroker.client.echo import EchoSocket, watch_replies
from tunnelbroker.client.tsp import Negotiated
from tunnelbroker.tunnelserver.kernel import KernelFeatures, detect_features
from tunnelbroker.tunnelserver.tun import bring_up_link, iproute_call

__all__ = [
    "BACKENDS",
    "KERNEL_DEVICES",
    "USERSPACE_ONLY",
    "BackendChooser",
    "KernelUnavailable",
    "kernel_problems",
    "run_kernel_tunnel",
]

log = logging.getLogger(__name__)

#: The values of ``--backend``.
BACKENDS = ("auto", "kernel", "userspace")
#: The tunnel types the kernel carries, and the device kind (a
#: :class:`~tunnelbroker.tunnelserver.kernel.KernelFeatures` field) each needs.
KERNEL_DEVICES: dict[str, str] = {"v6v4": "sit", "heartbeat": "sit", "v4v6": "ip6tnl"}
#: Tunnel types only the userspace data plane carries, and why.
USERSPACE_ONLY: dict[str, str] = {
    "v6udpv4": "IPv6 in UDP needs fou and a UDP port of its own, but the broker sends the "
    "tunnel to our signalling flow's port",
    "ayiya": "the kernel has no driver for AYIYA's signed framing",
}
#: Which type a requested one may become, for the check before negotiating (v6anyv4 is v6v4
#: without a NAT; behind one it becomes v6udpv4, refused only once granted).
_REQUESTED_AS = {"v6anyv4": "v6v4"}
#: Outer TTL (hop limit) of our tunnel packets: a fixed one, as ``ip tunnel ... ttl 255``;
#: 0 would copy the inner one, which may be 1.
OUTER_TTL = 255

_IPPROTO_IPIP = 4
# <linux/ip6_tunnel.h>: don't insert the tunnel encapsulation limit destination option.
_IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1


class KernelUnavailable(Exception):
    """``--backend kernel``, and the kernel cannot carry the tunnel.

    Attributes:
        tunnel_type: The tunnel type in question.
        missing: One human-readable line per missing piece (``sit: not available ...``).
    """

    def __init__(self, tunnel_type: str, missing: list[str]) -> None:
        self.tunnel_type = tunnel_type
        self.missing = missing
        super().__init__(
            f"the kernel data plane cannot carry a {tunnel_type} tunnel here:\n"
            + "\n".join(f"  {m}" for m in missing)
        )


def _beyond_any_kernel(tunnel_type: str) -> list[str]:
    """Why no kernel device carries a ``tunnel_type`` tunnel here; [] for those that do."""
    if tunnel_type in USERSPACE_ONLY:
        return [f"{tunnel_type}: carried in userspace only ({USERSPACE_ONLY[tunnel_type]})"]
    if tunnel_type not in KERNEL_DEVICES:
        return [f"{tunnel_type}: not a tunnel type this client runs"]
    return []


def kernel_problems(tunnel_type: str, features: KernelFeatures) -> list[str]:
    """Why the kernel cannot carry a ``tunnel_type`` tunnel, one line each; [] if it can."""
    return _beyond_any_kernel(tunnel_type) or features.missing([KERNEL_DEVICES[tunnel_type]])


class BackendChooser:
    """Where each tunnel runs, for ``--backend auto|kernel|userspace``.

    ``auto`` takes the kernel where it has the device the tunnel type needs, and userspace
    otherwise; ``kernel`` takes it or refuses (:class:`KernelUnavailable`); ``userspace``
    never looks. The kernel is probed once, when the first tunnel could use it, with
    ``detect`` (:func:`~tunnelbroker.tunnelserver.kernel.detect_features`); it runs in a
    throwaway network namespace and leaves nothing behind.

    Raises:
        ValueError: ``requested`` is not one of :data:`BACKENDS`.
    """

    def __init__(
        self, requested: str, detect: Callable[[], KernelFeatures] = detect_features
    ) -> None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown data plane backend {requested!r}")
        self.requested = requested
        self._detect = detect
        self._features: KernelFeatures | None = None

    async def features(self) -> KernelFeatures:
        """What the kernel offers (probed on first use, off the event loop)."""
        if self._features is None:
            self._features = await asyncio.to_thread(self._detect)
        return self._features

    async def precheck(self, requested_type: str | None) -> None:
        """Before negotiating: refuse at once what ``kernel`` could never carry.

        Does nothing unless the backend is ``kernel`` and ``requested_type`` (the TSP type
        asked for; None for TIC, whose type comes with the tunnel) tells.

        Raises:
            KernelUnavailable: With every missing piece.
        """
        if self.requested != "kernel" or requested_type is None:
            return
        tunnel_type = _REQUESTED_AS.get(requested_type, requested_type)
        problems = _beyond_any_kernel(tunnel_type) or kernel_problems(
            tunnel_type, await self.features()
        )
        if problems:
            raise KernelUnavailable(tunnel_type, problems)

    async def choose(self, tunnel_type: str) -> DataPlane:
        """The data plane for a granted ``tunnel_type`` tunnel; logs the choice and why.

        Raises:
            KernelUnavailable: ``kernel`` was asked for and the kernel cannot carry it.
        """
        if self.requested == "userspace":
            return "userspace"
        # A type no kernel carries needs no probe.
        problems = _beyond_any_kernel(tunnel_type) or kernel_problems(
            tunnel_type, await self.features()
        )
        if not problems:
            log.info(
                "data plane: kernel for this %s tunnel (%s device; %s)",
                tunnel_type,
                KERNEL_DEVICES[tunnel_type],
                "the kernel has it" if self.requested == "auto" else "as asked",
            )
            return "kernel"
        if self.requested == "kernel":
            raise KernelUnavailable(tunnel_type, problems)
        log.info(
            "data plane: userspace for this %s tunnel, the kernel cannot carry it: %s",
            tunnel_type,
            "; ".join(problems),
        )
        return "userspace"


# --------------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------------


def _our_address(family: int, announced: str, fallback: str) -> str:
    """``announced`` if it is an address of this host, else ``fallback``.

    The same rule as the userspace plane's raw socket: an address announced by hand may not
    be ours; the signalling socket's is.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((announced, 0))
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                raise
            return fallback
    return announced


def _link_data(n: Negotiated) -> dict[str, Any]:
    """The rtnetlink attributes of tunnel ``n``'s device (``ip link add ... type ...``)."""
    if n.tunnel_type == "v4v6":
        return {
            "kind": "ip6tnl",
            "ip6tnl_local": _our_address(socket.AF_INET6, n.client_ipv6, n.local_address),
            "ip6tnl_remote": str(ipaddress.IPv6Address(n.server_ipv6)),
            "ip6tnl_proto": _IPPROTO_IPIP,
            "ip6tnl_ttl": OUTER_TTL,
            "ip6tnl_flags": _IP6_TNL_F_IGN_ENCAP_LIMIT,
        }
    return {
        "kind": "sit",
        "sit_local": _our_address(socket.AF_INET, n.client_ipv4, n.local_address),
        "sit_remote": str(ipaddress.IPv4Address(n.server_ipv4)),
        "sit_ttl": OUTER_TTL,
    }


def _describe(e: NetlinkError) -> str:
    return f"{os.strerror(e.code)} ({errno.errorcode.get(e.code, e.code)})"


def _complete_checksums(name: str) -> None:
    """Turn off checksum offload on device ``name`` (``ethtool -K NAME tx off``).

    sit and ip6tnl devices offer it, so by default the inner TCP or UDP checksum is left for
    the hardware that sends the outer packet, and TCP hands them 64 KiB segments (TSO needs
    the checksum offload, so it goes too). A real NIC finishes both; a veth does not, and a
    broker that reads the tunnel from a raw socket on the other side (ours in userspace, in
    the lab or on one host) gets unfinished checksums and oversized packets, and drops them:
    ping works, TCP does not. Done here, every packet leaves the device complete and at most
    MTU-sized, as the userspace plane's do; for a client's traffic the cost is negligible.
    """
    ethtool = IoctlEthtool(name)
    try:
        ethtool.set_offload_flag("tx-checksumming", 0)
    except (OSError, EthtoolError) as e:
        # Not fatal: towards a real NIC the tunnel works regardless.
        log.warning("%s: checksum offload stays on: %s", name, e or type(e).__name__)
    finally:
        ethtool.close()


def _add_link(
    name: str,
    data: dict[str, Any],
    addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    routes: Sequence[str],
    mtu: int,
) -> int:
    """Create, configure and route tunnel device ``name``; its index.

    A sit or ip6tnl device of that name is one a killed client left behind (unlike a TUN,
    it outlives its process) and is replaced; any other kind of device is refused.

    Raises:
        OSError: The kernel refused (nothing is left behind).
    """
    kind = data["kind"]

    def run(ipr: Any) -> int:
        for old in ipr.link_lookup(ifname=name):
            msg = ipr.link("get", index=old)[0]
            old_kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if old_kind not in ("sit", "ip6tnl"):
                raise OSError(errno.EEXIST, f"{name} exists already (a {old_kind} device)")
            log.warning("removing %s (%s), left by an earlier run", name, old_kind)
            ipr.link("del", index=old)
        ipr.link("add", ifname=name, mtu=mtu, **data)
        (index,) = ipr.link_lookup(ifname=name)
        bring_up_link(ipr, index, addresses, routes, prepare=lambda: _complete_checksums(name))
        return int(index)

    try:
        return iproute_call(run)
    except NetlinkError as e:
        raise OSError(e.code, f"creating {name} ({kind}): {_describe(e)}") from e


def _remove_link(index: int, name: str) -> str:
    """Delete the device (its address and routes go with it); its packet counts, for the log."""

    def run(ipr: Any) -> str:
        try:
            stats = ipr.link("get", index=index)[0].get("stats64") or {}
            counts = f"{stats.get('rx_packets', 0)} in, {stats.get('tx_packets', 0)} out"
            ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # already gone is what we want
                raise OSError(e.code, f"removing {name}: {_describe(e)}") from e
            return "already gone"
        return counts

    return iproute_call(run)


# --------------------------------------------------------------------------------------------
# One tunnel
# --------------------------------------------------------------------------------------------


async def run_kernel_tunnel(
    n: Negotiated,
    *,
    tun_name: str = "tbc0",
    lan_interface: str | None = None,
    stop: asyncio.Event,
    on_up: Callable[[Negotiated], None] | None = None,
    source_check_interval: float = 5.0,
    rand: Callable[[], float] = random.random,
) -> str:
    """Carry tunnel ``n`` through a kernel device named ``tun_name`` until it ends.

    The kernel counterpart of :func:`~tunnelbroker.client.dataplane.run_tunnel`, with the
    same arguments, results and teardown: the device, its address and routes, the LAN
    address and the sockets are gone when it returns, however it ends.

    Raises:
        ValueError: A tunnel type the kernel does not carry here (:data:`KERNEL_DEVICES`),
            a heartbeat tunnel without its secret, or a ``%d`` name pattern.
        OSError: The device, a socket or the LAN interface could not be set up (a kernel
            without the driver answers EOPNOTSUPP).
    """
    if n.tunnel_type not in KERNEL_DEVICES:
        raise ValueError(f"the kernel data plane cannot carry a {n.tunnel_type} tunnel")
    if n.tunnel_type == "heartbeat" and not n.secret:
        raise ValueError("a heartbeat tunnel needs its secret")
    if "%" in tun_name:
        raise ValueError(f"the kernel data plane needs a fixed interface name, not {tun_name!r}")
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    tasks: list[asyncio.Task[None]] = []

    def end(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    v4v6 = n.tunnel_type == "v4v6"
    inner = interface_address(n)
    mtu = interface_mtu(n)
    routes = V4V6_ROUTES if v4v6 else (DEFAULT_ROUTE,)
    ka = _keepalive_machine(n)
    # Logged when the device goes, with its packet counts (the teardown comes after return).
    outcome = "failed"

    with contextlib.ExitStack() as stack:
        stack.callback(n.close)
        try:
            data = _link_data(n)
            kind = data["kind"]
            index = _add_link(tun_name, data, [inner], routes, mtu)

            def remove() -> None:
                counts = _remove_link(index, tun_name)
                log.info("%s down: %s (%s packets)", tun_name, outcome, counts)

            stack.callback(_quietly, f"removing {tun_name}", remove)
            outer = (
                (data["ip6tnl_local"], data["ip6tnl_remote"])
                if v4v6
                else (data["sit_local"], data["sit_remote"])
            )
            log.info(
                "%s up (kernel %s, %s to %s from %s): %s, routes %s, MTU %d",
                tun_name,
                kind,
                "4in6" if v4v6 else "6in4",
                outer[1],
                outer[0],
                inner,
                " ".join(routes),
                mtu,
            )
            if n.tunnel_type == "heartbeat":
                _start_heartbeats(n, stack, tasks)
            _use_prefix(n, lan_interface, stack)
            if ka is not None:
                echo = EchoSocket(tun_name, str(inner.ip))
                stack.callback(echo.close)
                watch_replies(echo, ka, stack)
                _start_keepalive(ka, n, echo.send, end, rand, tasks)
            _start_source_watch(n, source_check_interval, end, tasks)

            if on_up is not None:
                on_up(n)

            reason = outcome = await _until_ended(ended, stop)
            return reason
        finally:
            await _cancel_all(tasks)
