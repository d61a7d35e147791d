"""Managed tunnels (static 6in4, heartbeat, AYIYA): created by an operator or the web."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.broker.test_service import NOW, Harness, who

from tunnelbroker.broker.model import (
    BrokerError,
    Encapsulation,
    ManagedRequest,
    Refusal,
    TunnelRequest,
)
from tunnelbroker.store.records import TunnelRecord
from tunnelbroker.tunnelserver.bridge import installable, state_from_record

PUBLIC = "192.0.43.10"  # IANA's, globally routed: a valid static endpoint


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, limits={"tunnels_per_user": 3})
    yield harness
    harness.close()


@pytest.fixture
def uid(h: Harness) -> int:
    return h.store.add_user("alice", "x", "0" * 32, "r").id


def test_static_tunnel_gets_its_own_link_and_routed_64(h: Harness, uid: int) -> None:
    t = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    assert t.state == "active" and t.type == "v6v4" and t.kind == "static"
    link = ipaddress.IPv6Network(t.link_prefix)
    routed = ipaddress.IPv6Network(t.routed_prefix or "")
    assert link.prefixlen == routed.prefixlen == 64 and not link.overlaps(routed)
    assert t.client_ipv4 == PUBLIC and t.secret is None and t.update_key
    assert t.delegated_prefix is None and t.mtu == 1280
    assert h.events[-1].kind == "up" and installable(t)
    state = state_from_record(t, NOW, 100.0)
    assert state.keepalive_interval == 0  # silence never ends a managed tunnel
    assert ipaddress.IPv6Network(t.routed_prefix or "") in state.prefixes


def test_several_tunnels_per_account_each_with_distinct_addresses(h: Harness, uid: int) -> None:
    a = h.broker.create_tunnel(uid, ManagedRequest("heartbeat", prefix_length=48), NOW)
    with pytest.raises(BrokerError) as limit:  # prefixes_per_user = 1
        h.broker.create_tunnel(uid, ManagedRequest("ayiya", prefix_length=56), NOW)
    assert limit.value.refusal is Refusal.USER_LIMIT and "at most 1" in str(limit.value)
    b = h.broker.create_tunnel(uid, ManagedRequest("ayiya", routed_64=False), NOW)
    assert a.secret and b.secret and a.secret != b.secret
    assert ipaddress.IPv6Network(a.delegated_prefix or "").prefixlen == 48
    assert b.routed_prefix is None and a.link_prefix != b.link_prefix
    assert a.client_ipv4 is None and not installable(a)  # no heartbeat yet
    assert b.type == Encapsulation.AYIYA and installable(b)  # found by identity, not address
    assert [t.id for t in h.broker.user_tunnels(uid)] == [a.id, b.id]
    # The account's TSP tunnel is still its own, with its own addresses.
    tsp = h.broker.request(TunnelRequest(Encapsulation.V6UDPV4), who(user=uid), NOW)[1]
    rec = h.broker.commit(tsp, NOW)
    assert rec.link_prefix not in (a.link_prefix, b.link_prefix)
    with pytest.raises(BrokerError) as e:
        h.broker.create_tunnel(uid, ManagedRequest("ayiya"), NOW)
    assert e.value.refusal is Refusal.USER_LIMIT


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("192.168.1.10", "private"),
        ("10.1.2.3", "private"),
        ("100.64.0.1", "shared"),
        ("240.0.0.1", "reserved"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.1", "reserved"),
        ("not-an-ip", "invalid IPv4"),
    ],
)
def test_static_endpoint_must_be_public(h: Harness, uid: int, address: str, words: str) -> None:
    with pytest.raises(BrokerError) as e:
        h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=address), NOW)
    assert e.value.refusal is Refusal.INVALID_IPV4 and words in str(e.value)
    assert h.broker.user_tunnels(uid) == []


def test_lab_networks_can_be_allowed(tmp_path: Path) -> None:
    h = Harness(tmp_path, limits={"static_endpoint_networks": ["198.51.100.0/24"]})
    try:
        uid = h.store.add_user("bob", "x", "0" * 32, "r").id
        t = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4="198.51.100.9"), NOW)
        assert t.client_ipv4 == "198.51.100.9"
    finally:
        h.close()


@pytest.mark.parametrize(
    ("req", "refusal"),
    [
        (ManagedRequest("static"), Refusal.INVALID_IPV4),
        (ManagedRequest("gre"), Refusal.UNSUPPORTED_TYPE),
        (ManagedRequest("ayiya", client_ipv4=PUBLIC), Refusal.INVALID_REQUEST),
        (ManagedRequest("ayiya", mtu=1500), Refusal.INVALID_MTU),
        (ManagedRequest("ayiya", mtu=1279), Refusal.INVALID_MTU),
        (ManagedRequest("ayiya", mtu=1429), Refusal.INVALID_MTU),
        (ManagedRequest("ayiya", prefix_length=40), Refusal.PREFIX_UNAVAILABLE),
        (ManagedRequest("ayiya", name="x\ny"), Refusal.INVALID_REQUEST),
        (ManagedRequest("ayiya", pop="nowhere"), Refusal.INVALID_REQUEST),
    ],
)
def test_bad_requests_are_refused_and_allocate_nothing(
    h: Harness, uid: int, req: ManagedRequest, refusal: Refusal
) -> None:
    with pytest.raises(BrokerError) as e:
        h.broker.create_tunnel(uid, req, NOW)
    assert e.value.refusal is refusal
    ok = h.broker.create_tunnel(uid, ManagedRequest("ayiya", routed_64=False), NOW)
    # The first /64 of the pool is kept back: the second is the first ever handed out.
    second = list(
        itertools.islice(
            ipaddress.IPv6Network(h.config.pools.link_prefix).subnets(new_prefix=64), 2
        )
    )[1]
    assert ipaddress.IPv6Network(ok.link_prefix) == second and ok.id == 1


def test_endpoint_updates(h: Harness, uid: int) -> None:
    static = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    beat = h.broker.create_tunnel(uid, ManagedRequest("heartbeat"), NOW)
    # A user's update follows the static rules...
    with pytest.raises(BrokerError) as e:
        h.broker.update_endpoint(static.id or 0, "192.168.0.1", None, NOW)
    assert e.value.refusal is Refusal.INVALID_IPV4
    # ...and one endpoint carries one protocol-41 tunnel.
    with pytest.raises(BrokerError) as e:
        h.broker.update_endpoint(beat.id or 0, PUBLIC, None, NOW)
    assert e.value.refusal is Refusal.ENDPOINT_IN_USE
    assert h.broker.update_endpoint(static.id or 0, "192.0.43.11", None, NOW + 1)
    assert not h.broker.update_endpoint(static.id or 0, "192.0.43.11", None, NOW + 2)
    # A heartbeat's source is learnt as it is, behind a NAT too.
    assert h.broker.update_endpoint(beat.id or 0, "10.0.0.5", 1234, NOW, learnt=True)
    assert beat.client_ipv4 == "10.0.0.5" and beat.client_port is None and installable(beat)
    assert h.events[-1].kind == "updated" and h.events[-1].tunnel is beat
    # The old endpoint is free again.
    assert h.broker.update_endpoint(beat.id or 0, PUBLIC, None, NOW + 3, learnt=True)
    with pytest.raises(BrokerError) as e:
        h.broker.update_endpoint(9999, PUBLIC, None, NOW)
    assert e.value.refusal is Refusal.NO_TUNNEL


def test_ayiya_endpoint_keeps_the_port_and_cannot_be_typed_in(h: Harness, uid: int) -> None:
    t = h.broker.create_tunnel(uid, ManagedRequest("ayiya"), NOW)
    with pytest.raises(BrokerError):
        h.broker.update_endpoint(t.id or 0, PUBLIC, None, NOW)
    assert h.broker.update_endpoint(t.id or 0, "203.0.113.5", 40000, NOW, learnt=True)
    assert (t.client_ipv4, t.client_port) == ("203.0.113.5", 40000)
    assert h.broker.update_endpoint(t.id or 0, "203.0.113.5", 40001, NOW, learnt=True)


def test_modify_switches_and_keys(h: Harness, uid: int) -> None:
    t = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    key = t.update_key
    h.broker.modify_tunnel(t.id or 0, NOW, mtu=1480, name="home router", new_update_key=True)
    assert t.mtu == 1480 and t.name == "home router" and t.update_key != key
    h.broker.modify_tunnel(t.id or 0, NOW, user_state="disabled")
    assert not installable(t) and h.events[-1].kind == "updated"
    h.broker.modify_tunnel(t.id or 0, NOW, user_state="enabled", admin_state="disabled")
    assert not installable(t)
    h.broker.modify_tunnel(t.id or 0, NOW, dns_servers=("ns1.example.net", "2001:db8::53"))
    assert t.dns_servers == ["ns1.example.net", "2001:db8::53"]
    for bad in ({"mtu": 9000}, {"user_state": "maybe"}, {"dns_servers": ("a",) * 6}):
        with pytest.raises(BrokerError):
            h.broker.modify_tunnel(t.id or 0, NOW, **bad)  # type: ignore[arg-type]
    no_routes = h.broker.create_tunnel(uid, ManagedRequest("ayiya", routed_64=False), NOW)
    with pytest.raises(BrokerError) as e:
        h.broker.modify_tunnel(no_routes.id or 0, NOW, dns_servers=("ns1.example.net",))
    assert e.value.refusal is Refusal.BAD_DNS_SERVERS
    # An AYIYA tunnel's packets must fit a 1500-byte path with 72 bytes around them.
    h.broker.modify_tunnel(no_routes.id or 0, NOW, mtu=1428)
    with pytest.raises(BrokerError, match="at most 1428") as e:
        h.broker.modify_tunnel(no_routes.id or 0, NOW, mtu=1429)
    assert e.value.refusal is Refusal.INVALID_MTU and no_routes.mtu == 1428


def test_delete_gives_the_addresses_back_and_survives_restart(h: Harness, uid: int) -> None:
    a = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    b = h.broker.create_tunnel(uid, ManagedRequest("heartbeat", prefix_length=56), NOW)
    h.broker.update_endpoint(b.id or 0, "198.51.100.7", None, NOW, learnt=True)
    h.broker.delete_tunnel(a.id or 0, NOW)
    assert a.state == "ended" and h.events[-1].kind == "down"
    with pytest.raises(BrokerError):
        h.broker.delete_tunnel(a.id or 0, NOW)
    broker = h.restart()
    [restored] = broker.user_tunnels(uid)
    assert isinstance(restored, TunnelRecord)
    assert (restored.id, restored.secret, restored.link_prefix, restored.delegated_prefix) == (
        b.id,
        b.secret,
        b.link_prefix,
        b.delegated_prefix,
    )
    assert restored.client_ipv4 == "198.51.100.7" and restored.kind == "heartbeat"
    # a's link /64 went back to the pool: the next tunnel may get it, b's may not be reused.
    c = broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW + 5)
    assert c.link_prefix != b.link_prefix and c.id != a.id
    assert c.link_prefix == a.link_prefix


def test_traffic_is_recorded_and_carried_into_the_data_plane(h: Harness, uid: int) -> None:
    t = h.broker.create_tunnel(uid, ManagedRequest("static", client_ipv4=PUBLIC), NOW)
    assert h.broker.record_traffic(t.id or 0, NOW + 5, (10, 20), (1000, 2000))
    assert not h.broker.record_traffic(t.id or 0, NOW + 5, (10, 20), (1000, 2000))
    assert (t.last_seen, t.packets_in, t.bytes_out) == (NOW + 5, 10, 2000)
    assert not h.broker.record_traffic(9999, None, (1, 1), (1, 1))
    # A re-installed tunnel counts on from the recorded totals.
    state = state_from_record(t, NOW, 50.0)
    assert (state.packets_in, state.packets_out, state.bytes_in, state.bytes_out) == (
        10,
        20,
        1000,
        2000,
    )
    [stored] = [r for r in h.restart().tunnels.values() if r.id == t.id]
    assert (stored.last_seen, stored.packets_out) == (NOW + 5, 20)
