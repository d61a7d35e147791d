"""The broker behind TIC: what AICCU is told about an account's tunnels."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.broker.test_service import NOW, Harness
from tests.sixxs_config import sixxs_only

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.broker.users import UserService
from tunnelbroker.client.tic import TicClientError, fetch
from tunnelbroker.daemon import running
from tunnelbroker.listeners.tic_backend import BrokerTicBackend
from tunnelbroker.protocols.tic.codec import list_line, parse_show, password_md5, show_lines

PUBLIC = "192.0.43.10"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_accounts_tunnels_routes_and_pops(h: Harness) -> None:
    users = UserService(h.store, h.config.broker.realm)
    alice = users.add("alice", "secretpass")
    users.add("bob", "another password")
    users.set_disabled("bob", True)
    backend = BrokerTicBackend(h.broker, users, h.config)
    assert backend.password_md5("alice") == password_md5("secretpass")
    assert backend.password_md5("nobody") is None and backend.password_md5("bob") is None
    assert backend.user_enabled("alice") and not backend.user_enabled("bob")

    static = h.broker.create_tunnel(alice.id, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    ayiya = h.broker.create_tunnel(alice.id, ManagedRequest("ayiya", prefix_length=48), NOW)
    tunnels = backend.tunnels("alice")
    assert [t.tunnel_id for t in tunnels] == [f"T{static.id}", f"T{ayiya.id}"]
    s, a = tunnels
    assert (s.type, s.ipv4_endpoint, s.password) == ("6in4-static", PUBLIC, None)
    assert (a.type, a.ipv4_endpoint, a.password) == ("ayiya", "ayiya", ayiya.secret)
    assert a.ipv6_endpoint.endswith("::2") and a.ipv6_pop.endswith("::1")
    assert a.heartbeat_interval == h.config.sixxs.heartbeat_interval == 60
    assert a.ipv4_pop == h.config.broker.server_ipv4 and a.pop_id == h.config.broker.pop_name
    # What goes on the wire parses back to the same tunnel (AICCU's key spellings).
    assert parse_show(show_lines(a)).password == ayiya.secret
    assert list_line(s).count(" ") == 3
    routes = backend.routes("alice")
    assert {r.prefix for r in routes} == {
        static.routed_prefix,
        ayiya.routed_prefix,
        ayiya.delegated_prefix,
    }
    assert all(r.tunnel_id in (f"T{static.id}", f"T{ayiya.id}") for r in routes)
    [pop] = backend.pops()
    assert pop.ipv4 == h.config.broker.server_ipv4
    # A TSP tunnel of the account is not TIC's to describe; a deleted one is gone.
    h.broker.delete_tunnel(static.id or 0, NOW)
    assert [t.tunnel_id for t in backend.tunnels("alice")] == [f"T{ayiya.id}"]
    assert backend.tunnels("nobody") == []


async def test_the_daemon_serves_tic(tmp_path: Path) -> None:
    cfg = sixxs_only(tmp_path)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None and d.tic_port
        users = UserService(d.store, cfg.broker.realm)
        alice = users.add("alice", "secretpass")
        t = d.broker.create_tunnel(alice.id, ManagedRequest("ayiya"), NOW)
        result = await fetch("127.0.0.1", "alice", "secretpass", port=d.tic_port, timeout=10)
        assert result.tunnel is not None and result.tunnel.tunnel_id == f"T{t.id}"
        assert result.tunnel.password == t.secret and result.tunnel.type == "ayiya"
        with pytest.raises(TicClientError):
            await fetch("127.0.0.1", "alice", "wrong password", port=d.tic_port, timeout=10)


async def test_the_client_command_lists_and_shows_tunnels_over_tic(tmp_path: Path) -> None:
    cfg = sixxs_only(tmp_path)
    exe = str(Path(sys.executable).with_name("tunnelbroker"))
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None
        alice = UserService(d.store, cfg.broker.realm).add("alice", "secretpass")
        a = d.broker.create_tunnel(alice.id, ManagedRequest("ayiya"), NOW)
        h = d.broker.create_tunnel(alice.id, ManagedRequest("heartbeat"), NOW)

        async def run(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                exe,
                "client",
                f"127.0.0.1:{d.tic_port}",
                "--tic",
                "--user",
                "alice",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": os.environ["PATH"], "TUNNELBROKER_PASSWORD": "secretpass"},
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return proc.returncode or 0, out.decode(), err.decode()

        code, out, err = await run("--list", "--json")
        assert code == 0, err
        assert [e["tunnel"] for e in json.loads(out)] == [f"T{a.id}", f"T{h.id}"]
        code, out, err = await run("--tunnel", f"T{h.id}", "--json")
        assert code == 0, err
        shown = json.loads(out)
        assert shown["tunnel_type"] == "heartbeat" and shown["server_ipv4"] == "192.0.2.1"
        code, out, err = await run()  # two tunnels and none named: AICCU's rule, an error
        assert code == 1 and err.startswith("error:")
