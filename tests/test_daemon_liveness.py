"""The daemon's SixXS liveness: a silent AYIYA or heartbeat tunnel is down (and shown so)
until its client is heard again (sixxs.md §3.8).

A real daemon with the userspace data plane in a throwaway network namespace; the 120 s of
silence are stood for by a ``down_after`` of 0 for one sweep.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from tests.tunnelserver.netns import needs_netns

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.config import Config, load_config
from tunnelbroker.daemon import running
from tunnelbroker.protocols.ayiya import AyiyaLink, AyiyaPacket, Role
from tunnelbroker.protocols.heartbeat import build
from tunnelbroker.tunnelserver.kernel import in_throwaway_netns
from tunnelbroker.tunnelserver.tun import iproute_call


def _config(tmp_path: Path) -> Config:
    return load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "broker": {"server_ipv4": "127.0.0.1"},
            "tsp": {"enabled": False},
            "web": {"enabled": False},
            "tunnelserver": {"backend": "userspace"},
            "sixxs": {
                "listen": ["127.0.0.1"],
                "heartbeat_port": 0,
                "tic_port": 0,
                "ayiya_port": 0,
            },
        },
    )


def _silent_for_a_moment(config: Config) -> Config:
    """``config`` with ``down_after`` 0: every tunnel is silent for too long."""
    return config.model_copy(update={"sixxs": config.sixxs.model_copy(update={"down_after": 0})})


async def _until(what: str, cond: Callable[[], bool]) -> None:
    for _ in range(250):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@needs_netns
def test_a_silent_ayiya_tunnel_is_down_until_its_client_is_heard(tmp_path: Path) -> None:
    def scenario() -> None:
        iproute_call(lambda ipr: ipr.link("set", index=1, state="up"))
        asyncio.run(run(_config(tmp_path)))

    async def run(config: Config) -> None:
        async with running(config) as d:
            assert d.broker is not None and d.store is not None and d.dataplane is not None
            uid = d.store.add_user("alice", "x", "0" * 32, "r").id
            t = d.broker.create_tunnel(uid, ManagedRequest("ayiya"), time.time())
            assert t.id is not None and t.secret
            link_net = ipaddress.IPv6Network(t.link_prefix)
            client6, server6 = link_net.network_address + 2, link_net.network_address + 1
            link = AyiyaLink(t.secret, role=Role.CLIENT, local=client6, remote=server6)
            pop = ("127.0.0.1", d.dataplane.ayiya_port)
            loop = asyncio.get_running_loop()

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                second = float(int(time.time()))
                s.sendto(link.noop(second), pop)
                await _until("the endpoint", lambda: t.client_port == s.getsockname()[1])
                stats = d._stats(t.id)
                assert stats is not None and stats.up

                # Silent for down_after: down, and the data plane forgets the endpoint.
                live = d.config
                d.config = _silent_for_a_moment(live)
                d._sweep_ayiya()
                d.config = live
                assert d._silent == {t.id}
                stats = d._stats(t.id)
                assert stats is not None and not stats.up
                # A change of settings re-installs it, still without its endpoint.
                d.broker.modify_tunnel(t.id, time.time(), mtu=1400)
                with d.dataplane._lock:
                    state = d.dataplane.core.get(t.id)
                    assert state is not None and state.mtu == 1400 and state.remote == ""

                # Heard again (a newer second): up, at its address.
                data = bytes(IPv6(src=str(client6), dst="2001:db8::99") / UDP() / b"x")
                s.sendto(link.forward(data, second + 1), pop)
                await _until("up again", lambda: not d._silent)
                stats = d._stats(t.id)
                assert stats is not None and stats.up
                # And the PoP sends to it again: the keepalive echo comes back.
                echo = bytes(IPv6(src=str(client6), dst=str(server6)) / ICMPv6EchoRequest())
                s.sendto(link.forward(echo, second + 2), pop)
                types = []
                for _ in range(5):  # (the namespace's unreachable for 2001:db8::99 too)
                    reply = await asyncio.wait_for(loop.sock_recv(s, 2000), 5)
                    got = link.receive(reply, time.time())
                    assert isinstance(got, AyiyaPacket) and got.payload[6] == 58
                    types.append(got.payload[40])
                    if types[-1] == 129:
                        break
                assert types[-1] == 129, types

    in_throwaway_netns(scenario)


@needs_netns
def test_a_silent_heartbeat_tunnel_leaves_the_data_plane_until_its_next_beat(
    tmp_path: Path,
) -> None:
    def scenario() -> None:
        iproute_call(lambda ipr: ipr.link("set", index=1, state="up"))
        asyncio.run(run(_config(tmp_path)))

    async def run(config: Config) -> None:
        async with running(config) as d:
            assert d.broker is not None and d.store is not None
            assert d.dataplane is not None and d.heartbeat is not None
            dp, hb = d.dataplane, d.heartbeat
            uid = d.store.add_user("alice", "x", "0" * 32, "r").id
            t = d.broker.create_tunnel(uid, ManagedRequest("heartbeat"), time.time())
            assert t.id is not None and t.secret
            client6 = ipaddress.IPv6Network(t.link_prefix).network_address + 2

            def carried() -> bool:
                with dp._lock:
                    return dp.core.get(t.id or 0) is not None

            assert not carried()  # no beat yet: no endpoint
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.sendto(build(client6, t.secret, time.time()), ("127.0.0.1", d.heartbeat_port))
                await _until("the first beat", carried)
                with dp._lock:
                    state = dp.core.get(t.id)
                    assert state is not None and state.remote == "127.0.0.1"
                live = hb.config
                hb.config = _silent_for_a_moment(d.config).sixxs
                assert hb.sweep() == [t.id]
                hb.config = live
                assert not carried() and not hb.alive(t.id)
                # The next beat (a newer second: the last one is remembered) brings it back.
                s.sendto(build(client6, t.secret, time.time() + 1), ("127.0.0.1", d.heartbeat_port))
                await _until("the next beat", carried)
                assert hb.alive(t.id)

    in_throwaway_netns(scenario)
