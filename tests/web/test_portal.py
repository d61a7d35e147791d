"""The portal's pages and forms over real HTTP: sessions, CSRF, sign-up modes, tunnels, admin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tunnelbroker.broker.users import UserService
from tunnelbroker.config import load_config
from tunnelbroker.daemon import Daemon, running

PASSWORD = "correct horse battery"


def _config(tmp: Path, **web: Any) -> Any:
    return load_config(
        None,
        {
            "data_dir": str(tmp),
            "tsp": {"listen": ["127.0.0.1"], "port": 0},
            "tunnelserver": {"backend": "none"},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
            "web": {"listen": ["127.0.0.1"], "port": 0, "secure_cookies": False, **web},
            "limits": {"static_endpoint_networks": ["198.51.100.0/24"]},
        },
    )


async def _client(d: Daemon) -> httpx.AsyncClient:
    assert d.web is not None
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.web.port}")


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


async def post(http: httpx.AsyncClient, path: str, page: str, **data: str) -> httpx.Response:
    token = csrf((await http.get(page)).text)
    return await http.post(path, data={"csrf": token, **data})


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(_config(tmp_path, signup="open")) as d:
        yield d


async def test_sign_up_create_use_and_delete_a_tunnel(daemon: Daemon) -> None:
    async with await _client(daemon) as http:
        r = await post(
            http, "/signup", "/signup", username="dave", password=PASSWORD, password2=PASSWORD
        )
        assert r.status_code == 303 and r.headers["location"] == "/tunnels"
        r = await http.get("/tunnels")
        assert "Welcome, dave" in r.text and "No tunnels yet" in r.text
        r = await post(
            http, "/tunnels", "/tunnels", type="static", client_ipv4="10.1.1.1", mtu="1280"
        )
        assert r.status_code == 400 and "private (RFC 1918)" in r.text
        r = await post(
            http,
            "/tunnels",
            "/tunnels",
            type="static",
            client_ipv4="198.51.100.40",
            mtu="1480",
            want48="1",
            name="home",
        )
        assert r.status_code == 303
        page = (await http.get(r.headers["location"])).text
        assert "198.51.100.40" in page and "/48" in page and "1480" in page
        tid = int(r.headers["location"].rsplit("/", 1)[1])
        r = await post(
            http, f"/tunnels/{tid}/endpoint", f"/tunnels/{tid}", client_ipv4="198.51.100.41"
        )
        assert r.status_code == 303
        assert daemon.broker is not None
        assert daemon.broker.tunnels[tid].client_ipv4 == "198.51.100.41"
        r = await post(http, f"/tunnels/{tid}/rdns", f"/tunnels/{tid}", ns="ns1.example.net")
        assert r.status_code == 303 and daemon.broker.tunnels[tid].dns_servers == [
            "ns1.example.net"
        ]
        r = await post(http, f"/tunnels/{tid}/settings", f"/tunnels/{tid}", mtu="9000", name="x")
        assert r.status_code == 400 and "MTU" in r.text
        r = await post(http, f"/tunnels/{tid}/delete", f"/tunnels/{tid}")
        assert r.status_code == 303 and tid not in daemon.broker.tunnels
        # Another user's tunnel, or a missing one, is a 404 page.
        assert (await http.get(f"/tunnels/{tid}")).status_code == 404


async def test_forms_need_the_session_csrf_token(daemon: Daemon) -> None:
    async with await _client(daemon) as http:
        r = await http.post(
            "/signup", data={"username": "eve", "password": PASSWORD, "password2": PASSWORD}
        )
        assert r.status_code == 403 and "reload the page" in r.text
        r = await http.post("/login", data={"csrf": "forged", "username": "x", "password": "y"})
        assert r.status_code == 403


async def test_pages_need_a_login(daemon: Daemon) -> None:
    async with await _client(daemon) as http:
        r = await http.get("/tunnels")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert (await http.get("/admin")).status_code == 303


async def test_login_failures_and_open_redirects(daemon: Daemon) -> None:
    assert daemon.store is not None
    UserService(daemon.store, "tunnelbroker").add("frank", PASSWORD)
    async with await _client(daemon) as http:
        r = await post(http, "/login", "/login", username="frank", password="nope nope")
        assert r.status_code == 401 and "Wrong user name or password" in r.text
        token = csrf((await http.get("/login")).text)
        r = await http.post(
            "/login?next=//evil.example",
            data={"csrf": token, "username": "frank", "password": PASSWORD},
        )
        assert r.status_code == 303 and r.headers["location"] == "/tunnels"


async def test_approval_and_admin_pages(tmp_path: Path) -> None:
    async with running(_config(tmp_path, signup="approval")) as d:
        assert d.store is not None
        UserService(d.store, "tunnelbroker").add("root", PASSWORD, is_admin=True)
        async with await _client(d) as http, await _client(d) as admin:
            r = await post(
                http, "/signup", "/signup", username="gina", password=PASSWORD, password2=PASSWORD
            )
            assert r.status_code == 303 and r.headers["location"] == "/login"
            r = await post(http, "/login", "/login", username="gina", password=PASSWORD)
            assert r.status_code == 401  # not approved yet
            await post(admin, "/login", "/login", username="root", password=PASSWORD)
            page = (await admin.get("/admin")).text
            assert "gina" in page and "awaiting approval" in page and "sign-up" in page
            r = await post(admin, "/admin/users/gina/enable", "/admin")
            assert r.status_code == 303
            r = await post(http, "/login", "/login", username="gina", password=PASSWORD)
            assert r.status_code == 303
            r = await post(admin, "/admin/invites", "/admin")
            page = (await admin.get("/admin")).text
            assert "user enabled" in page and "invitation created" in page
            # Not an admin: no admin page.
            assert (await http.get("/admin")).status_code == 403


async def test_invitations(tmp_path: Path) -> None:
    async with running(_config(tmp_path, signup="invite")) as d:
        assert d.store is not None
        UserService(d.store, "tunnelbroker").add("root", PASSWORD, is_admin=True)
        async with await _client(d) as admin, await _client(d) as http:
            await post(admin, "/login", "/login", username="root", password=PASSWORD)
            await post(admin, "/admin/invites", "/admin")
            m = re.search(r'id="new-invite">([^<]+)<', (await admin.get("/admin")).text)
            assert m
            code = m.group(1)
            r = await post(
                http,
                "/signup",
                "/signup",
                username="hal",
                password=PASSWORD,
                password2=PASSWORD,
                invite="wrong",
            )
            assert r.status_code == 400 and "invitation code is wrong" in r.text
            r = await post(
                http,
                "/signup",
                "/signup",
                username="hal",
                password=PASSWORD,
                password2=PASSWORD,
                invite=code,
            )
            assert r.status_code == 303
            r = await post(
                http,
                "/signup",
                "/signup",
                username="ian",
                password=PASSWORD,
                password2=PASSWORD,
                invite=code,
            )
            assert r.status_code == 400  # used


async def test_closed_sign_up(tmp_path: Path) -> None:
    async with running(_config(tmp_path, signup="closed")) as d, await _client(d) as http:
        assert (await http.get("/signup")).status_code == 403
        assert "Sign up" not in (await http.get("/")).text


async def test_change_password_and_tokens(daemon: Daemon) -> None:
    assert daemon.store is not None
    UserService(daemon.store, "tunnelbroker").add("jo", PASSWORD)
    async with await _client(daemon) as http:
        await post(http, "/login", "/login", username="jo", password=PASSWORD)
        r = await post(
            http,
            "/account/password",
            "/account",
            current="bad password",
            password="another long one",
            password2="another long one",
        )
        assert r.status_code == 401
        r = await post(
            http,
            "/account/password",
            "/account",
            current=PASSWORD,
            password="another long one",
            password2="another long one",
        )
        assert r.status_code == 303
        r = await post(http, "/account/tokens", "/account", name="laptop")
        m = re.search(r'id="new-token">([^<]+)<', (await http.get("/account")).text)
        assert m and m.group(1).startswith("tb_")
        r = await http.get("/api/v1/tunnels", headers={"Authorization": f"Bearer {m.group(1)}"})
        assert r.status_code == 200


async def test_tsp_type_explains_the_client_setup(daemon: Daemon) -> None:
    assert daemon.store is not None
    UserService(daemon.store, "tunnelbroker").add("lee", PASSWORD)
    async with await _client(daemon) as http:
        await post(http, "/login", "/login", username="lee", password=PASSWORD)
        r = await post(http, "/tunnels", "/tunnels", type="tsp", mtu="1280")
        assert r.status_code == 200
        assert "--user lee" in r.text and f"127.0.0.1:{daemon.tsp_port}" in r.text
        assert "userid=lee" in r.text


async def test_reachability_check_refuses_an_endpoint_that_does_not_answer(
    tmp_path: Path,
) -> None:
    async with running(_config(tmp_path, signup="open", reachability_check=True)) as d:
        async with await _client(d) as http:
            await post(
                http, "/signup", "/signup", username="kim", password=PASSWORD, password2=PASSWORD
            )
            # Nothing on this host routes to 198.51.100.0/24: no echo reply can come back.
            r = await post(
                http, "/tunnels", "/tunnels", type="static", client_ipv4="198.51.100.99", mtu="1280"
            )
            assert r.status_code == 400 and "does not answer ICMP echo" in r.text
            assert d.broker is not None and d.broker.tunnels == {}
