"""A TIC tunnel as the client's data plane takes it."""

from __future__ import annotations

import pytest

from tunnelbroker.client.sixxs import as_negotiated
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
    with pytest.raises(TicClientError, match=words):
        as_negotiated("pop", tic(**changes), "192.0.2.9")
