"""The broker's decisions and state, on a real SQLite store, with a fake clock."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnelbroker.broker.model import (
    BrokerError,
    Encapsulation,
    Refusal,
    Requester,
    TunnelRequest,
)
from tunnelbroker.broker.persistence import Persister
from tunnelbroker.broker.service import Broker, TunnelEvent
from tunnelbroker.config import Config, load_config
from tunnelbroker.store.database import Store

NOW = 1_800_000_000.0


class Harness:
    def __init__(self, tmp: Path, **overrides: object) -> None:
        self.config: Config = load_config(None, {"data_dir": str(tmp), **overrides})
        self.store = Store(self.config.database_url)
        self.store.migrate()
        self.persister = Persister(self.store)
        self.persister.start()
        self.broker = Broker(self.config, self.persister)
        self.events: list[TunnelEvent] = []
        self.broker.add_observer(self.events.append)

    def restart(self) -> Broker:
        self.persister.flush()
        broker = Broker(self.config, self.persister)
        broker.load(
            self.store.load_tunnels(),
            self.store.load_allocations(),
            NOW + 1,
            self.store.highest_ids(),
        )
        return broker

    def close(self) -> None:
        self.persister.stop()
        self.store.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def who(
    ip: str = "198.51.100.7", port: int = 40000, user: int | None = None, transport: str = "udp"
) -> Requester:
    return Requester(user, f"user{user}" if user else None, ip, port, transport)


def setup(b: Broker, req: TunnelRequest, w: Requester, now: float = NOW):  # type: ignore[no-untyped-def]
    grant, offer = b.request(req, w, now)
    return grant, b.commit(offer, now)


def add_user(h: Harness, name: str = "alice") -> int:
    from tunnelbroker.broker.users import UserService

    return UserService(h.store, h.config.broker.realm).add(name, "correct horse").id


def test_anonymous_v6v4_gets_a_link_64_and_is_persisted(h: Harness) -> None:
    grant, record = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    link = ipaddress.IPv6Network(record.link_prefix)
    assert link.prefixlen == 64 and link.subnet_of(
        ipaddress.IPv6Network(h.config.pools.link_prefix)
    )
    assert grant.server_inner == str(link.network_address + 1)
    assert grant.client_inner == str(link.network_address + 2)
    assert grant.keepalive_address == grant.server_inner
    assert grant.lifetime == h.config.lifetimes.anonymous
    assert [e.kind for e in h.events] == ["up"]
    h.persister.flush()
    (stored,) = h.store.load_tunnels()
    assert stored.id == record.id and stored.state == "active"
    assert stored.client_ipv4 == "198.51.100.7"


def test_nat_discovery_picks_v6udpv4_on_udp_and_refuses_on_tcp(h: Harness) -> None:
    req = TunnelRequest(None, claimed_ipv4="10.1.1.1")
    grant, record = setup(h.broker, req, who())
    assert grant.encapsulation is Encapsulation.V6UDPV4 and grant.nat_detected
    assert record.client_port == 40000 and record.client_ipv4 == "198.51.100.7"
    assert grant.client_ipv4 == "10.1.1.1"  # the claim is echoed, as in RFC 5572 Fig. 19
    with pytest.raises(BrokerError) as e:
        h.broker.request(req, who("198.51.100.8", transport="tcp"), NOW)
    assert e.value.refusal is Refusal.NAT_NEEDS_UDP
    grant, _ = setup(
        h.broker,
        TunnelRequest(None, claimed_ipv4="198.51.100.9"),
        who("198.51.100.9", transport="tcp"),
    )
    assert grant.encapsulation is Encapsulation.V6V4 and not grant.nat_detected


def test_v6v4_is_never_aimed_at_a_third_party(h: Harness) -> None:
    with pytest.raises(BrokerError) as e:
        h.broker.request(TunnelRequest(Encapsulation.V6V4, "203.0.113.5"), who(), NOW)
    assert e.value.refusal is Refusal.INVALID_IPV4
    # A private claim is a NAT forwarding protocol 41: the endpoint is the public source.
    _, record = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "192.168.1.10"), who())
    assert record.client_ipv4 == "198.51.100.7"
    with pytest.raises(BrokerError) as e:
        h.broker.request(TunnelRequest(Encapsulation.V6V4, "999.1.1.1"), who("198.51.100.1"), NOW)
    assert e.value.refusal is Refusal.INVALID_IPV4


def test_one_v6v4_tunnel_per_client_ipv4(h: Harness) -> None:
    uid = add_user(h)
    setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    with pytest.raises(BrokerError) as e:
        h.broker.request(TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(user=uid), NOW)
    assert e.value.refusal is Refusal.ENDPOINT_IN_USE


def test_an_account_keeps_its_addresses_across_endpoint_and_type_changes(h: Harness) -> None:
    uid = add_user(h)
    g1, r1 = setup(
        h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7", prefix_length=56), who(user=uid)
    )
    g2, r2 = setup(
        h.broker,
        TunnelRequest(None, "10.0.0.5", prefix_length=56),
        who("203.0.113.9", 5555, user=uid),
        NOW + 100,
    )
    assert r2 is r1 and r2.id == r1.id
    assert g2.encapsulation is Encapsulation.V6UDPV4
    assert (g2.client_inner, g2.delegated_prefix) == (g1.client_inner, g1.delegated_prefix)
    assert r2.client_ipv4 == "203.0.113.9" and r2.client_port == 5555
    assert [e.kind for e in h.events] == ["up", "updated"]
    assert len(h.broker.tunnels) == 1
    # ... and across a broker restart, and after the tunnel itself has ended.
    h.broker.delete(who(user=uid), "ipv6", NOW + 200)
    b2 = h.restart()
    g3, _ = setup(
        b2,
        TunnelRequest(Encapsulation.V6V4, "198.51.100.7", prefix_length=56),
        who(user=uid),
        NOW + 300,
    )
    assert (g3.client_inner, g3.delegated_prefix) == (g1.client_inner, g1.delegated_prefix)


def test_prefix_lengths(h: Harness) -> None:
    uid = add_user(h)
    g, _ = setup(
        h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7", prefix_length=0), who(user=uid)
    )
    assert g.delegated_prefix is not None
    assert ipaddress.IPv6Network(g.delegated_prefix).prefixlen == 56
    g, _ = setup(
        h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7", prefix_length=48), who(user=uid)
    )
    assert g.delegated_prefix is not None
    assert ipaddress.IPv6Network(g.delegated_prefix).prefixlen == 48
    for bad in (32, 65, 128):
        with pytest.raises(BrokerError) as e:
            h.broker.request(
                TunnelRequest(Encapsulation.V6V4, "198.51.100.7", prefix_length=bad),
                who(user=uid),
                NOW,
            )
        assert e.value.refusal is Refusal.PREFIX_UNAVAILABLE
    with pytest.raises(BrokerError) as e:
        h.broker.request(
            TunnelRequest(Encapsulation.V6V4, "198.51.100.8", prefix_length=56),
            who("198.51.100.8"),
            NOW,
        )
    assert e.value.refusal is Refusal.PREFIX_FOR_ANONYMOUS


def test_reverse_dns_servers_are_validated(h: Harness) -> None:
    uid = add_user(h)
    g, r = setup(
        h.broker,
        TunnelRequest(
            Encapsulation.V6V4,
            "198.51.100.7",
            prefix_length=56,
            dns_servers=("ns1.example.net.", "2001:db8::53"),
        ),
        who(user=uid),
    )
    assert r.dns_servers == ["ns1.example.net", "2001:db8::53"]
    for bad in (("bad name!",), tuple(f"ns{i}.example.net" for i in range(6))):
        with pytest.raises(BrokerError) as e:
            h.broker.request(
                TunnelRequest(
                    Encapsulation.V6V4, "198.51.100.7", prefix_length=56, dns_servers=bad
                ),
                who(user=uid),
                NOW,
            )
        assert e.value.refusal is Refusal.BAD_DNS_SERVERS


def test_v4v6_gets_a_30(h: Harness) -> None:
    g, r = setup(
        h.broker,
        TunnelRequest(Encapsulation.V4V6, claimed_ipv6="2001:db8:1::5"),
        who("2001:db8:1::5"),
    )
    net = ipaddress.IPv4Network(r.link_prefix)
    assert net.prefixlen == 30 and net.subnet_of(ipaddress.IPv4Network(h.config.pools.ipv4_prefix))
    assert g.client_inner == str(net.network_address + 1)
    assert g.server_inner == str(net.network_address + 2)
    assert r.client_ipv6 == "2001:db8:1::5"
    with pytest.raises(BrokerError) as e:
        h.broker.request(
            TunnelRequest(Encapsulation.V4V6, claimed_ipv6="2001:db8:1::6"),
            who("2001:db8:1::5"),
            NOW,
        )
    assert e.value.refusal is Refusal.INVALID_IPV6


def test_limits_per_ipv4_per_user_and_total(tmp_path: Path) -> None:
    h = Harness(tmp_path, limits={"tunnels_per_ipv4": 2, "tunnels_per_user": 1, "max_tunnels": 4})
    try:
        for claim in ("10.0.0.1", "10.0.0.2"):
            setup(h.broker, TunnelRequest(None, claim), who(port=int(claim[-1]) + 1000))
        with pytest.raises(BrokerError) as e:
            h.broker.request(TunnelRequest(None, "10.0.0.3"), who(port=3000), NOW)
        assert e.value.refusal is Refusal.IPV4_LIMIT
        # The same NATed host reconnecting on a new port replaces its tunnel.
        setup(h.broker, TunnelRequest(None, "10.0.0.1"), who(port=4000))
        assert len(h.broker.tunnels) == 2
        uid = add_user(h)
        setup(
            h.broker,
            TunnelRequest(Encapsulation.V6V4, "198.51.100.50"),
            who("198.51.100.50", user=uid),
        )
        with pytest.raises(BrokerError) as e:
            h.broker.request(
                TunnelRequest(Encapsulation.V4V6, claimed_ipv6="2001:db8::9"),
                who("2001:db8::9", user=uid),
                NOW,
            )
        assert e.value.refusal is Refusal.USER_LIMIT
        setup(h.broker, TunnelRequest(None, "10.9.0.1"), who("198.51.100.60"))
        with pytest.raises(BrokerError) as e:
            h.broker.request(TunnelRequest(None, "10.9.0.2"), who("198.51.100.61"), NOW)
        assert e.value.refusal is Refusal.NO_CAPACITY
    finally:
        h.close()


def test_abandoned_offer_returns_its_addresses(h: Harness) -> None:
    g1, o1 = h.broker.request(TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(), NOW)
    h.broker.abandon(o1)
    g2, _ = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    assert g2.client_inner == g1.client_inner
    with pytest.raises(BrokerError):
        h.broker.commit(o1, NOW)


def test_concurrent_offers_for_one_tunnel_both_commit(h: Harness) -> None:
    # A client re-signals from two ports before either session has finished.
    setup(h.broker, TunnelRequest(None, "10.0.0.1"), who(port=1000))
    ga, oa = h.broker.request(TunnelRequest(None, "10.0.0.1"), who(port=2000), NOW)
    gb, ob = h.broker.request(TunnelRequest(None, "10.0.0.1"), who(port=3000), NOW)
    ra = h.broker.commit(oa, NOW)
    rb = h.broker.commit(ob, NOW)
    assert ra is rb and rb.client_port == 3000 and ga.client_inner == gb.client_inner
    assert len(h.broker.tunnels) == 1


def test_racing_new_anonymous_sessions_leave_one_tunnel(h: Harness) -> None:
    _, oa = h.broker.request(TunnelRequest(None, "10.0.0.1"), who(port=2000), NOW)
    _, ob = h.broker.request(TunnelRequest(None, "10.0.0.1"), who(port=3000), NOW)
    h.broker.commit(oa, NOW)
    rb = h.broker.commit(ob, NOW)
    assert list(h.broker.tunnels.values()) == [rb]


def test_abandoning_one_of_two_offers_keeps_the_shared_addresses(h: Harness) -> None:
    uid = add_user(h)
    ga, oa = h.broker.request(TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(user=uid), NOW)
    gb, ob = h.broker.request(TunnelRequest(None, "10.0.0.1"), who(user=uid), NOW)
    assert ga.client_inner == gb.client_inner
    h.broker.abandon(oa)
    setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.8"), who("198.51.100.8"))
    rb = h.broker.commit(ob, NOW)
    links = [t.link_prefix for t in h.broker.tunnels.values()]
    assert len(set(links)) == 2 and rb.link_prefix in links


def test_anonymous_tunnels_expire_and_release_their_addresses(h: Harness) -> None:
    g1, r1 = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    lifetime = h.config.lifetimes.anonymous
    assert h.broker.next_expiry() == NOW + lifetime
    assert h.broker.expire(NOW + lifetime - 1) == []
    assert h.broker.expire(NOW + lifetime) == [r1]
    assert r1.state == "ended" and r1.end_reason == "lifetime expired"
    assert h.events[-1].kind == "down"
    g2, _ = setup(
        h.broker,
        TunnelRequest(Encapsulation.V6V4, "198.51.100.8"),
        who("198.51.100.8"),
        NOW + lifetime,
    )
    assert g2.client_inner == g1.client_inner  # the /64 went back to the pool
    h.persister.flush()
    assert [t.state for t in h.store.load_tunnels(include_ended=True)] == ["ended", "active"]


def test_re_signalling_renews_the_lifetime(h: Harness) -> None:
    uid = add_user(h)
    _, r = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(user=uid))
    setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(user=uid), NOW + 1000)
    assert r.expires_at == NOW + 1000 + h.config.lifetimes.authenticated
    assert h.broker.expire(NOW + h.config.lifetimes.authenticated + 1) == []


def test_restart_restores_live_tunnels_and_ends_expired_ones(h: Harness) -> None:
    setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    uid = add_user(h)
    g, _ = setup(h.broker, TunnelRequest(None, "10.0.0.1", prefix_length=56), who(user=uid))
    b2 = h.restart()
    assert len(b2.tunnels) == 2
    # The restored pools do not hand out what is already taken.
    _, r3 = setup(b2, TunnelRequest(Encapsulation.V6V4, "198.51.100.99"), who("198.51.100.99"))
    others = [t for t in b2.tunnels.values() if t is not r3]
    assert r3.link_prefix not in {t.link_prefix for t in others}
    assert g.delegated_prefix not in {r3.delegated_prefix}
    assert r3.id == 3  # ids continue after the stored ones
    h.persister.flush()
    late = Broker(h.config, h.persister)
    late.load(
        h.store.load_tunnels(),
        h.store.load_allocations(),
        NOW + h.config.lifetimes.anonymous + 10,
        h.store.highest_ids(),
    )
    assert {t.user_id for t in late.tunnels.values()} == {uid}


def test_session_admission_is_rate_limited_per_source(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        limits={
            "sessions_per_second_per_ipv4": 1.0,
            "session_burst_per_ipv4": 3,
            "half_open_per_ipv4": 10,
        },
    )
    try:
        assert [h.broker.admit_session("198.51.100.1", NOW) for _ in range(4)] == [
            True,
            True,
            True,
            False,
        ]
        assert h.broker.admit_session("198.51.100.2", NOW)
        assert h.broker.admit_session("198.51.100.1", NOW + 1.01)
    finally:
        h.close()


def test_an_offer_for_an_anonymous_tunnel_that_ended_meanwhile_is_refused(h: Harness) -> None:
    _, r1 = setup(h.broker, TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who())
    lifetime = h.config.lifetimes.anonymous
    # The client re-signals just before its tunnel expires, and accepts just after.
    _, offer = h.broker.request(
        TunnelRequest(Encapsulation.V6V4, "198.51.100.7"), who(), NOW + lifetime - 1
    )
    assert h.broker.expire(NOW + lifetime) == [r1]
    # Meanwhile another client got the released /64.
    _, other = setup(
        h.broker,
        TunnelRequest(Encapsulation.V6V4, "198.51.100.8"),
        who("198.51.100.8"),
        NOW + lifetime,
    )
    assert other.link_prefix == r1.link_prefix
    with pytest.raises(BrokerError) as e:
        h.broker.commit(offer, NOW + lifetime + 1)
    assert e.value.refusal is Refusal.NO_TUNNEL and "ended meanwhile" in str(e.value)
    assert r1.state == "ended" and len(h.broker.tunnels) == 1
