"""Bring a negotiated tunnel up on this host, in userspace, and keep it up.

:func:`run_tunnel` carries one negotiated tunnel until it ends; :func:`run_client` is the
reconnect loop around it (negotiate, run, renegotiate). Either can hand a v6v4, v4v6 or
heartbeat tunnel to the kernel instead (a sit or ip6tnl device): :mod:`.kernel`, which
shares the keepalive, heartbeat, router mode and source watch below.

The userspace data plane needs no tunnel modules (sit, fou): packets go through a TUN device
and Python.

* **The TUN** (``tbc0``) gets the client's tunnel address as a /128, MTU 1280 (the IPv6
  minimum, so nothing is ever too big for the path: RFC 4213 §3.2's static MTU) and the route
  ``::/0``. A SixXS tunnel comes with its own MTU and prefix length (TIC's ``Tunnel MTU``,
  1280..1480, and ``IPv6 PrefixLength``), and they are used as AICCU uses them (sixxs.md
  §5.2). The whole IPv6 internet goes through the tunnel, as gogoc's template does; more
  specific on-link routes (a LAN's /64) still win. We do not add ``2000::/3`` besides: it adds
  nothing to ``::/0`` here, and a host with its own IPv6 default route should not run this.
* **v6udpv4** (RFC 5572 Fig. 14): every IPv6 packet the kernel routes into the TUN is sent
  bare on the signalling UDP flow (the very socket, so the NAT mapping the broker saw), and
  every datagram from that flow whose first nibble is 6 is written to the TUN.
* **v6v4** (RFC 4213 6in4): a raw IPv4 socket for protocol 41, bound to our endpoint. We send
  bare IPv6 packets to the server's IPv4 address (the kernel adds the IPv4 header) and accept
  only packets whose outer source is that address (RFC 4213 §3.6's ingress check, mirrored).
  The signalling flow stays open meanwhile, as gogoc keeps it.
* **v4v6** (RFC 2473 4in6): a raw IPv6 socket for next header 4; the TUN carries IPv4.
* **ayiya** (SixXS, from TIC): every IPv6 packet goes out as a signed AYIYA Forward to UDP
  5072 of the PoP, a signed NOOP every interval keeps the NAT mapping and tells the PoP where
  we are, and only datagrams with the PoP's identity, a good signature and time and no replay
  come in. Their IPv6 payload goes to the TUN if they are a Forward or, as AICCU has it
  (sixxs.md §3.3), an Echo Request (opcode 2 or 3); nobody answers the echo itself.
* **heartbeat** (SixXS 6in4-heartbeat): 6in4 as v6v4, plus a signed beat to UDP 3740 every
  interval, which moves the PoP's end of the tunnel to our address.
* **Keepalive** (:class:`~tunnelbroker.protocols.tsp.keepalive.KeepaliveMachine`): echoes go
  straight into the tunnel, and their replies are swallowed before the TUN.
* **Router mode** (a delegated prefix): ``<prefix>::1/64`` is added on ``lan_interface``; the
  kernel then routes that /64 to the LAN. A shorter prefix also gets an ``unreachable`` route,
  so packets for its unused parts are refused here rather than bounced back into the tunnel.
  IPv6 forwarding and router advertisements (radvd) are left to the administrator; we only
  warn when forwarding is off.

Everything added is removed again when the tunnel ends, however it ends (the TUN's own
address and routes go with the device).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from tunnelbroker.client.echo import EchoSocket, watch_replies
from tunnelbroker.client.tic import TicClientError
from tunnelbroker.client.tsp import Negotiated, TspClientError, UdpFlow, negotiate
from tunnelbroker.protocols.ayiya import PORT as AYIYA_PORT
from tunnelbroker.protocols.ayiya import AyiyaDrop, AyiyaLink, AyiyaPacket, OpCode, Role
from tunnelbroker.protocols.ayiya.messages import NEXT_HEADER_IPV6
from tunnelbroker.protocols.heartbeat import PORT as HEARTBEAT_PORT
from tunnelbroker.protocols.heartbeat import build as build_heartbeat
from tunnelbroker.protocols.tsp.errors import StatusCode
from tunnelbroker.protocols.tsp.keepalive import KeepaliveMachine
from tunnelbroker.tunnelserver import fastpath
from tunnelbroker.tunnelserver.tun import TunDevice, address_args, iproute_call

__all__ = [
    "DataPlane",
    "FLOW_CLOSED",
    "KEEPALIVE_LOST",
    "SOURCE_CHANGED",
    "STOPPED",
    "TUN_MTU",
    "ayiya_delivered",
    "backoff_delay",
    "decapsulate_6in4",
    "interface_address",
    "interface_mtu",
    "local_ipv4_towards",
    "run_client",
    "run_tunnel",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a tunnel's packets cross: a TUN and Python, or a kernel tunnel device.
DataPlane = Literal["userspace", "kernel"]

#: Why :func:`run_tunnel` returned.
STOPPED = "stopped"
KEEPALIVE_LOST = "keepalive lost"
FLOW_CLOSED = "flow closed"
SOURCE_CHANGED = "source address changed"

#: MTU of the client TUN unless the server says (a SixXS tunnel): the IPv6 minimum, which any
#: IPv4 path carries in one piece.
TUN_MTU = 1280
#: AYIYA opcodes whose payload a client delivers (sixxs.md §3.3): AICCU writes an Echo
#: Request's IPv6 payload to its TUN too, though it never answers the echo.
AYIYA_DELIVERED = frozenset({OpCode.FORWARD, OpCode.ECHO_REQUEST, OpCode.ECHO_REQUEST_FORWARD})
#: What we route into the tunnel.
DEFAULT_ROUTE = "::/0"
#: For v4v6 (IPv4 through IPv6): all of IPv4, as two halves. They win over the host's own
#: IPv4 default route without removing it (that route comes back untouched at teardown), and
#: the tunnel's own packets are IPv6, so they cannot loop into it.
V4V6_ROUTES = ("0.0.0.0/1", "128.0.0.0/1")
#: Longest wait between reconnection attempts, seconds.
BACKOFF_CAP = 60.0
#: A tunnel that stayed up this long (s) counts as a success: the backoff starts over.
STABLE_AFTER = 30.0
#: Refusals that another attempt cannot cure (bad credentials, an impossible request).
PERMANENT_REFUSALS = frozenset(
    {
        StatusCode.AUTHENTICATION_FAILED,
        StatusCode.UNSUPPORTED_CLIENT_VERSION,
        StatusCode.UNSUPPORTED_TUNNEL_TYPE,
        StatusCode.INVALID_REQUEST_FORMAT,
        StatusCode.INVALID_IPV4_ADDRESS,
        StatusCode.INVALID_IPV6_ADDRESS,
        StatusCode.PREFIX_LENGTH_UNAVAILABLE,
        StatusCode.UNSUPPORTED_PREFIX_LENGTH,
        StatusCode.MISSING_PREFIX_LENGTH,
        StatusCode.PREFIX_FOR_ANONYMOUS,
    }
)

_IPPROTO_IPV6 = 41
_IPPROTO_IPIP = 4
_RTN_UNREACHABLE = 7
_BATCH = 64
_READ_SIZE = 65535
# gogoc's keepalive timeout; a shorter interval shortens it, so a probe is never outlived.
_KEEPALIVE_TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def decapsulate_6in4(pkt: bytes, server: bytes) -> bytes | None:
    """The IPv6 packet inside IPv4 packet ``pkt`` (protocol 41) if it came from ``server``.

    ``pkt`` is what a raw protocol-41 socket reads: the whole IPv4 packet, header first.
    Returns None for anything else (another source, another protocol, a truncated header,
    an inner packet that is not IPv6). Never raises.
    """
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl + 40 or pkt[9] != _IPPROTO_IPV6 or pkt[12:16] != server:
        return None
    inner = pkt[ihl:]
    return inner if inner[0] >> 4 == 6 else None


def ayiya_delivered(got: AyiyaPacket | AyiyaDrop) -> bytes | None:
    """The IPv6 packet a verified AYIYA datagram from the PoP puts into the TUN, or None.

    A Forward, an Echo Request or an Echo Request and Forward carrying IPv6 (Next Header 41);
    not a NOOP or an IPv4 payload, and nothing dropped. The Python receive path and the
    datagrams the C fast path punts both decide here.
    """
    if isinstance(got, AyiyaDrop):
        return None
    if got.opcode in AYIYA_DELIVERED and got.next_header == NEXT_HEADER_IPV6:
        return got.payload
    return None


def interface_mtu(n: Negotiated) -> int:
    """The MTU of tunnel ``n``'s interface: the server's (TIC), else :data:`TUN_MTU`."""
    return TUN_MTU if n.mtu is None else n.mtu


def interface_address(n: Negotiated) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Our address on tunnel ``n``'s interface: a /32 for v4v6, else with the link's prefix
    length where the server says (TIC's ``IPv6 PrefixLength``, as AICCU), or a /128."""
    if n.tunnel_type == "v4v6":
        return ipaddress.IPv4Interface(f"{n.client_ipv4}/32")
    length = 128 if n.link_prefix_length is None else n.link_prefix_length
    return ipaddress.IPv6Interface(f"{n.client_ipv6}/{length}")


def backoff_delay(failures: int, rand01: float, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: 0, then 1, 2, 4 … ``cap``,
    each scaled by a jitter factor in [0.5, 1] so a broker restart does not see every client
    come back in the same second."""
    if failures <= 0:
        return 0.0
    return min(cap, 2.0 ** min(failures - 1, 30)) * (0.5 + 0.5 * rand01)


def local_ipv4_towards(address: str, port: int) -> str | None:
    """The source address the kernel picks towards ``address`` now, or None (no route).

    Connecting a UDP socket sends nothing; it only runs the route lookup.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, port))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _lan_address(prefix: str, length: int) -> ipaddress.IPv6Interface:
    """``<prefix>::1`` with the length of the first /64 of the delegation (or longer)."""
    net = ipaddress.IPv6Network(f"{prefix}/{length}", strict=False)
    return ipaddress.IPv6Interface(f"{net.network_address + 1}/{max(length, 64)}")


def _quietly(what: str, fn: Callable[[], object]) -> None:
    # Teardown must run to the end: one failed step is logged, not allowed to stop the rest.
    try:
        fn()
    except Exception as e:
        log.warning("teardown: %s failed: %s", what, e)


# --------------------------------------------------------------------------------------------
# One tunnel
# --------------------------------------------------------------------------------------------


def _raw_socket(family: int, proto: int, local: str, fallback: str) -> socket.socket:
    """A non-blocking raw socket for ``proto`` (41: 6in4, 4: 4in6), bound to our endpoint."""
    s = socket.socket(family, socket.SOCK_RAW, proto)
    try:
        try:
            s.bind((local, 0))
        except OSError as e:
            # An address announced by hand may not be ours; the signalling socket's is.
            if e.errno != errno.EADDRNOTAVAIL or fallback == local:
                raise
            s.bind((fallback, 0))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _setup_lan(n: Negotiated, lan_interface: str, stack: contextlib.ExitStack) -> None:
    assert n.prefix is not None and n.prefix_length is not None
    iface = _lan_address(n.prefix, n.prefix_length)
    delegated = ipaddress.IPv6Network(f"{n.prefix}/{n.prefix_length}", strict=False)
    index = socket.if_nametoindex(lan_interface)

    def add(ipr: Any) -> None:
        ipr.addr("replace", index=index, **address_args(iface))

    def remove(ipr: Any) -> None:
        with contextlib.suppress(NetlinkError):
            ipr.addr("del", index=index, **address_args(iface))

    iproute_call(add)
    stack.callback(_quietly, f"removing {iface} from {lan_interface}", lambda: iproute_call(remove))
    log.info("router mode: %s on %s", iface, lan_interface)
    if delegated.prefixlen < iface.network.prefixlen:

        def refuse(ipr: Any) -> None:
            ipr.route("replace", dst=str(delegated), type=_RTN_UNREACHABLE)

        def unrefuse(ipr: Any) -> None:
            with contextlib.suppress(NetlinkError):
                ipr.route("del", dst=str(delegated), type=_RTN_UNREACHABLE)

        iproute_call(refuse)
        stack.callback(_quietly, f"removing route {delegated}", lambda: iproute_call(unrefuse))
    try:
        with open("/proc/sys/net/ipv6/conf/all/forwarding") as f:
            forwarding = f.read().strip() != "0"
    except OSError:
        forwarding = True
    if not forwarding:
        log.warning("IPv6 forwarding is off: the LAN cannot use %s", delegated)


# The parts of a running tunnel that do not depend on how packets cross it; the kernel data
# plane (:mod:`tunnelbroker.client.kernel`) runs them too.


def _use_prefix(n: Negotiated, lan_interface: str | None, stack: contextlib.ExitStack) -> None:
    """Router mode: the delegated prefix onto ``lan_interface``, if both are there."""
    if n.prefix is None:
        return
    if lan_interface is not None:
        _setup_lan(n, lan_interface, stack)
    else:
        log.info("delegated prefix %s/%s not used (no LAN interface)", n.prefix, n.prefix_length)


def _keepalive_machine(n: Negotiated) -> KeepaliveMachine | None:
    """The keepalive of tunnel ``n`` (ICMPv4 inside a v4v6 tunnel, else ICMPv6), if any."""
    if not (n.keepalive_interval and n.keepalive_address):
        return None
    inner_address = n.client_ipv4 if n.tunnel_type == "v4v6" else n.client_ipv6
    return KeepaliveMachine(
        n.keepalive_interval,
        ipaddress.ip_address(n.keepalive_address).packed,
        ipaddress.ip_address(inner_address).packed,
        os.getpid() & 0xFFFF,
        timeout=min(_KEEPALIVE_TIMEOUT, float(n.keepalive_interval)),
    )


def _start_keepalive(
    machine: KeepaliveMachine,
    n: Negotiated,
    send: Callable[[bytes], None],
    end: Callable[[str], None],
    rand: Callable[[], float],
    tasks: list[asyncio.Task[None]],
) -> None:
    """Send ``machine``'s echoes with ``send``; :data:`KEEPALIVE_LOST` when it gives up."""
    loop = asyncio.get_running_loop()

    async def keepalive() -> None:
        machine.next_send(loop.time(), rand())
        while True:
            at = machine.get_timer()
            assert at is not None  # an echo is always armed or waiting
            await asyncio.sleep(max(0.0, at - loop.time()))
            now = loop.time()
            before = machine.missed
            machine.handle_timer(now)
            if machine.missed > before:
                log.warning(
                    "keepalive: no reply from %s (%d in a row)",
                    n.keepalive_address,
                    machine.missed,
                )
            if machine.dead:
                end(KEEPALIVE_LOST)
                return
            pkt = machine.due(now)
            if pkt is not None:
                send(pkt)
                machine.next_send(now, rand())

    tasks.append(asyncio.create_task(keepalive()))
    log.info("keepalive every %d s to %s", n.keepalive_interval, n.keepalive_address)


def _start_heartbeats(
    n: Negotiated, stack: contextlib.ExitStack, tasks: list[asyncio.Task[None]]
) -> None:
    """A signed SixXS heartbeat to UDP 3740 of the PoP now and every interval."""
    assert n.secret is not None
    secret = n.secret
    beat_to = (n.server_ipv4, HEARTBEAT_PORT)
    beats = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(beats.close)
    beats.setblocking(False)

    async def heartbeats() -> None:
        # The beat moves the PoP's end of the 6in4 tunnel to our address.
        while True:
            try:
                beats.sendto(build_heartbeat(n.client_ipv6, secret, time.time()), beat_to)
            except OSError as e:
                log.debug("heartbeat: %s", e)
            await asyncio.sleep(max(1.0, float(n.keepalive_interval or 60)))

    tasks.append(asyncio.create_task(heartbeats()))
    log.info("heartbeat every %s s to %s", n.keepalive_interval, beat_to[0])


def _start_source_watch(
    n: Negotiated,
    interval: float,
    end: Callable[[str], None],
    tasks: list[asyncio.Task[None]],
) -> None:
    """:data:`SOURCE_CHANGED` once the kernel would reach an IPv4 broker from elsewhere."""

    async def watch_source() -> None:
        while True:
            await asyncio.sleep(interval)
            now_src = local_ipv4_towards(n.server_address, n.port)
            # No route at all is not a new address: wait for one to appear.
            if now_src is not None and now_src != n.local_address:
                log.warning("the IPv4 source address changed: %s -> %s", n.local_address, now_src)
                end(SOURCE_CHANGED)
                return

    if ipaddress.ip_address(n.server_address).version == 4:
        tasks.append(asyncio.create_task(watch_source()))


async def _until_ended(ended: asyncio.Future[str], stop: asyncio.Event) -> str:
    """Wait for the tunnel to end (``ended``) or to be stopped; returns why."""

    async def stopped() -> str:
        await stop.wait()
        return STOPPED

    stopping = asyncio.ensure_future(stopped())
    try:
        await asyncio.wait([ended, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return ended.result() if ended.done() else STOPPED


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    # Let them finish being cancelled, unless we are being cancelled ourselves.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


def _received(recv: Callable[[int], T], what: str) -> Iterator[T]:
    """What ``recv(size)`` returns on a non-blocking socket, a batch at most, until drained.

    An error other than "nothing more" is logged and ends the batch, as a lost packet would.
    """
    for _ in range(_BATCH):
        try:
            got = recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("%s: %s", what, e)
            return
        yield got


def _ayiya_link(n: Negotiated, stack: contextlib.ExitStack) -> tuple[AyiyaLink, socket.socket]:
    """Tunnel ``n``'s AYIYA link (we are the client) and a UDP socket connected to the PoP."""
    assert n.secret is not None
    link = AyiyaLink(
        n.secret,
        role=Role.CLIENT,
        local=ipaddress.IPv6Address(n.client_ipv6),
        remote=ipaddress.IPv6Address(n.server_ipv6),
    )
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(udp.close)
    udp.setblocking(False)
    udp.connect((n.server_ipv4, AYIYA_PORT))
    return link, udp


async def _noops(n: Negotiated, link: AyiyaLink, udp: socket.socket) -> None:
    """AICCU's beat: a signed NOOP now and every interval.

    It keeps the NAT mapping open and tells the PoP where we are.
    """
    while True:
        try:
            udp.send(link.noop(time.time()))
        except OSError as e:
            log.debug("ayiya noop: %s", e)
        await asyncio.sleep(max(1.0, float(n.keepalive_interval or 60)))


def _fast_forwarder(
    n: Negotiated,
    tun: TunDevice,
    stack: contextlib.ExitStack,
    ayiya: tuple[AyiyaLink, socket.socket] | None,
) -> fastpath.PeerForwarder | None:
    """The C forwarder for tunnel ``n``, started; None where it cannot carry it.

    A client is the simplest user of the tunnel server's fast path: everything from the TUN
    goes to the one peer, and everything the peer sends (and only what it sends) goes into
    the TUN, on a thread of its own without the GIL. It carries v6udpv4 (on the signalling
    flow's own socket, which asyncio stops reading), 6in4 (v6v4, heartbeat) and AYIYA
    (``ayiya``: the link and its socket; Forwards signed and verified in C, the rest punted
    to Python, the NOOP beat sent from Python); v4v6 stays in Python.
    """
    if n.tunnel_type not in ("v6udpv4", "v6v4", "heartbeat", "ayiya") or fastpath.load() is None:
        return None
    peer: tuple[str, int]
    link = None
    if n.tunnel_type == "ayiya":
        assert ayiya is not None
        link, sock = ayiya
        peer = (n.server_ipv4, AYIYA_PORT)
    elif n.tunnel_type == "v6udpv4":
        assert isinstance(n.flow, UdpFlow)
        # asyncio's selector transports can stop reading, though the type stubs don't say so.
        pause: Callable[[], None] | None = getattr(n.flow.transport, "pause_reading", None)
        if pause is None:
            return None
        pause()
        flow_socket = n.flow.transport.get_extra_info("socket")
        # A socket of our own on the flow's: closing it leaves the transport's alone.
        sock = socket.socket(fileno=os.dup(flow_socket.fileno()))
        stack.callback(sock.close)
        peer = n.flow.remote
    else:
        sock = _raw_socket(socket.AF_INET, _IPPROTO_IPV6, n.client_ipv4, n.local_address)
        peer = (n.server_ipv4, 0)
        stack.callback(sock.close)
    fwd = fastpath.PeerForwarder(tun.fileno(), sock, peer, ayiya=link)
    fwd.start()
    stack.callback(fwd.stop)  # before the socket and the TUN close (the stack unwinds)
    log.info("forwarding in C (the fast path), to %s port %d", peer[0], peer[1])
    return fwd


def _serve_punts(
    fwd: fastpath.PeerForwarder,
    stack: contextlib.ExitStack,
    on_ayiya: Callable[[bytes], None] | None,
    pop: tuple[bytes, int],
    on_discard: Callable[[], None],
) -> None:
    """Take what the forwarder sets aside as soon as it signals, until ``stack`` unwinds.

    AYIYA datagrams from the PoP (``pop``: packed IPv4 and port) that C does not decide
    (echo requests, NOOPs, anything malformed) go to ``on_ayiya``, the Python receive path,
    which decides them as it decides its own. A client has no slow path for the rest (a
    stray signalling datagram, say): each is discarded (``on_discard``), which also keeps the
    queue from filling.
    """
    loop = asyncio.get_running_loop()
    fd: int = fwd.engine.punt_fd
    punt_ayiya: int = fwd.module.PUNT_AYIYA

    def on_punts() -> None:
        # Read the eventfd before taking: a punt after the take signals it again.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(fd, 8)
        for kind, _, data, src4, port, _ in fwd.take_punts():
            if on_ayiya is not None and kind == punt_ayiya and (src4, port) == pop:
                on_ayiya(data)
            else:
                on_discard()

    loop.add_reader(fd, on_punts)
    stack.callback(loop.remove_reader, fd)


async def run_tunnel(
    n: Negotiated,
    *,
    tun_name: str = "tbc0",
    lan_interface: str | None = None,
    stop: asyncio.Event,
    on_up: Callable[[Negotiated], None] | None = None,
    source_check_interval: float = 5.0,
    rand: Callable[[], float] = random.random,
    backend: DataPlane = "userspace",
    fast_path: bool = True,
) -> str:
    """Carry tunnel ``n`` through a TUN device until it ends; returns why.

    Takes over ``n``'s signalling flow and closes it at the end. ``on_up`` is called once
    the TUN, its address and routes are in place. ``backend="kernel"`` carries it through a
    kernel tunnel device instead (:func:`tunnelbroker.client.kernel.run_kernel_tunnel`,
    which returns and raises alike). ``fast_path``: let the tunnel server's C fast path
    (:class:`~tunnelbroker.tunnelserver.fastpath.PeerForwarder`) move v6udpv4, v6v4,
    heartbeat and AYIYA packets where it is built; False keeps every packet in Python.

    Returns:
        :data:`STOPPED` (``stop`` was set), :data:`KEEPALIVE_LOST` (the keepalive address
        stopped answering), :data:`FLOW_CLOSED` (the v6udpv4 socket closed) or
        :data:`SOURCE_CHANGED` (the kernel would now use another IPv4 source address).

    Raises:
        ValueError: a tunnel type this data plane cannot carry, or v6udpv4 without its UDP
            flow.
        OSError: the TUN, a socket or the LAN interface could not be set up.
    """
    if backend == "kernel":
        from tunnelbroker.client.kernel import run_kernel_tunnel

        return await run_kernel_tunnel(
            n,
            tun_name=tun_name,
            lan_interface=lan_interface,
            stop=stop,
            on_up=on_up,
            source_check_interval=source_check_interval,
            rand=rand,
        )
    if n.tunnel_type not in ("v6udpv4", "v6v4", "v4v6", "ayiya", "heartbeat"):
        raise ValueError(f"cannot bring up a {n.tunnel_type} tunnel")
    if n.tunnel_type in ("ayiya", "heartbeat") and not n.secret:
        raise ValueError(f"a {n.tunnel_type} tunnel needs its secret")
    if n.tunnel_type == "v6udpv4" and not isinstance(n.flow, UdpFlow):
        raise ValueError("a v6udpv4 tunnel needs its signalling UDP flow")
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    tasks: list[asyncio.Task[None]] = []
    dropped = 0

    def end(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    # v4v6 carries IPv4 inside IPv6: the inner family and addresses are the IPv4 ones.
    v4v6 = n.tunnel_type == "v4v6"
    inner_version = 4 if v4v6 else 6
    inner = interface_address(n)
    inner_address = str(inner.ip)
    mtu = interface_mtu(n)
    routes = V4V6_ROUTES if v4v6 else (DEFAULT_ROUTE,)
    ka = _keepalive_machine(n)

    with contextlib.ExitStack() as stack:
        stack.callback(n.close)
        try:
            tun = TunDevice.open(tun_name)
            stack.callback(tun.close)
            tun.configure(mtu, [str(inner)], up=True)
            for route in routes:
                tun.add_route(route)
                stack.callback(
                    _quietly, f"removing route {route}", functools.partial(tun.del_route, route)
                )
            log.info("%s up: %s, routes %s, MTU %d", tun.name, inner, " ".join(routes), mtu)

            def from_tunnel(pkt: bytes) -> None:
                nonlocal dropped
                if not pkt or pkt[0] >> 4 != inner_version:
                    dropped += 1
                    return
                if ka is not None and ka.receive(pkt, loop.time()):
                    log.debug("keepalive reply, rtt %.1f ms", (ka.last_rtt or 0) * 1000)
                    return
                try:
                    tun.write(pkt)
                except OSError:
                    dropped += 1  # malformed: the kernel refused it

            # AYIYA: one link and socket, whichever path forwards; what the PoP sends is
            # decided in from_pop (all of it in Python, or what C punts).
            ayiya = _ayiya_link(n, stack) if n.tunnel_type == "ayiya" else None
            from_pop: Callable[[bytes], None] | None = None
            pop = (b"", 0)
            if ayiya is not None:
                link, udp = ayiya
                pop = (ipaddress.IPv4Address(n.server_ipv4).packed, AYIYA_PORT)

                def receive_ayiya(datagram: bytes) -> None:
                    nonlocal dropped
                    got = link.receive(datagram, time.time())
                    if isinstance(got, AyiyaDrop):
                        log.debug("ayiya datagram dropped: %s", got.value)
                        dropped += 1
                    elif (payload := ayiya_delivered(got)) is not None:
                        from_tunnel(payload)

                from_pop = receive_ayiya
                tasks.append(asyncio.create_task(_noops(n, link, udp)))
                log.info("ayiya to %s port %d", n.server_ipv4, AYIYA_PORT)

            fast = _fast_forwarder(n, tun, stack, ayiya) if fast_path else None
            send: Callable[[bytes], None]
            if fast is not None:
                if n.tunnel_type == "heartbeat":
                    _start_heartbeats(n, stack, tasks)

                def discard() -> None:
                    nonlocal dropped
                    dropped += 1

                _serve_punts(fast, stack, from_pop, pop, discard)
            else:
                if isinstance(n.flow, UdpFlow) and n.tunnel_type == "v6udpv4":
                    flow = n.flow
                    send = flow.send

                    async def read_flow() -> None:
                        while True:
                            try:
                                pkt = await flow.recv()
                            except ConnectionError as e:
                                if isinstance(e, ConnectionRefusedError):
                                    # ICMP port unreachable: the broker may be restarting; the
                                    # keepalive decides whether the tunnel is gone.
                                    log.debug("flow: %s", e)
                                    continue
                                log.warning("the UDP flow closed: %s", e)
                                end(FLOW_CLOSED)
                                return
                            except OSError as e:
                                log.debug("flow: %s", e)
                                continue
                            from_tunnel(pkt)

                    tasks.append(asyncio.create_task(read_flow()))
                elif ayiya is not None and from_pop is not None:
                    link, udp = ayiya
                    receive = from_pop

                    def send(pkt: bytes) -> None:
                        try:
                            udp.send(link.forward(pkt, time.time()))
                        except OSError:
                            pass  # as for 6in4: a router drops, so do we

                    def on_ayiya() -> None:
                        for datagram in _received(udp.recv, "ayiya socket"):
                            receive(datagram)

                    loop.add_reader(udp.fileno(), on_ayiya)
                    stack.callback(loop.remove_reader, udp.fileno())
                elif v4v6:
                    raw6 = _raw_socket(
                        socket.AF_INET6, _IPPROTO_IPIP, n.client_ipv6, n.local_address
                    )
                    stack.callback(raw6.close)
                    server6 = ipaddress.IPv6Address(n.server_ipv6)
                    target = (str(server6), 0)

                    def send(pkt: bytes) -> None:
                        try:
                            raw6.sendto(pkt, target)
                        except OSError:
                            pass  # as for 6in4: a router drops, so do we

                    def on_raw6() -> None:
                        nonlocal dropped
                        for inner, source in _received(raw6.recvfrom, "raw socket"):
                            # A raw IPv6 socket hands over the payload; the outer source comes
                            # with it. Only our server's packets enter (the ingress check).
                            if ipaddress.IPv6Address(source[0].split("%")[0]) != server6:
                                dropped += 1
                            else:
                                from_tunnel(inner)

                    loop.add_reader(raw6.fileno(), on_raw6)
                    stack.callback(loop.remove_reader, raw6.fileno())
                    log.info("4in6 to %s from %s", n.server_ipv6, raw6.getsockname()[0])
                else:
                    raw = _raw_socket(socket.AF_INET, _IPPROTO_IPV6, n.client_ipv4, n.local_address)
                    stack.callback(raw.close)
                    server = (n.server_ipv4, 0)
                    server_packed = ipaddress.IPv4Address(n.server_ipv4).packed

                    def send(pkt: bytes) -> None:
                        try:
                            raw.sendto(pkt, server)
                        except OSError:
                            pass  # a full buffer or no route: a router drops, so do we

                    def on_raw() -> None:
                        nonlocal dropped
                        for outer in _received(raw.recv, "raw socket"):
                            inner = decapsulate_6in4(outer, server_packed)
                            if inner is None:
                                dropped += 1  # not from our server: the ingress check
                            else:
                                from_tunnel(inner)

                    loop.add_reader(raw.fileno(), on_raw)
                    stack.callback(loop.remove_reader, raw.fileno())
                    log.info("6in4 to %s from %s", n.server_ipv4, raw.getsockname()[0])
                    if n.tunnel_type == "heartbeat":
                        _start_heartbeats(n, stack, tasks)

                def on_tun() -> None:
                    nonlocal dropped
                    for pkt in tun.read_batch(_BATCH):
                        if pkt and pkt[0] >> 4 == inner_version:
                            send(pkt)
                        else:
                            dropped += 1

                loop.add_reader(tun.fileno(), on_tun)
                stack.callback(loop.remove_reader, tun.fileno())

            _use_prefix(n, lan_interface, stack)

            if ka is not None:
                if fast is not None:
                    # The replies never reach Python on the fast path: the keepalive talks
                    # through the TUN, as through a kernel device.
                    echo = EchoSocket(tun.name, inner_address)
                    stack.callback(echo.close)
                    watch_replies(echo, ka, stack)
                    send = echo.send
                _start_keepalive(ka, n, send, end, rand, tasks)
            _start_source_watch(n, source_check_interval, end, tasks)

            if on_up is not None:
                on_up(n)

            reason = await _until_ended(ended, stop)
            if fast is not None:
                dropped += fast.stats()["dropped"]
            log.info("%s down: %s (%d packets dropped)", tun.name, reason, dropped)
            return reason
        finally:
            await _cancel_all(tasks)


# --------------------------------------------------------------------------------------------
# The reconnect loop
# --------------------------------------------------------------------------------------------


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def run_client(
    server: str,
    *,
    stop: asyncio.Event,
    tun_name: str = "tbc0",
    lan_interface: str | None = None,
    on_up: Callable[[Negotiated], None] | None = None,
    source_check_interval: float = 5.0,
    backoff_cap: float = BACKOFF_CAP,
    rand: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    negotiator: Callable[[], Awaitable[Negotiated]] | None = None,
    backend: str = "userspace",
    fast_path: bool = True,
    **negotiate_options: Any,
) -> None:
    """Keep a tunnel with broker ``server`` up until ``stop`` is set.

    Negotiates (``negotiate_options`` go to :func:`~tunnelbroker.client.tsp.negotiate`; a
    ``negotiator`` replaces that, e.g. a TIC login: :mod:`tunnelbroker.client.sixxs`),
    runs :func:`run_tunnel`, and when the tunnel ends for any reason but ``stop``
    negotiates again. Failed attempts in a row are spaced by :func:`backoff_delay` (1, 2,
    4 … ``backoff_cap`` s, jittered); a tunnel that stayed up :data:`STABLE_AFTER` seconds
    resets that, and a new source address reconnects at once. ``rand`` and ``clock`` are
    there for tests. An authenticated user gets
    the same IPv6 address back each time (the broker keeps it for the account).

    ``backend`` (``userspace``, ``kernel`` or ``auto``) says where each tunnel runs:
    :class:`tunnelbroker.client.kernel.BackendChooser` decides, per negotiated tunnel.
    ``fast_path``: see :func:`run_tunnel`.

    Raises:
        TspClientError: the broker refused with a code in :data:`PERMANENT_REFUSALS`.
        TicClientError: the TIC ``negotiator`` failed for good (``permanent``: a refused
            login, an unknown tunnel, TLS required but refused...); other TIC failures
            are retried.
        KernelUnavailable: ``backend="kernel"`` and the kernel cannot carry the tunnel
            (:mod:`tunnelbroker.client.kernel`); checked before negotiating where the
            requested type tells.
        ValueError: unusable ``negotiate_options``, or a tunnel type we cannot carry.
        OSError: the very first tunnel could not be set up (no TUN, no permission); later
            failures are retried.
    """
    chooser = None
    if backend != "userspace":
        from tunnelbroker.client.kernel import BackendChooser

        chooser = BackendChooser(backend)
        await chooser.precheck(negotiate_options.get("tunnel_type"))
    failures = 0
    connections = 0
    while not stop.is_set():
        delay = backoff_delay(failures, rand(), backoff_cap)
        if delay:
            log.info("reconnecting in %.1f s", delay)
            await _sleep_or_stop(stop, delay)
            if stop.is_set():
                break
        log.info("negotiating with %s", server)
        try:
            if negotiator is not None:
                n = await negotiator()
            else:
                n = await negotiate(server, **negotiate_options)
        except TspClientError as e:
            if e.code in PERMANENT_REFUSALS:
                raise
            failures += 1
            log.warning("negotiation failed: %s", e)
            continue
        except TicClientError as e:
            # A refused login or an unknown tunnel will not fix itself; a network error, a
            # busy server or a clock off may.
            if e.permanent:
                raise
            failures += 1
            log.warning("TIC failed: %s", e)
            continue
        connections += 1
        log.info(
            "tunnel %s granted: %s, server %s, keepalive %s s",
            n.tunnel_type,
            n.client_ipv6,
            n.server_ipv4,
            n.keepalive_interval,
        )
        where: DataPlane = "userspace"
        if chooser is not None:
            try:
                where = await chooser.choose(n.tunnel_type)
            except BaseException:
                n.close()
                raise
        started = clock()
        try:
            reason = await run_tunnel(
                n,
                backend=where,
                tun_name=tun_name,
                lan_interface=lan_interface,
                stop=stop,
                on_up=on_up,
                source_check_interval=source_check_interval,
                rand=rand,
                fast_path=fast_path,
            )
        except OSError as e:
            if connections == 1:
                raise
            failures += 1
            log.warning("tunnel failed: %s", e)
            continue
        if reason == STOPPED:
            break
        if clock() - started >= STABLE_AFTER:
            failures = 0
        if reason != SOURCE_CHANGED:
            failures += 1
        log.info("tunnel ended (%s), negotiating again", reason)
