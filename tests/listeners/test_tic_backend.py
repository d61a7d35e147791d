"""The broker behind TIC: what AICCU is told about an account's tunnels."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.broker.test_service import NOW, Harness
from tests.listeners.test_tic import Line
from tests.sixxs_config import sixxs_only

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.broker.users import UserService, digest_ha1_hex, hash_password
from tunnelbroker.client.tic import TicClientError, fetch
from tunnelbroker.daemon import running
from tunnelbroker.listeners.tic_backend import BrokerTicBackend
from tunnelbroker.protocols.tic.codec import (
    challenge_response,
    list_line,
    parse_route,
    parse_show,
    password_md5,
    show_lines,
)

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


async def tic_login(c: Line, username: str, password: str) -> str:
    assert (await c.read()).startswith("200 ")
    assert (await c.ask(f"username {username}")).startswith("200 ")
    challenge = (await c.ask("challenge md5"))[4:]
    return await c.ask(f"authenticate md5 {challenge_response(challenge, password_md5(password))}")


async def test_the_daemon_shows_routes_of_the_account_only(tmp_path: Path) -> None:
    """``route show <RouteId>``: the route's block; another account's RouteId is a 400."""
    cfg = sixxs_only(tmp_path)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None
        users = UserService(d.store, cfg.broker.realm)
        alice, bob = users.add("alice", "secretpass"), users.add("bob", "bobs password")
        a = d.broker.create_tunnel(alice.id, ManagedRequest("ayiya", prefix_length=48), NOW)
        b = d.broker.create_tunnel(bob.id, ManagedRequest("heartbeat"), NOW)
        c = await Line.open(d.tic_port)
        assert (await tic_login(c, "alice", "secretpass")).startswith("200 ")
        listing = await c.block("route list")
        assert listing[0] == "201 Listing routes" and listing[-1] == "202 <route_list>"
        routes = [line.split(" ") for line in listing[1:-1]]
        assert {(tid, prefix) for _, tid, prefix in routes} == {
            (f"T{a.id}", a.routed_prefix),
            (f"T{a.id}", a.delegated_prefix),
        }
        for route_id, tunnel_id, prefix in routes:
            shown = await c.block(f"route show {route_id}")
            assert shown[0] == f"201 Showing route information for {route_id}"
            assert shown[-1] == "202 Done"
            route = parse_route(shown[1:-1])
            assert (route.route_id, route.tunnel_id, route.prefix) == (route_id, tunnel_id, prefix)
        # Bob's route ids follow the same pattern: alice cannot read them.
        assert await c.ask(f"route show R{b.id}-1") == "400 Unknown route"
        assert await c.ask("route show R999999-1") == "400 Unknown route"
        assert await c.ask("route show") == "400 route show needs a RouteId"
        await c.close()
        c = await Line.open(d.tic_port)
        assert (await tic_login(c, "bob", "bobs password")).startswith("200 ")
        shown = await c.block(f"route show R{b.id}-1")
        assert f"Route Prefix: {b.routed_prefix}" in shown
        await c.close()


def add_pre_tic_account(users: UserService, name: str, password: str) -> None:
    """An account as made before TIC support: no MD5 of its password in the store."""
    realm = users.realm
    users.store.add_user(
        name, hash_password(password), digest_ha1_hex(name, realm, password), realm
    )


def test_an_account_without_a_stored_md5_is_explained_in_the_log(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    users = UserService(h.store, h.config.broker.realm)
    add_pre_tic_account(users, "old", "secretpass")
    users.add("new", "secretpass")
    users.add("off", "secretpass")
    users.set_disabled("off", True)
    backend = BrokerTicBackend(h.broker, users, h.config)
    caplog.set_level(logging.INFO, logger="tunnelbroker.listeners.tic_backend")
    assert backend.password_md5("old") is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "'old' cannot log in over TIC" in message and "no MD5 of its password" in message
    assert "web portal" in message and "SASL PLAIN" in message
    assert "tunnelbroker user passwd old" in message
    # Nothing to explain for an ordinary account, an unknown one or a disabled one.
    caplog.clear()
    assert backend.password_md5("new") == password_md5("secretpass")
    assert backend.password_md5("nobody") is None and backend.password_md5("off") is None
    assert not caplog.records
    # One password login (web or TSP PLAIN) stores the MD5; from then on TIC works.
    assert users.authenticate_plain("old", "secretpass") is not None
    assert backend.password_md5("old") == password_md5("secretpass")
    assert not caplog.records


async def test_the_daemon_logs_why_a_pre_tic_account_cannot_log_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = sixxs_only(tmp_path)
    caplog.set_level(logging.INFO)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None
        users = UserService(d.store, cfg.broker.realm)
        add_pre_tic_account(users, "old", "secretpass")
        old = users.get("old")
        assert old is not None
        t = d.broker.create_tunnel(old.id, ManagedRequest("ayiya"), NOW)
        with pytest.raises(TicClientError):
            await fetch("127.0.0.1", "old", "secretpass", port=d.tic_port, timeout=10)
        # The client learns nothing (TIC does not tell which accounts exist); the log does.
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("'old' cannot log in over TIC" in line for line in lines), lines
        # A password reset by the operator fixes it too.
        users.set_password("old", "new secret pass")
        result = await fetch("127.0.0.1", "old", "new secret pass", port=d.tic_port, timeout=10)
        assert result.tunnel is not None and result.tunnel.tunnel_id == f"T{t.id}"
