"""The C fast path's Python side: loading it, and keeping it in step with ForwardingCore.

``_fastpath.c`` forwards the common case (v6v4 and v6udpv4 between the TUN and the tunnel
sockets) on a thread of its own without the GIL, and punts everything else to the Python
:class:`~tunnelbroker.tunnelserver.engine.ForwardingCore`, which stays the one place where the
semantics live (docs/dataplane.md). This module loads the extension (or says once, clearly,
that forwarding will be slower without it), mirrors tunnel states into it, and folds its
counters and drops back into the core so expiry, the store and the metrics see every packet.

A one-tunnel :class:`PeerForwarder` serves the other end of a tunnel (a client, or a
benchmark's peer): TUN to one UDP or protocol-41 peer and back.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from types import ModuleType

from tunnelbroker.tunnelserver.engine import Drop, Encap, ForwardingCore, TunnelState

log = logging.getLogger(__name__)

_warned = False


def _import() -> ModuleType:
    from tunnelbroker.tunnelserver import _fastpath

    return _fastpath


def load() -> ModuleType | None:
    """The compiled extension, or None (with one warning per process) when it is missing."""
    global _warned
    try:
        return _import()
    except ImportError as e:
        if not _warned:
            _warned = True
            log.warning(
                "the C forwarding fast path is not available (%s): the userspace data plane "
                "forwards every packet in Python, several times slower. Reinstall with a C "
                "compiler and the Python headers (pip install -e .) to build it.",
                e,
            )
        return None


class FastPath:
    """One running C engine over a TUN and the tunnel sockets, mirroring a ForwardingCore.

    Not thread-safe on its own: the data plane calls it under the lock that guards its core.
    """

    def __init__(self, module: ModuleType, tun_fd: int, raw41_fd: int = -1) -> None:
        self.module = module
        self.engine = module.Engine(tun_fd, raw41_fd)

    @property
    def punt_fd(self) -> int:
        fd: int = self.engine.punt_fd
        return fd

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def add_udp(self, sock: socket.socket) -> int:
        """Read (and send v6udpv4 on) this IPv4 UDP socket; its index in punts."""
        index: int = self.engine.add_udp(sock.fileno())
        return index

    def remove_udp(self, index: int) -> None:
        """Stop using a socket; it may be closed as soon as this returns."""
        self.engine.remove_udp(index)

    def install(self, t: TunnelState) -> None:
        """Mirror a tunnel the core has just installed (``core.add`` derived its keys)."""
        m = self.module
        if t.encap is Encap.V4V6:
            # IPv4 inside: every packet is punted by version, so the engine needs no entry
            # (and must forget whatever this tunnel id was before).
            last = self.engine.remove_tunnel(t.tunnel_id)
            if last is not None:
                _add(t, last)
            return
        if t.encap is Encap.V6V4:
            kind, remote, port = m.KIND_V6V4, ipaddress.IPv4Address(t.remote).packed, 0
        elif t.encap is Encap.V6UDPV4:
            kind, remote, port = m.KIND_V6UDPV4, ipaddress.IPv4Address(t.remote).packed, t.port or 0
        else:
            # AYIYA: the engine only needs its routes, to punt what the TUN sends it.
            kind, remote, port = m.KIND_PUNT, b"", 0
        prefixes = [(p.network_address.packed, p.prefixlen) for p in t.prefixes if p.version == 6]
        self.engine.set_tunnel(t.tunnel_id, kind, remote, port, t._server_inner, t.mtu, prefixes)

    def remove(self, tunnel_id: int, core: ForwardingCore | None = None) -> None:
        """Forget a tunnel; its counts not yet taken go to ``core``'s state if it still has it."""
        last = self.engine.remove_tunnel(tunnel_id)
        if last is not None and core is not None:
            t = core.get(tunnel_id)
            if t is not None:
                _add(t, last)

    def fold(self, core: ForwardingCore) -> None:
        """Add what the engine counted since the last fold to the core's tunnels and drops."""
        for row in self.engine.take_counters():
            t = core.get(row[0])
            if t is not None:
                _add(t, row)
        for name, n in self.engine.take_drops().items():
            core.drops[Drop[name]] += n

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.stats()
        return out


def _add(t: TunnelState, row: tuple[int, int, int, int, int, float]) -> None:
    _, pin, pout, bin_, bout, seen = row
    t.packets_in += pin
    t.packets_out += pout
    t.bytes_in += bin_
    t.bytes_out += bout
    if pin and seen > t.last_seen:
        t.last_seen = seen


class PeerForwarder:
    """The far end of one tunnel: everything from a TUN to one peer, and back.

    For a client (or a benchmark's peer): ``tun_fd`` carries the IPv6 side and ``sock`` is a
    UDP socket (v6udpv4, to ``peer`` = (IPv4, port)) or a raw protocol-41 socket (v6v4, to
    ``peer`` = (IPv4, 0)). Every IPv6 source is accepted from the peer (it is the internet's
    side); only the peer's outer address (and port) is. Nothing is punted in practice; what
    would be is counted and dropped by :meth:`drain`.
    """

    def __init__(
        self, tun_fd: int, sock: socket.socket, peer: tuple[str, int], mtu: int = 1280
    ) -> None:
        module = load()
        if module is None:
            raise RuntimeError("the C fast path is not built")
        udp = sock.type == socket.SOCK_DGRAM
        self.engine = module.Engine(tun_fd, -1 if udp else sock.fileno())
        index = self.engine.add_udp(sock.fileno()) if udp else -1
        self.engine.set_tunnel(
            1,
            module.KIND_V6UDPV4 if udp else module.KIND_V6V4,
            ipaddress.IPv4Address(peer[0]).packed,
            peer[1] if udp else 0,
            bytes(16),
            65535,
            [(bytes(16), 0)],
            index,
        )
        self.punted = 0

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def drain(self) -> int:
        """Drop what the engine set aside for a slow path there is not; how many."""
        n = len(self.engine.take_punts(4096))
        self.punted += n
        return n

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.stats()
        return out
