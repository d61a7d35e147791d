"""The C fast path's Python side: loading it, and keeping it in step with ForwardingCore.

``_fastpath.c`` forwards the common case (v6v4, v6udpv4 and AYIYA Forwards between the TUN
and the tunnel sockets) on a thread of its own without the GIL, and punts everything else to
the Python :class:`~tunnelbroker.tunnelserver.engine.ForwardingCore`, which stays the one place
where the semantics live (docs/dataplane.md). This module loads the extension (or says once,
clearly, that forwarding will be slower without it), mirrors tunnel states into it, and folds
its counters and drops back into the core so expiry, the store and the metrics see every packet.

An AYIYA tunnel has one replay cache, the engine's: its Python link checks punted datagrams
against it through :class:`EngineReplay`, so a datagram accepted in C is a replay in Python too.

A one-tunnel :class:`PeerForwarder` serves the other end of a tunnel (a client, or a
benchmark's peer): TUN to one UDP, protocol-41 or AYIYA peer and back.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from types import ModuleType
from typing import Any

from tunnelbroker.protocols.ayiya import AyiyaDrop, AyiyaLink, ReplayCache, Verdict
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

    def add_ayiya(self, sock: socket.socket) -> None:
        """Read (and send AYIYA on) this IPv4 UDP socket; what C does not decide is punted
        with ``PUNT_AYIYA``."""
        self.engine.add_ayiya(sock.fileno())

    def remove_ayiya(self) -> None:
        """Stop using the AYIYA socket; it may be closed as soon as this returns."""
        self.engine.remove_ayiya()

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
        prefixes = [(p.network_address.packed, p.prefixlen) for p in t.prefixes if p.version == 6]
        if t.encap is Encap.AYIYA:
            link = t.ayiya
            assert link is not None, "an AYIYA tunnel needs its link"
            # The same key keeps the engine's replay cache, as core.add kept this link.
            self.engine.set_tunnel(
                t.tunnel_id,
                m.KIND_AYIYA,
                ipaddress.IPv4Address(t.remote).packed if t.remote else b"",
                t.port or 0,
                t._server_inner,
                t.mtu,
                prefixes,
                identity=link.remote.packed,
                local=link.local.packed,
                key=link.key,
                clock_window=link.clock_window,
            )
            replay = link.replay
            if not (isinstance(replay, EngineReplay) and replay.is_for(self.engine, t.tunnel_id)):
                link.replay = EngineReplay(self.engine, t.tunnel_id)
            return
        if t.encap is Encap.V6V4:
            kind, remote, port = m.KIND_V6V4, ipaddress.IPv4Address(t.remote).packed, 0
        else:
            kind, remote, port = m.KIND_V6UDPV4, ipaddress.IPv4Address(t.remote).packed, t.port or 0
        self.engine.set_tunnel(t.tunnel_id, kind, remote, port, t._server_inner, t.mtu, prefixes)

    def set_endpoint(self, tunnel_id: int, remote: str, port: int) -> bool:
        """An AYIYA tunnel's client is at ``remote``:``port`` now (the core learnt it from a
        punted datagram), or nowhere known (``remote`` empty: the tunnel fell silent); False if
        the engine has no such AYIYA tunnel."""
        packed = ipaddress.IPv4Address(remote).packed if remote else b""
        found: bool = self.engine.set_endpoint(tunnel_id, packed, port)
        return found

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
        # Each of these is also in take_drops() as BAD_AYIYA, as core._ayiya_drop counts.
        for name, n in self.engine.take_ayiya_drops().items():
            core.ayiya_drops[AyiyaDrop[name]] += n

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.stats()
        return out


def _add(t: TunnelState, row: tuple[int, int, int, int, int, float]) -> None:
    _, pin, pout, bin_, bout, seen = row
    t.packets_in += pin
    t.packets_out += pout
    t.bytes_in += bin_
    t.bytes_out += bout
    # Any valid AYIYA datagram proves the tunnel alive, even one whose payload was dropped.
    if seen > t.last_seen:
        t.last_seen = seen


_VERDICTS = (Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.STALE)


class EngineReplay:
    """:class:`~tunnelbroker.protocols.ayiya.ReplayCache`'s interface over the engine's cache
    for one AYIYA tunnel: the C thread and the Python core share one replay state.

    Should the engine not hold the tunnel (it always does once :meth:`FastPath.install` ran), a
    private cache keeps the link working rather than failing on every datagram.
    """

    __slots__ = ("_engine", "_fallback", "_id")

    def __init__(self, engine: Any, tunnel_id: int) -> None:
        self._engine = engine
        self._id = tunnel_id
        self._fallback: ReplayCache | None = None

    def is_for(self, engine: Any, tunnel_id: int) -> bool:
        return self._engine is engine and self._id == tunnel_id

    def check_and_record(self, epoch: int, digest: bytes, moving: bool = False) -> Verdict:
        if self._fallback is None:
            try:
                v: int = self._engine.ayiya_replay_check(self._id, epoch, digest, moving)
                return _VERDICTS[v]
            except KeyError:
                log.error("AYIYA tunnel %s is not in the C engine: own replay cache", self._id)
                self._fallback = ReplayCache()
        return self._fallback.check_and_record(epoch, digest, moving)

    @property
    def newest(self) -> int | None:
        if self._fallback is not None:
            return self._fallback.newest
        try:
            newest: int | None = self._engine.ayiya_replay_state(self._id)[0]
        except KeyError:
            return None
        return newest

    @property
    def used(self) -> int:
        if self._fallback is not None:
            return self._fallback.used
        try:
            used: int = self._engine.ayiya_replay_state(self._id)[1]
        except KeyError:
            return 0
        return used

    def __len__(self) -> int:
        return self.used

    @property
    def slots(self) -> int:
        return self._fallback.slots if self._fallback is not None else _SLOTS

    def seen(self, digest: bytes) -> bool:
        if self._fallback is not None:
            return self._fallback.seen(digest)
        try:
            seen: bool = self._engine.ayiya_replay_seen(self._id, digest)
        except KeyError:
            return False
        return seen


#: Slots of the engine's replay cache (ReplayCache's default; the engine's REPLAY_SLOTS).
_SLOTS = 1024


class PeerForwarder:
    """The far end of one tunnel: everything from a TUN to one peer, and back.

    For a client (or a benchmark's peer): ``tun_fd`` carries the IPv6 side and ``sock`` is a
    UDP socket (v6udpv4, to ``peer`` = (IPv4, port)), a raw protocol-41 socket (v6v4, to
    ``peer`` = (IPv4, 0)) or, with ``ayiya``, a UDP socket to the PoP's AYIYA port. Every IPv6
    source is accepted from the peer (it is the internet's side); only the peer's outer address
    (and port) is. What C does not decide is punted: the caller takes it (:meth:`take_punts`,
    when :attr:`engine` ``.punt_fd`` is readable) or discards it (:meth:`drain`).

    ``ayiya`` is the client's link (role CLIENT: ``local`` our tunnel address, ``remote`` the
    PoP's): datagrams to the peer are signed Forwards from ``local``; from the peer, Forwards
    of IPv6 that pass the clock, signature and replay checks reach the TUN, and everything else
    (echo requests, NOOPs, IPv4 inside, datagrams from elsewhere) is punted. The link's replay
    cache becomes the engine's, so a Python receive path for those would share it.
    """

    def __init__(
        self,
        tun_fd: int,
        sock: socket.socket,
        peer: tuple[str, int],
        mtu: int = 1280,
        *,
        ayiya: AyiyaLink | None = None,
    ) -> None:
        module = load()
        if module is None:
            raise RuntimeError("the C fast path is not built")
        udp = sock.type == socket.SOCK_DGRAM
        if ayiya is not None and not udp:
            raise ValueError("AYIYA runs over a UDP socket")
        self.module = module
        self.engine = module.Engine(tun_fd, -1 if udp else sock.fileno())
        peer4 = ipaddress.IPv4Address(peer[0]).packed
        if ayiya is not None:
            self.engine.add_ayiya(sock.fileno())
            self.engine.set_tunnel(
                1,
                module.KIND_AYIYA,
                peer4,
                peer[1],
                bytes(16),
                65535,
                [(bytes(16), 0)],
                identity=ayiya.remote.packed,
                local=ayiya.local.packed,
                key=ayiya.key,
                clock_window=ayiya.clock_window,
            )
            ayiya.replay = EngineReplay(self.engine, 1)
        else:
            index = self.engine.add_udp(sock.fileno()) if udp else -1
            self.engine.set_tunnel(
                1,
                module.KIND_V6UDPV4 if udp else module.KIND_V6V4,
                peer4,
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

    def take_punts(self, max: int = 4096) -> list[tuple[int, int, bytes, bytes, int, bytes]]:
        """What the engine set aside, for a caller that has a slow path (an AYIYA client
        answering echo requests, say): ``(kind, sock, data, src4, port, local4)``."""
        punts: list[tuple[int, int, bytes, bytes, int, bytes]] = self.engine.take_punts(max)
        self.punted += len(punts)
        return punts

    def drops(self) -> dict[str, int]:
        """What the engine dropped since the last call: Drop and AyiyaDrop names, counts."""
        out: dict[str, int] = self.engine.take_drops()
        out.update(self.engine.take_ayiya_drops())
        return out

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.stats()
        return out
