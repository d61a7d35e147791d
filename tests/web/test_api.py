"""The REST API and /nic/update over real HTTP, served by a real daemon on loopback."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tunnelbroker.broker.service import TunnelEvent
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
            "web": {"listen": ["127.0.0.1"], "port": 0, **web},
            "limits": {"static_endpoint_networks": ["198.51.100.0/24", "127.0.0.0/8"]},
        },
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(_config(tmp_path, nochg_limit=2)) as d:
        assert d.store is not None
        users = UserService(d.store, d.config.broker.realm)
        users.add("alice", PASSWORD)
        users.add("bob", PASSWORD)
        yield d


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    assert daemon.web is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.web.port}") as c:
        yield c


def basic(user: str = "alice", password: str = PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def token_for(http: httpx.AsyncClient, user: str = "alice") -> dict[str, str]:
    r = await http.post("/api/v1/tokens", json={"name": "test"}, headers=basic(user))
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def test_status_is_public(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/v1/status")
    assert r.status_code == 200 and r.json()["tunnels"] == 0
    assert "ayiya" in r.json()["tunnel_types"]


async def test_openapi_document_lists_the_api(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/api/v1/openapi.json")).json()
    assert {
        "/api/v1/tunnels",
        "/api/v1/tunnels/{tunnel_id}",
        "/api/v1/tokens",
        "/nic/update",
    } <= set(doc["paths"])


async def test_tokens_create_list_revoke(http: httpx.AsyncClient) -> None:
    auth = await token_for(http)
    r = await http.get("/api/v1/tokens", headers=auth)
    assert r.status_code == 200 and [t["name"] for t in r.json()] == ["test"]
    assert r.json()[0]["token"] is None  # never shown again
    tid = r.json()[0]["id"]
    assert (await http.delete(f"/api/v1/tokens/{tid}", headers=auth)).status_code == 204
    r = await http.get("/api/v1/tunnels", headers=auth)
    assert r.status_code == 401 and r.json()["error"]


async def test_tunnel_lifecycle(http: httpx.AsyncClient, daemon: Daemon) -> None:
    events: list[TunnelEvent] = []
    assert daemon.broker is not None
    daemon.broker.add_observer(events.append)
    auth = await token_for(http)
    r = await http.post(
        "/api/v1/tunnels",
        json={"type": "static", "client_ipv4": "198.51.100.20", "prefix_length": 48},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["type_name"] == "6in4-static" and t["client_inner"].endswith("::2")
    assert t["delegated_prefix"].endswith("/48") and t["routed_prefix"].endswith("/64")
    assert t["update_key"] and t["secret"] is None
    tid = t["id"]
    r = await http.post("/api/v1/tunnels", json={"type": "ayiya", "mtu": 1428}, headers=auth)
    assert r.status_code == 201 and r.json()["secret"] and r.json()["heartbeat_interval"]
    r = await http.get("/api/v1/tunnels", headers=auth)
    assert [x["type"] for x in r.json()] == ["static", "ayiya"]
    r = await http.patch(
        f"/api/v1/tunnels/{tid}",
        json={"client_ipv4": "198.51.100.21", "mtu": 1400, "dns_servers": ["ns1.example.net"]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["client_ipv4"], r.json()["mtu"]) == ("198.51.100.21", 1400)
    assert events[-1].kind == "updated" and events[-1].tunnel.client_ipv4 == "198.51.100.21"
    key = r.json()["update_key"]
    r = await http.post(f"/api/v1/tunnels/{tid}/update-key", headers=auth)
    assert r.json()["update_key"] != key
    # Bob sees none of it.
    bob = await token_for(http, "bob")
    assert (await http.get(f"/api/v1/tunnels/{tid}", headers=bob)).status_code == 404
    assert (await http.delete(f"/api/v1/tunnels/{tid}", headers=bob)).status_code == 404
    assert (await http.delete(f"/api/v1/tunnels/{tid}", headers=auth)).status_code == 204
    assert events[-1].kind == "down"
    assert (await http.get(f"/api/v1/tunnels/{tid}", headers=auth)).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"type": "static", "client_ipv4": "10.0.0.1"}, 400, "private"),
        ({"type": "static"}, 400, "needs the client's IPv4"),
        ({"type": "gre"}, 422, "type"),
        ({"type": "ayiya", "mtu": 9000}, 422, "mtu"),
        ({"type": "ayiya", "mtu": 1480}, 400, "AYIYA tunnel carries at most 1428"),
        ({"type": "ayiya", "extra": 1}, 422, "extra"),
        ({"type": "ayiya", "prefix_length": 8}, 422, "prefix_length"),
        ({"type": "ayiya", "name": "a\nb"}, 400, "tunnel name"),
        ([], 422, "request"),
    ],
)
async def test_bad_tunnel_requests_get_a_4xx_with_a_reason(
    http: httpx.AsyncClient, body: Any, status: int, words: str
) -> None:
    auth = await token_for(http)
    r = await http.post("/api/v1/tunnels", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


async def test_malformed_requests(http: httpx.AsyncClient) -> None:
    auth = await token_for(http)
    r = await http.post(
        "/api/v1/tunnels",
        content=b"{not json",
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 422 and "error" in r.json()
    r = await http.post("/api/v1/tunnels", content=b"x" * 70000, headers=auth)
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert (await http.get("/api/v1/tunnels/abc", headers=auth)).status_code == 422
    assert (await http.get("/api/v1/nope")).status_code == 404
    r = await http.get("/api/v1/tunnels", headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401
    r = await http.get("/api/v1/tunnels", headers={"Authorization": "Bearer tb_" + "x" * 32})
    assert r.status_code == 401


async def test_failed_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    async with running(_config(tmp_path, login_failure_burst=3)) as d:
        assert d.store is not None and d.web is not None
        UserService(d.store, "tunnelbroker").add("carol", PASSWORD)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.web.port}") as http:
            codes = [
                (await http.get("/api/v1/tunnels", headers=basic("carol", "wrong!!!"))).status_code
                for _ in range(4)
            ]
            assert codes == [401, 401, 401, 429]
            r = await http.get("/api/v1/tunnels", headers=basic("carol"))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


async def test_nic_update(http: httpx.AsyncClient, daemon: Daemon) -> None:
    auth = await token_for(http)
    t = (await http.post("/api/v1/tunnels", json={"type": "heartbeat"}, headers=auth)).json()
    key = t["update_key"]
    host = {"hostname": f"T{t['id']}"}

    async def nic(params: dict[str, str], user: str = "alice", pw: str = key) -> httpx.Response:
        return await http.get("/nic/update", params=params, headers=basic(user, pw))

    r = await nic({**host, "myip": "198.51.100.30"})
    assert (r.status_code, r.text) == (200, "good 198.51.100.30\n")
    assert daemon.broker is not None
    assert daemon.broker.tunnels[t["id"]].client_ipv4 == "198.51.100.30"
    # No myip: the caller's own address.
    r = await nic(host, pw=PASSWORD)
    assert r.text == "good 127.0.0.1\n"
    assert (await nic(host)).text == "nochg 127.0.0.1\n"
    assert (await nic(host)).text == "nochg 127.0.0.1\n"
    assert (await nic(host)).text == "abuse\n"  # nochg_limit = 2
    r = await nic({**host, "myip": "198.51.100.31"})
    assert r.text == "good 198.51.100.31\n"  # a real change is always let through
    assert (await nic({"hostname": "T999"}, pw=PASSWORD)).text == "nohost\n"
    assert (await nic({}, pw=PASSWORD)).text == "nohost\n"
    # An update key is a credential for its own tunnel only.
    assert (await nic({"hostname": "T999"})).text == "badauth\n"
    r = await nic(host, pw="wrong key!")
    assert (r.status_code, r.text) == (401, "badauth\n")
    r = await nic(host, user="bob", pw=PASSWORD)  # bob's password, alice's tunnel
    assert r.text == "nohost\n"
    r = await nic({**host, "myip": "2001:db8::1"})
    assert r.status_code == 400 and r.text.startswith("badip")
    r = await http.get("/nic/update", params=host)
    assert (
        r.status_code == 401
        and r.text == "badauth\n"
        and "basic" in r.headers["www-authenticate"].lower()
    )


async def test_metrics_for_allowed_networks_only(http: httpx.AsyncClient, tmp_path: Path) -> None:
    auth = await token_for(http)
    await http.post("/api/v1/tunnels", json={"type": "ayiya"}, headers=auth)
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'tunnelbroker_tunnels{kind="ayiya",type="ayiya"} 1.0' in r.text
    assert (
        "tunnelbroker_pool_utilisation" in r.text and "tunnelbroker_tsp_sessions_started" in r.text
    )
    assert "tunnelbroker_dataplane_icmp_rate_limited_total 0.0" in r.text
    async with running(_config(tmp_path / "other", metrics_from=["192.0.2.0/24"])) as d:
        assert d.web is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.web.port}") as other:
            assert (await other.get("/metrics")).status_code == 404


async def test_configuration_downloads(http: httpx.AsyncClient) -> None:
    auth = await token_for(http)
    t = (
        await http.post(
            "/api/v1/tunnels", json={"type": "static", "client_ipv4": "198.51.100.20"}, headers=auth
        )
    ).json()
    r = await http.get(f"/api/v1/tunnels/{t['id']}/config", headers=auth)
    ids = [p["id"] for p in r.json()]
    assert "linux" in ids and "mikrotik" in ids and "gogoc" not in ids
    r = await http.get(f"/api/v1/tunnels/{t['id']}/config/linux", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-shellscript")
    assert f"ip -6 addr add {t['client_inner']}/64" in r.text
    assert f'filename="tb{t["id"]}-linux.sh"' in r.headers["content-disposition"]
    r = await http.get(f"/api/v1/tunnels/{t['id']}/config/amiga", headers=auth)
    assert r.status_code == 404 and "unknown platform" in r.json()["error"]
    a = (await http.post("/api/v1/tunnels", json={"type": "ayiya"}, headers=auth)).json()
    r = await http.get(f"/api/v1/tunnels/{a['id']}/config/linux", headers=auth)
    assert r.status_code == 400 and "cannot run AYIYA tunnels" in r.json()["error"]
    r = await http.get(f"/api/v1/tunnels/{a['id']}/config/aiccu", headers=auth)
    assert r.status_code == 200 and f"tunnel_id T{a['id']}" in r.text and "username alice" in r.text
