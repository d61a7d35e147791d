"""A TIC tunnel as the client's data plane takes it, and the login against real TIC servers."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from tests.listeners.test_tic import TUNNEL, make_certificate, memory_backend, tic_server

from tunnelbroker.client.dataplane import interface_address, interface_mtu
from tunnelbroker.client.sixxs import as_negotiated, tic_negotiate
from tunnelbroker.client.tic import TicClientError
from tunnelbroker.protocols.tic import TicTunnel


def tic(**kw: object) -> TicTunnel:
    base: dict[str, object] = dict(
        tunnel_id="T7",
        type="ayiya",
        ipv6_endpoint="2001:db8:8000:7::2",
        ipv6_pop="2001:db8:8000:7::1",
        ipv6_prefix_length=64,
        pop_id="pop01",
        ipv4_endpoint="ayiya",
        ipv4_pop="198.51.100.1",
        password="s3cret",
        heartbeat_interval=60,
    )
    base.update(kw)
    return TicTunnel(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "endpoint", "expected"),
    [
        ("ayiya", "ayiya", "ayiya"),
        ("6in4-heartbeat", "heartbeat", "heartbeat"),
        ("6in4-static", "192.0.2.9", "v6v4"),
    ],
)
def test_types(kind: str, endpoint: str, expected: str) -> None:
    n = as_negotiated("pop.example.net", tic(type=kind, ipv4_endpoint=endpoint), "192.0.2.9")
    assert n.tunnel_type == expected and n.secret == "s3cret"
    assert (n.server_ipv4, n.client_ipv6, n.keepalive_address) == (
        "198.51.100.1",
        "2001:db8:8000:7::2",
        "2001:db8:8000:7::1",
    )
    assert n.keepalive_interval == 60 and n.client_ipv4 == "192.0.2.9"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"type": "l2tp"}, "not one we run"),
        ({"admin_state": "disabled"}, "not enabled"),
        ({"password": None}, "no password"),
    ],
)
def test_unusable_tunnels_are_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(TicClientError, match=words) as e:
        as_negotiated("pop", tic(**changes), "192.0.2.9")
    assert e.value.permanent  # no second login makes it usable


# ------------------------------------------------------------------ MTU and prefix length


@pytest.mark.parametrize("kind", ["ayiya", "6in4-heartbeat", "6in4-static"])
@pytest.mark.parametrize("mtu", [1280, 1428, 1480])
def test_the_tunnel_mtu_is_taken(kind: str, mtu: int, caplog: pytest.LogCaptureFixture) -> None:
    n = as_negotiated("pop", tic(type=kind, mtu=mtu), "192.0.2.9")
    assert n.mtu == mtu and interface_mtu(n) == mtu
    assert n.to_dict()["mtu"] == mtu
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("mtu", "used"), [(0, 1280), (1279, 1280), (1481, 1480), (9000, 1480)])
def test_an_mtu_outside_1280_1480_is_clamped_with_a_warning(
    mtu: int, used: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tunnelbroker.client.sixxs"):
        n = as_negotiated("pop", tic(mtu=mtu), "192.0.2.9")
    assert n.mtu == used and interface_mtu(n) == used
    assert f"Tunnel MTU {mtu} is outside 1280..1480: using {used}" in caplog.text


def test_the_address_gets_the_links_prefix_length(caplog: pytest.LogCaptureFixture) -> None:
    n = as_negotiated("pop", tic(ipv6_prefix_length=64), "192.0.2.9")
    assert n.link_prefix_length == 64
    assert str(interface_address(n)) == "2001:db8:8000:7::2/64"
    for bad in (0, 129, 999):
        with caplog.at_level(logging.WARNING, logger="tunnelbroker.client.sixxs"):
            n = as_negotiated("pop", tic(ipv6_prefix_length=bad), "192.0.2.9")
        assert str(interface_address(n)) == "2001:db8:8000:7::2/128"
        assert f"IPv6 PrefixLength {bad} is not 1..128" in caplog.text


def test_tsp_tunnels_keep_1280_and_a_host_address() -> None:
    n = as_negotiated("pop", tic(), "192.0.2.9")
    tsp = dataclasses.replace(n, mtu=None, link_prefix_length=None)
    assert interface_mtu(tsp) == 1280 and str(interface_address(tsp)).endswith("::2/128")
    v4v6 = dataclasses.replace(tsp, tunnel_type="v4v6", client_ipv4="192.0.2.9")
    assert str(interface_address(v4v6)) == "192.0.2.9/32"


# ------------------------------------------------------------------ the login, over loopback


async def test_tic_negotiate_against_a_real_server() -> None:
    tunnel = dataclasses.replace(TUNNEL, mtu=1400, ipv6_prefix_length=112)
    async with tic_server(memory_backend(tunnel)) as (service, port):
        n = await tic_negotiate("127.0.0.1", username="TEST-SIXXS", password="secretpass",
                                port=port, timeout=10)  # fmt: skip
    assert n.tunnel_type == "ayiya" and n.client_ipv6 == TUNNEL.ipv6_endpoint
    assert n.mtu == 1400 and n.link_prefix_length == 112
    assert n.local_address == "127.0.0.1" and service.logins == 1


async def test_require_tls_gives_up_when_the_server_refuses_starttls() -> None:
    async with tic_server() as (service, port):  # no certificate: STARTTLS is refused
        with pytest.raises(TicClientError) as e:
            await tic_negotiate("127.0.0.1", username="TEST-SIXXS", password="secretpass",
                                port=port, require_tls=True, timeout=10)  # fmt: skip
        # No login was tried in plaintext, and it is not worth another attempt.
        assert service.logins == 0 and service.login_failures == 0
        # Only asked for (no require): the same server is used in plaintext.
        n = await tic_negotiate("127.0.0.1", username="TEST-SIXXS", password="secretpass",
                                port=port, starttls=True, timeout=10)  # fmt: skip
        assert n.tunnel_type == "ayiya" and service.logins == 1
    assert e.value.reason == "the server refused starttls and TLS is required"
    assert e.value.server_text is not None and e.value.server_text.startswith("400 ")
    assert e.value.permanent


async def test_require_tls_with_a_tls_server(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with tic_server(certificate=cert) as (service, port):
        n = await tic_negotiate("127.0.0.1", username="TEST-SIXXS", password="secretpass",
                                port=port, require_tls=True, verify=False, timeout=10)  # fmt: skip
    assert n.tunnel_type == "ayiya" and service.tls_sessions == 1
