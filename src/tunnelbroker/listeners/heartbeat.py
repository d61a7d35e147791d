"""Heartbeats for 6in4-heartbeat tunnels (SixXS, UDP 3740; sixxs.md §4).

A valid beat (the tunnel's own secret, the clock window, not a replay) moves the tunnel's
endpoint to the beat's source address and keeps the tunnel up; a tunnel with no valid beat for
``[sixxs] down_after`` seconds is down, and the data plane stops carrying it until the next
beat. Everything else is dropped and counted by reason, never answered: a reply would make the
port a reflector.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from tunnelbroker.broker.model import BrokerError
from tunnelbroker.broker.service import Broker, TunnelEvent
from tunnelbroker.config import SixxsSection
from tunnelbroker.protocols.ayiya.replay import ReplayWindow
from tunnelbroker.protocols.heartbeat import Heartbeat, HeartbeatDrop, parse, verify
from tunnelbroker.store.records import TunnelRecord

log = logging.getLogger(__name__)

#: Beats remembered per tunnel for replay detection: one a minute needs very few.
_REPLAY_CAPACITY = 64


class HeartbeatService:
    """Liveness and endpoint learning of heartbeat tunnels (call from the event loop)."""

    def __init__(
        self,
        broker: Broker,
        config: SixxsSection,
        on_liveness: Callable[[TunnelRecord, bool], None],
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.config = config
        self.on_liveness = on_liveness
        self.wall, self.mono = wall, mono
        self.drops: Counter[HeartbeatDrop] = Counter()
        self.accepted = 0
        self._by_address: dict[ipaddress.IPv6Address, int] = {}
        self._replay: dict[int, ReplayWindow] = {}
        self._last: dict[int, float] = {}
        now = mono()
        for t in broker.tunnels.values():
            self._index(t)
            # After a restart a tunnel with a known endpoint stays up until it misses its beats.
            if t.kind == "heartbeat" and t.client_ipv4 and t.id is not None:
                self._last[t.id] = now
        broker.add_observer(self.observe)

    def alive(self, tunnel_id: int) -> bool:
        last = self._last.get(tunnel_id)
        # sixxs.md §3.8: silent for down_after seconds or more is down.
        return last is not None and self.mono() - last < self.config.down_after

    def observe(self, event: TunnelEvent) -> None:
        t = event.tunnel
        if t.id is None or t.kind != "heartbeat":
            return
        if event.kind == "down":
            self._by_address = {a: i for a, i in self._by_address.items() if i != t.id}
            self._replay.pop(t.id, None)
            self._last.pop(t.id, None)
        else:
            self._index(t)

    def datagram(self, data: bytes, source: str) -> HeartbeatDrop | None:
        """One datagram from ``source``; the drop reason, or None if accepted."""
        result = self._check(data, source)
        if isinstance(result, HeartbeatDrop):
            self.drops[result] += 1
            log.debug("heartbeat from %s dropped: %s", source, result.value)
            return result
        return None

    def sweep(self) -> list[int]:
        """Mark tunnels silent for too long down; returns their ids."""
        now = self.mono()
        gone = [tid for tid, last in self._last.items() if now - last >= self.config.down_after]
        for tid in gone:
            del self._last[tid]
            t = self.broker.tunnels.get(tid)
            if t is not None:
                log.info("tunnel %s: no heartbeat for %ss, down", tid, self.config.down_after)
                self.on_liveness(t, False)
        return gone

    def _check(self, data: bytes, source: str) -> Heartbeat | HeartbeatDrop:
        beat = parse(data)
        if isinstance(beat, HeartbeatDrop):
            return beat
        tid = self._by_address.get(beat.address)
        if tid is None:
            return HeartbeatDrop.UNKNOWN_TUNNEL
        t = self.broker.tunnels.get(tid)
        if t is None or t.secret is None:
            return HeartbeatDrop.UNKNOWN_TUNNEL
        if t.user_state != "enabled" or t.admin_state != "enabled":
            return HeartbeatDrop.TUNNEL_DISABLED
        replay = self._replay.setdefault(
            tid, ReplayWindow(2 * self.config.clock_window, _REPLAY_CAPACITY)
        )
        checked = verify(
            beat,
            t.secret,
            self.wall(),
            source,
            replay=replay,
            clock_window=self.config.clock_window,
        )
        if isinstance(checked, HeartbeatDrop):
            return checked
        try:
            ipaddress.IPv4Address(source)
        except ValueError:
            return HeartbeatDrop.BAD_SENDER  # 6in4 needs an IPv4 endpoint
        was_alive = self.alive(tid)
        self._last[tid] = self.mono()
        self.accepted += 1
        try:
            moved = self.broker.update_endpoint(tid, source, None, self.wall(), learnt=True)
        except BrokerError as e:
            # Another tunnel already uses this address for protocol 41.
            self.broker.record_error(tid, f"heartbeat from {source}: {e}", self.wall())
            del self._last[tid]
            return HeartbeatDrop.TUNNEL_DISABLED
        if not moved and not was_alive:
            self.on_liveness(t, True)
        return checked

    def _index(self, t: TunnelRecord) -> None:
        if t.kind != "heartbeat" or t.id is None or not t.link_prefix:
            return
        link = ipaddress.IPv6Network(t.link_prefix)
        self._by_address[link.network_address + 2] = t.id


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: HeartbeatService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        host = addr[0]
        source = host.decode() if isinstance(host, bytes) else host
        if source.startswith("::ffff:"):
            source = source[7:]
        self.service.datagram(data, source)


async def start_heartbeat(
    service: HeartbeatService, listen: list[str], port: int
) -> tuple[list[asyncio.DatagramTransport], int]:
    """UDP listeners on every address (the same port on all; 0 picks one)."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    try:
        for addr in listen:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr, port))
            except OSError as e:
                sock.close()
                raise OSError(
                    e.errno, f"heartbeat: cannot listen on {addr} port {port}: {e.strerror}"
                ) from e
            port = sock.getsockname()[1]
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(service), sock=sock
            )
            transports.append(transport)
    except BaseException:
        for t in transports:
            t.close()
        raise
    return transports, port
