"""Publishing to a real BIND with TSIG-signed RFC 2136 updates."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
from tests.dnsnames.conftest import Bind
from tests.dnsnames.test_records import tunnel

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.config import DnsSection, load_config
from tunnelbroker.daemon import running
from tunnelbroker.dnsnames.publisher import DnsPublisher
from tunnelbroker.dnsnames.records import reverse_name


async def ask(bind: Bind, name: str, rdtype: str) -> list[str]:
    q = dns.message.make_query(name, rdtype)
    r = await dns.asyncquery.udp(q, "127.0.0.1", port=bind.port, timeout=3)
    # A delegation (NS at a zone cut) comes back in the authority section.
    sections = r.answer or r.authority
    return sorted(
        rd.to_text()
        for rrset in sections
        if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        for rd in rrset
    )


def config(bind: Bind, secret: str | None = None) -> DnsSection:
    return DnsSection(
        enabled=True,
        server="127.0.0.1",
        port=bind.port,
        zones=list(bind.zones),
        tsig_name=bind.key_name,
        tsig_secret=secret or bind.secret,
        ttl=60,
        timeout=3,
    )


async def test_tunnel_records_come_and_go(bind: Bind) -> None:
    pub = DnsPublisher(config(bind), "users.example.net", lambda _uid: "alice")
    pub.start()
    try:
        t = tunnel(dns_servers=["ns1.example.org", "ns2.example.org"])
        pub.changed(t)
        assert await pub.settled()
        assert await ask(bind, "t7.users.example.net", "AAAA") == ["2001:db8:8000:7::2"]
        ptr = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.7.0.0.0.0.0.0.8.8.b.d.0.1.0.0.2.ip6.arpa"
        assert await ask(bind, ptr, "PTR") == ["t7.users.example.net."]
        assert await ask(bind, "1.0.0.c.8.b.d.0.1.0.0.2.ip6.arpa", "NS") == [
            "ns1.example.org.",
            "ns2.example.org.",
        ]
        # The user changes the nameservers: the delegation is replaced, not added to.
        t.dns_servers = ["ns3.example.org"]
        pub.changed(t)
        assert await pub.settled()
        assert await ask(bind, "1.0.0.c.8.b.d.0.1.0.0.2.ip6.arpa", "NS") == ["ns3.example.org."]
        # The tunnel ends: everything goes.
        t.state = "ended"
        pub.changed(t)
        assert await pub.settled()
        assert await ask(bind, "t7.users.example.net", "AAAA") == []
        assert await ask(bind, "1.0.0.c.8.b.d.0.1.0.0.2.ip6.arpa", "NS") == []
    finally:
        await pub.stop()


async def test_a_refused_update_is_reported_and_retried(bind: Bind) -> None:
    wrong = "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldCE="
    pub = DnsPublisher(config(bind, wrong), "users.example.net", lambda _uid: None, max_backoff=0.2)
    pub.start()
    try:
        pub.changed(tunnel())
        assert not await pub.settled(timeout=1.0)  # still retrying
        assert 7 in pub.errors and pub.errors[7]
        assert await ask(bind, "t7.users.example.net", "AAAA") == []
    finally:
        await pub.stop()
    # With the right key the same change goes through.
    pub = DnsPublisher(config(bind), "users.example.net", lambda _uid: None)
    pub.start()
    try:
        pub.changed(tunnel())
        assert await pub.settled()
        assert await ask(bind, "t7.users.example.net", "AAAA") == ["2001:db8:8000:7::2"]
        assert pub.errors == {}
    finally:
        await pub.stop()
    await asyncio.sleep(0)


async def test_the_daemon_publishes_what_users_do(bind: Bind, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "broker": {"client_domain": "users.example.net"},
            "tsp": {"listen": ["127.0.0.1"], "port": 0},
            "tunnelserver": {"backend": "none"},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
            "web": {"enabled": False},
            "dns": config(bind).model_dump(),
            "limits": {"static_endpoint_networks": ["198.51.100.0/24"]},
        },
    )
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None and d.dns is not None
        uid = d.store.add_user("alice", "x", "0" * 32, "r").id
        t = d.broker.create_tunnel(
            uid, ManagedRequest("static", client_ipv4="198.51.100.9", prefix_length=48), 1.0
        )
        d.broker.modify_tunnel(t.id or 0, 2.0, dns_servers=("ns1.example.org", "192.0.2.53"))
        assert await d.dns.settled()
        link = ipaddress.IPv6Network(t.link_prefix)
        assert await ask(bind, f"t{t.id}.users.example.net", "AAAA") == [
            str(link.network_address + 2)
        ]
        rev = reverse_name(ipaddress.IPv6Network(t.delegated_prefix or ""))
        assert await ask(bind, rev, "NS") == ["ns1.example.org."]
        assert "cannot be delegated to: 192.0.2.53" in (t.last_error or "")
        d.broker.delete_tunnel(t.id or 0, 3.0)
        assert await d.dns.settled()
        assert await ask(bind, rev, "NS") == []
