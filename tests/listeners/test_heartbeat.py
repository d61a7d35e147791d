"""Heartbeats for 6in4-heartbeat tunnels: endpoint learning, liveness, drops by reason."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.broker.test_service import Harness
from tests.sixxs_config import sixxs_only

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.daemon import running
from tunnelbroker.listeners.heartbeat import HeartbeatService
from tunnelbroker.protocols.heartbeat import HeartbeatDrop, build
from tunnelbroker.store.records import TunnelRecord

WALL = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.wall, self.mono = WALL, 1000.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def client_address(t: TunnelRecord) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Network(t.link_prefix).network_address + 2


def test_beats_learn_the_endpoint_and_keep_the_tunnel_up(h: Harness) -> None:
    uid = h.store.add_user("alice", "x", "0" * 32, "r").id
    t = h.broker.create_tunnel(uid, ManagedRequest("heartbeat"), WALL)
    clock = Clock()
    changes: list[tuple[int | None, bool]] = []
    hb = HeartbeatService(
        h.broker,
        h.config.sixxs,
        lambda r, up: changes.append((r.id, up)),
        wall=lambda: clock.wall,
        mono=lambda: clock.mono,
    )
    assert t.id is not None and not hb.alive(t.id)
    secret = t.secret or ""
    beat = build(client_address(t), secret, clock.wall)
    assert hb.datagram(beat, "198.51.100.7") is None
    assert t.client_ipv4 == "198.51.100.7" and hb.alive(t.id)
    assert h.events[-1].kind == "updated"  # the data plane follows the broker's event
    # The same datagram again is a replay, even from elsewhere; the endpoint stays.
    assert hb.datagram(beat, "203.0.113.9") is HeartbeatDrop.REPLAYED
    assert t.client_ipv4 == "198.51.100.7"
    # The client moves.
    clock.advance(60)
    assert hb.datagram(build(client_address(t), secret, clock.wall), "203.0.113.9") is None
    assert t.client_ipv4 == "203.0.113.9"
    # It falls silent: down after down_after seconds (sixxs.md §3.8: "≥120 s"), up again
    # (same endpoint) at the next beat.
    clock.advance(h.config.sixxs.down_after - 1)
    assert hb.sweep() == [] and hb.alive(t.id)
    clock.advance(1)
    assert hb.sweep() == [t.id] and not hb.alive(t.id) and changes == [(t.id, False)]
    assert hb.datagram(build(client_address(t), secret, clock.wall), "203.0.113.9") is None
    assert changes[-1] == (t.id, True) and hb.alive(t.id)
    assert hb.accepted == 3 and hb.drops[HeartbeatDrop.REPLAYED] == 1


def test_bad_beats_are_dropped_and_counted(h: Harness) -> None:
    uid = h.store.add_user("alice", "x", "0" * 32, "r").id
    t = h.broker.create_tunnel(uid, ManagedRequest("heartbeat"), WALL)
    other = h.broker.create_tunnel(uid, ManagedRequest("ayiya"), WALL)
    clock = Clock()
    hb = HeartbeatService(
        h.broker,
        h.config.sixxs,
        lambda r, up: None,
        wall=lambda: clock.wall,
        mono=lambda: clock.mono,
    )
    addr, secret = client_address(t), t.secret or ""
    cases = [
        (build(addr, "not the secret", clock.wall), HeartbeatDrop.BAD_SIGNATURE),
        (build(addr, secret, clock.wall - 121), HeartbeatDrop.CLOCK_SKEW),
        (build(addr, secret, clock.wall, sender="192.0.2.99"), HeartbeatDrop.SENDER_MISMATCH),
        (
            build(client_address(other), other.secret or "", clock.wall),
            HeartbeatDrop.UNKNOWN_TUNNEL,
        ),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender", HeartbeatDrop.MALFORMED),
        (b"GET / HTTP/1.0\r\n", HeartbeatDrop.NOT_HEARTBEAT),
        (b"x" * 300, HeartbeatDrop.TOO_LONG),
    ]
    for data, reason in cases:
        assert hb.datagram(data, "198.51.100.7") is reason, reason
        assert hb.drops[reason] == 1
    assert t.client_ipv4 is None and hb.accepted == 0
    h.broker.modify_tunnel(t.id or 0, WALL, user_state="disabled")
    assert (
        hb.datagram(build(addr, secret, clock.wall), "198.51.100.7")
        is HeartbeatDrop.TUNNEL_DISABLED
    )


async def test_over_udp_in_the_daemon(tmp_path: Path) -> None:
    cfg = sixxs_only(tmp_path)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None and d.heartbeat is not None
        uid = d.store.add_user("alice", "x", "0" * 32, "r").id
        t = d.broker.create_tunnel(uid, ManagedRequest("heartbeat"), 1.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            beat = build(client_address(t), t.secret or "", time.time())
            s.sendto(beat, ("127.0.0.1", d.heartbeat_port))
            for _ in range(100):
                if t.client_ipv4 is not None:
                    break
                await asyncio.sleep(0.02)
        assert t.client_ipv4 == "127.0.0.1" and d.heartbeat.alive(t.id or 0)
