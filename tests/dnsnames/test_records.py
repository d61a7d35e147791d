"""Which records a tunnel gets (sans-IO)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelbroker.dnsnames.records import RRSet, plan, reverse_name, zone_for
from tunnelbroker.store.records import TunnelRecord

ZONES = ["users.example.net", "8.b.d.0.1.0.0.2.ip6.arpa"]


def tunnel(**kw: object) -> TunnelRecord:
    base: dict[str, object] = {
        "id": 7,
        "user_id": 1,
        "kind": "static",
        "type": "v6v4",
        "state": "active",
        "transport": "api",
        "client_ipv4": "192.0.2.9",
        "client_port": None,
        "client_ipv6": None,
        "server_ipv4": "192.0.2.1",
        "server_ipv6": None,
        "link_prefix": "2001:db8:8000:7::/64",
        "delegated_prefix": "2001:db8:c001::/48",
        "dns_servers": ["ns1.example.org", "2001:db8::53"],
        "keepalive_interval": 0,
        "mtu": 1280,
        "created_at": 0.0,
        "updated_at": 0.0,
        "expires_at": 1e12,
        "routed_prefix": "2001:db8:c000:5::/64",
    }
    base.update(kw)
    return TunnelRecord(**base)  # type: ignore[arg-type]


def test_managed_tunnel_records() -> None:
    p = plan(tunnel(), "alice", "users.example.net", ZONES)
    rev = ZONES[1] + "."
    assert p.rrsets == [
        RRSet("users.example.net.", "t7.users.example.net.", "AAAA", ("2001:db8:8000:7::2",)),
        RRSet(
            rev,
            reverse_name(ipaddress.IPv6Address("2001:db8:8000:7::2")),
            "PTR",
            ("t7.users.example.net.",),
        ),
        RRSet(rev, "5.0.0.0.0.0.0.c.8.b.d.0.1.0.0.2.ip6.arpa.", "NS", ("ns1.example.org.",)),
        RRSet(rev, "1.0.0.c.8.b.d.0.1.0.0.2.ip6.arpa.", "NS", ("ns1.example.org.",)),
    ]
    assert p.problems == ["nameservers given as addresses cannot be delegated to: 2001:db8::53"]


def test_tsp_tunnel_is_named_after_the_account_and_odd_prefixes_have_no_zone() -> None:
    t = tunnel(
        kind="tsp",
        routed_prefix=None,
        delegated_prefix="2001:db8:c001::/50",
        dns_servers=["ns.example.org"],
    )
    p = plan(t, "alice", "users.example.net", ZONES)
    assert p.rrsets[0].name == "alice.users.example.net."
    assert [r.rdtype for r in p.rrsets] == ["AAAA", "PTR"]
    assert "not on a nibble boundary" in p.problems[0]


def test_nothing_for_ended_tunnels_nothing_outside_the_zones() -> None:
    assert plan(tunnel(state="ended"), "a", "users.example.net", ZONES).rrsets == []
    p = plan(tunnel(dns_servers=[]), "a", "other.example", ZONES)
    assert [r.rdtype for r in p.rrsets] == ["PTR"]
    assert p.problems == ["no configured zone holds t7.other.example."]


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("a.users.example.net.", "users.example.net."),
        ("users.example.net.", "users.example.net."),
        ("ausers.example.net.", None),
    ],
)
def test_zone_for(name: str, zone: str | None) -> None:
    assert zone_for(name, ["users.example.net.", "example.net.x."]) == zone


@given(st.integers(0, 2**128 - 1), st.integers(1, 32).map(lambda n: n * 4))
def test_reverse_names_have_one_label_per_nibble(addr: int, length: int) -> None:
    net = ipaddress.IPv6Network((addr, length), strict=False)
    name = reverse_name(net)
    labels = name.split(".")
    assert labels[-3:] == ["ip6", "arpa", ""] and len(labels) == length // 4 + 3
    assert reverse_name(net.network_address).endswith(name)
