"""The broker: who gets which tunnel, with which addresses, for how long.

State lives in memory (loaded from the store at start) and every change is handed to the
:class:`~tunnelbroker.broker.persistence.Persister`, so requests are answered without waiting on
the database. Addressing is stable: an account keeps its link /64, its IPv4 /30 and its delegated
prefix across tunnels, so a client whose IPv4 address, port or encapsulation changes gets the
same IPv6 back. Anonymous tunnels own their addresses and release them when they end.

Time is passed in (``now``, wall-clock seconds) so that expiry is testable with a fake clock.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tunnelbroker.broker.allocation import PoolExhausted, PrefixPool
from tunnelbroker.broker.limits import ConcurrencyLimiter, KeyedRateLimiter
from tunnelbroker.broker.model import (
    MANAGED_KINDS,
    BrokerError,
    Encapsulation,
    Grant,
    ManagedRequest,
    Refusal,
    Requester,
    TunnelRequest,
)
from tunnelbroker.broker.persistence import Persister
from tunnelbroker.config import Config
from tunnelbroker.store.records import AllocationRecord, TunnelRecord

log = logging.getLogger(__name__)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")

#: RFC 6598 shared space and RFC 1918 private space: addresses a NAT hides.
_NATTED = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
]


#: Allocation kinds of managed tunnels, held per tunnel (not per account) -> their pool.
_TUNNEL_ALLOC_POOLS = {
    "tunnel-link": "link",
    "tunnel-routed": "delegated",
    "tunnel-prefix": "delegated",
}
#: Managed tunnels live until deleted; the expiry heap still wants a time.
_FOREVER = 100 * 365 * 86400.0
#: What to call a non-global IPv4 address in a refusal.
_NON_GLOBAL = (
    ("private (RFC 1918)", _NATTED[:3]),
    ("shared (RFC 6598)", _NATTED[3:]),
    ("loopback", [ipaddress.IPv4Network("127.0.0.0/8")]),
    ("link-local", [ipaddress.IPv4Network("169.254.0.0/16")]),
    ("multicast", [ipaddress.IPv4Network("224.0.0.0/4")]),
)
_TUNNEL_NAME = re.compile(r"^[\w .,:()/+-]{1,64}$")
#: The largest MTU of an AYIYA tunnel: 1500 less IPv4 (20), UDP (8) and AYIYA (44).
AYIYA_MAX_MTU = 1428


@dataclass(frozen=True, slots=True)
class TunnelEvent:
    """Handed to observers (the data plane, DNS, metrics) when a tunnel changes."""

    kind: str  # "up", "updated", "down"
    tunnel: TunnelRecord


Observer = Callable[[TunnelEvent], None]


class Broker:
    """Tunnel decisions and state. Not thread-safe: call it from the event loop."""

    def __init__(self, config: Config, persister: Persister) -> None:
        self.config = config
        self._persister = persister
        pools = config.pools
        link = ipaddress.IPv6Network(pools.link_prefix)
        # The pool's first /64 is kept back: it is the natural home for the broker's own
        # addresses and keeps ::/64-style mistakes out of clients' hands.
        self._link_pool = PrefixPool(link, 64, 64, reserved=[next(link.subnets(new_prefix=64))])
        self._delegated_pool = PrefixPool(
            ipaddress.IPv6Network(pools.delegated_prefix),
            pools.min_prefix_length,
            pools.max_prefix_length,
        )
        v4 = ipaddress.IPv4Network(pools.ipv4_prefix)
        self._ipv4_pool = PrefixPool(v4, 30, 30, reserved=[next(v4.subnets(new_prefix=30))])
        self._tunnels: dict[int, TunnelRecord] = {}
        #: (user_id, family) -> the account's TSP tunnel for that family.
        self._by_user: dict[tuple[int, str], TunnelRecord] = {}
        #: (source IPv4, claimed IPv4, family) -> anonymous tunnel, so a NATed client that
        #: reconnects on a new port replaces its tunnel instead of piling up new ones.
        self._by_anon: dict[tuple[str, str, str], TunnelRecord] = {}
        #: (source, family) -> that source's anonymous tunnels by id, oldest first: TSP
        #: ``info`` and ``delete`` find them without scanning every anonymous tunnel.
        self._anon_by_source: dict[tuple[str, str], dict[int, TunnelRecord]] = {}
        #: client IPv4 -> v6v4 tunnel: protocol 41 cannot tell two tunnels to one address apart.
        self._v6v4_endpoints: dict[str, TunnelRecord] = {}
        self._per_ipv4: Counter[str] = Counter()
        self._per_user: Counter[int] = Counter()
        #: user id -> their live tunnels by id (TSP and managed).
        self._user_tunnels: dict[int, dict[int, TunnelRecord]] = {}
        #: (user_id, kind) -> allocation; anonymous allocations are keyed by tunnel id.
        self._user_allocs: dict[tuple[int, str], AllocationRecord] = {}
        self._tunnel_allocs: dict[int, list[AllocationRecord]] = {}
        self._expiry: list[tuple[float, int]] = []
        self._tunnel_ids = itertools.count(1)
        self._alloc_ids = itertools.count(1)
        self._observers: list[Observer] = []
        #: Offers made but not yet accepted or abandoned.
        self._offers: set[Offer] = set()
        limits = config.limits
        self._session_rate: KeyedRateLimiter[str] = KeyedRateLimiter(
            limits.sessions_per_second_per_ipv4, limits.session_burst_per_ipv4
        )
        self._half_open: ConcurrencyLimiter[str] = ConcurrencyLimiter(
            limits.half_open_per_ipv4, limits.max_sessions
        )

    # ---------------------------------------------------------------- lifecycle

    def load(
        self,
        tunnels: Iterable[TunnelRecord],
        allocations: Iterable[AllocationRecord],
        now: float,
        highest_ids: tuple[int, int] = (0, 0),
    ) -> None:
        """Rebuild state from the store. Tunnels already past their lifetime are ended.

        ``highest_ids`` are the highest tunnel and allocation ids ever stored, ended ones
        included, so that new ids never reuse an old row's.
        """
        max_tid, max_aid = highest_ids
        for a in allocations:
            max_aid = max(max_aid, a.id or 0)
            try:
                self._pool_for(a.kind).reserve(ipaddress.ip_network(a.prefix))
            except ValueError as e:
                log.error("store: allocation %s (%s) conflicts, ignored: %s", a.id, a.prefix, e)
                continue
            if a.user_id is not None and a.kind not in _TUNNEL_ALLOC_POOLS:
                self._user_allocs[(a.user_id, a.kind)] = a
            elif a.tunnel_id is not None:
                self._tunnel_allocs.setdefault(a.tunnel_id, []).append(a)
        expired = []
        for t in tunnels:
            max_tid = max(max_tid, t.id or 0)
            if t.state != "active":
                continue
            if t.expires_at <= now:
                expired.append(t)
            self._index(t)
        self._tunnel_ids = itertools.count(max_tid + 1)
        self._alloc_ids = itertools.count(max_aid + 1)
        for t in expired:
            self._end(t, "lifetime expired", now)

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    @property
    def tunnels(self) -> dict[int, TunnelRecord]:
        """Live tunnels by id (read-only use)."""
        return self._tunnels

    # ---------------------------------------------------------------- admission

    def admit_session(self, source_ip: str, now: float) -> bool:
        """May a new signalling session from this address start? (RFC 5572 §8.)"""
        if not self._session_rate.allow(source_ip, now):
            return False
        return self._half_open.acquire(source_ip)

    def session_finished(self, source_ip: str) -> None:
        self._half_open.release(source_ip)

    # ---------------------------------------------------------------- requests

    def request(self, req: TunnelRequest, who: Requester, now: float) -> tuple[Grant, Offer]:
        """Decide and allocate a tunnel; it is live only after :meth:`commit` of the offer.

        Several offers may stand for one tunnel at once (a client re-signalling before its
        previous session has finished); whichever is accepted last wins.
        Raises BrokerError with the refusal.
        """
        encap, nat = self._choose_encapsulation(req, who)
        family = encap.family
        existing = self._existing(who, req, family)
        if existing is None:
            self._check_limits(who)
        endpoint_ipv4, endpoint_ipv6 = self._endpoint(req, who, encap)
        if encap is Encapsulation.V6V4 and endpoint_ipv4 is not None:
            other = self._v6v4_endpoints.get(endpoint_ipv4)
            if other is not None and other is not existing:
                raise BrokerError(Refusal.ENDPOINT_IN_USE, endpoint_ipv4)
        keepalive = self._keepalive(req.keepalive_interval)
        dns = self._dns_servers(req.dns_servers)
        if req.prefix_length is not None and family == "ipv6" and who.user_id is None:
            if not self.config.limits.anonymous_prefixes:
                raise BrokerError(Refusal.PREFIX_FOR_ANONYMOUS)
        lifetime = (
            self.config.lifetimes.authenticated
            if who.user_id is not None
            else self.config.lifetimes.anonymous
        )

        record = (
            existing
            if existing is not None
            else TunnelRecord(
                id=None,
                user_id=who.user_id,
                kind=req.kind,
                type=encap.value,
                state="offered",
                transport=who.transport,
                client_ipv4=None,
                client_port=None,
                client_ipv6=None,
                server_ipv4=self.config.broker.server_ipv4,
                server_ipv6=self.config.broker.server_ipv6,
                link_prefix="",
                delegated_prefix=None,
                dns_servers=[],
                keepalive_interval=keepalive,
                mtu=self.config.tunnelserver.default_mtu,
                created_at=now,
                updated_at=now,
                expires_at=now + lifetime,
                last_seen=None,
                end_reason=None,
            )
        )
        new_allocs: list[AllocationRecord] = []
        link = self._address_block(who, record, "ipv4" if family == "ipv4" else "link", new_allocs)
        delegated: AllocationRecord | None = None
        if req.prefix_length is not None and family == "ipv6":
            length = req.prefix_length or self.config.pools.default_prefix_length
            delegated = self._delegated(who, record, length, new_allocs)
        elif who.user_id is not None:
            # Host mode: the account's prefix (if any) stays reserved for it, unrouted.
            delegated = None

        claim = req.claimed_ipv4 if family == "ipv6" else req.claimed_ipv6
        offer = Offer(
            record,
            encap,
            endpoint_ipv4,
            endpoint_ipv6,
            who,
            keepalive,
            dns,
            lifetime,
            link,
            delegated,
            new_allocs,
            existing is not None,
            claim or endpoint_ipv4 or endpoint_ipv6,
        )
        grant = self._grant(offer, nat)
        self._offers.add(offer)
        return grant, offer

    def commit(self, offer: Offer, now: float) -> TunnelRecord:
        """The client accepted: make the tunnel live and persist it."""
        if offer not in self._offers:
            raise BrokerError(Refusal.NO_TUNNEL, "no such offer")
        self._offers.discard(offer)
        p = offer
        record = offer.record
        if p.existing and record.state == "ended" and record.user_id is None:
            # The anonymous tunnel this offer renews ended meanwhile (expired, or replaced),
            # and its addresses went back to the pool: they may be someone else's by now.
            raise BrokerError(Refusal.NO_TUNNEL, "the tunnel ended meanwhile; ask again")
        replacing = record.state == "active"
        if replacing:
            self._unindex(record)
        elif record.user_id is None:
            # Two sessions of one anonymous client raced for a new tunnel: the later replaces.
            family = p.encap.family
            key = (p.endpoint_ipv4 or p.endpoint_ipv6 or "", p.claimed_key or "", family)
            rival = self._by_anon.get(key)
            if rival is not None and rival is not record:
                self._end(rival, "replaced by a newer session", now)
        if record.id is None:
            record.id = next(self._tunnel_ids)
        record.type = p.encap.value
        record.transport = p.who.transport
        record.client_ipv4 = p.endpoint_ipv4
        record.client_port = p.who.source_port if p.encap is Encapsulation.V6UDPV4 else None
        record.client_ipv6 = p.endpoint_ipv6
        record.link_prefix = p.link.prefix
        record.delegated_prefix = p.delegated.prefix if p.delegated is not None else None
        record.dns_servers = list(p.dns)
        record.keepalive_interval = p.keepalive
        record.expires_at = now + p.lifetime
        record.updated_at = now
        record.state = "active"
        record.end_reason = None
        record.claimed_ipv4 = p.claimed_key
        for a in p.new_allocs:
            if a.user_id is None:
                a.tunnel_id = record.id
                self._tunnel_allocs.setdefault(record.id, []).append(a)
            self._persister.save_allocation(a)
        if p.delegated is not None and p.delegated.tunnel_id != record.id:
            p.delegated.tunnel_id = record.id
            self._persister.save_allocation(p.delegated)
        self._index(record)
        self._persister.save_tunnel(record)
        self._notify("updated" if replacing else "up", record)
        return record

    def abandon(self, offer: Offer) -> None:
        """The offer was rejected or the session died before accepting: undo allocations."""
        if offer not in self._offers:
            return
        self._offers.discard(offer)
        for a in offer.new_allocs:
            # Another standing offer of the same account may have picked this block up.
            if any(a is o.link or a is o.delegated for o in self._offers):
                continue
            self._pool_for(a.kind).release(ipaddress.ip_network(a.prefix))
            if a.user_id is not None:
                self._user_allocs.pop((a.user_id, a.kind), None)

    def delete(self, who: Requester, family: str, now: float) -> TunnelRecord:
        """End the requester's tunnel of that family (TSP ``delete``)."""
        t = self._find(who, family)
        if t is None:
            raise BrokerError(Refusal.NO_TUNNEL)
        self._end(t, "deleted by client", now)
        return t

    def find(self, who: Requester, family: str) -> TunnelRecord | None:
        return self._find(who, family)

    def grant_for(self, record: TunnelRecord) -> Grant:
        """Describe a live tunnel (TSP ``info``)."""
        link = ipaddress.ip_network(record.link_prefix)
        encap = Encapsulation(record.type)
        server_inner, client_inner, plen = self._inner(link)
        return Grant(
            tunnel_id=record.id,
            encapsulation=encap,
            server_ipv4=record.server_ipv4 or self.config.broker.server_ipv4,
            server_ipv6=record.server_ipv6 or self.config.broker.server_ipv6,
            client_ipv4=record.client_ipv4,
            client_ipv6=record.client_ipv6,
            server_inner=server_inner,
            client_inner=client_inner,
            inner_prefix_length=plen,
            keepalive_interval=record.keepalive_interval,
            keepalive_address=server_inner,
            lifetime=max(0, int(record.expires_at - record.updated_at)),
            delegated_prefix=record.delegated_prefix,
            dns_servers=tuple(record.dns_servers),
            resolvers=tuple(self.config.broker.dns_servers),
        )

    # ---------------------------------------------------------------- managed tunnels

    def create_tunnel(self, user_id: int, req: ManagedRequest, now: float) -> TunnelRecord:
        """Create a managed tunnel (static 6in4, heartbeat or AYIYA) for an account.

        It gets its own link /64, a routed /64 and, if asked, a shorter prefix, a secret (for
        heartbeat and AYIYA) and an update key. It is live at once; a heartbeat or AYIYA
        tunnel carries traffic once its endpoint is learnt. Raises BrokerError.
        """
        if req.kind not in MANAGED_KINDS:
            raise BrokerError(Refusal.UNSUPPORTED_TYPE, req.kind)
        if req.pop is not None:
            raise BrokerError(Refusal.INVALID_REQUEST, f"unknown tunnel server {req.pop!r}")
        mtu = self._mtu(req.mtu, req.kind)
        name = self._tunnel_name(req.name)
        endpoint: str | None = None
        if req.kind == "static":
            if req.client_ipv4 is None:
                raise BrokerError(Refusal.INVALID_IPV4, "a static tunnel needs the client's IPv4")
            endpoint = self._static_endpoint(req.client_ipv4)
            other = self._v6v4_endpoints.get(endpoint)
            if other is not None:
                raise BrokerError(Refusal.ENDPOINT_IN_USE, endpoint)
        elif req.client_ipv4 is not None:
            raise BrokerError(Refusal.INVALID_REQUEST, f"a {req.kind} tunnel learns its endpoint")
        if req.prefix_length is not None:
            pools = self.config.pools
            if not pools.min_prefix_length <= req.prefix_length <= pools.max_prefix_length:
                raise BrokerError(
                    Refusal.PREFIX_UNAVAILABLE,
                    f"/{req.prefix_length} is outside "
                    f"/{pools.min_prefix_length}../{pools.max_prefix_length}",
                )
        who = Requester(user_id, None, endpoint or "", 0, "api")
        self._check_limits(who)
        if req.prefix_length is not None:
            held = sum(
                1
                for t in self._user_tunnels.get(user_id, {}).values()
                if t.kind in MANAGED_KINDS and t.delegated_prefix
            )
            if held >= self.config.limits.prefixes_per_user:
                raise BrokerError(
                    Refusal.USER_LIMIT,
                    f"at most {self.config.limits.prefixes_per_user} tunnels with a prefix "
                    "besides the routed /64 per account",
                )
        record = TunnelRecord(
            id=next(self._tunnel_ids),
            user_id=user_id,
            kind=req.kind,
            type=(Encapsulation.AYIYA if req.kind == "ayiya" else Encapsulation.V6V4).value,
            state="active",
            transport="api",
            client_ipv4=endpoint,
            client_port=None,
            client_ipv6=None,
            server_ipv4=self.config.broker.server_ipv4,
            server_ipv6=self.config.broker.server_ipv6,
            link_prefix="",
            delegated_prefix=None,
            dns_servers=[],
            # Heartbeat and AYIYA clients beat (and TIC tells them how often); static ones don't.
            keepalive_interval=self.config.sixxs.heartbeat_interval if req.kind != "static" else 0,
            mtu=mtu,
            created_at=now,
            updated_at=now,
            expires_at=now + _FOREVER,
            name=name,
            secret=secrets.token_hex(16) if req.kind != "static" else None,
            update_key=secrets.token_urlsafe(18),
        )
        assert record.id is not None
        allocs: list[AllocationRecord] = []
        try:
            link = self._tunnel_alloc(record, "tunnel-link", 64, allocs)
            if req.routed_64:
                record.routed_prefix = self._tunnel_alloc(
                    record, "tunnel-routed", 64, allocs
                ).prefix
            if req.prefix_length is not None:
                record.delegated_prefix = self._tunnel_alloc(
                    record, "tunnel-prefix", req.prefix_length, allocs
                ).prefix
        except BrokerError:
            for a in allocs:
                self._pool_for(a.kind).release(ipaddress.ip_network(a.prefix))
            raise
        record.link_prefix = link.prefix
        self._tunnel_allocs[record.id] = allocs
        self._index(record)
        self._persister.save_tunnel(record)
        for a in allocs:
            self._persister.save_allocation(a)
        log.info("tunnel %s (%s) created for user %s", record.id, req.kind, user_id)
        self._notify("up", record)
        return record

    def user_tunnels(self, user_id: int) -> list[TunnelRecord]:
        """An account's live tunnels, by id."""
        return sorted(self._user_tunnels.get(user_id, {}).values(), key=lambda t: t.id or 0)

    def update_endpoint(
        self, tunnel_id: int, ipv4: str, port: int | None, now: float, *, learnt: bool = False
    ) -> bool:
        """Point a managed tunnel at a new client endpoint; True if it changed.

        ``learnt``: the address is the source of a valid heartbeat or AYIYA packet, so it is
        taken as it is (behind a NAT too). Otherwise (a user's update) a static tunnel's rules
        apply: a global address, not another tunnel's. Raises BrokerError.
        """
        t = self._managed(tunnel_id)
        if learnt:
            endpoint = str(ipaddress.IPv4Address(ipv4))
        else:
            if t.kind == "ayiya":
                raise BrokerError(Refusal.INVALID_REQUEST, "an AYIYA tunnel learns its endpoint")
            endpoint = self._static_endpoint(ipv4)
        if t.type == Encapsulation.V6V4:
            other = self._v6v4_endpoints.get(endpoint)
            if other is not None and other is not t:
                raise BrokerError(Refusal.ENDPOINT_IN_USE, endpoint)
            port = None
        if t.client_ipv4 == endpoint and t.client_port == port:
            return False
        self._unindex(t)
        t.client_ipv4, t.client_port, t.updated_at = endpoint, port, now
        t.last_error = None
        self._index(t)
        self._persister.save_tunnel(t)
        log.info("tunnel %s: endpoint now %s%s", t.id, endpoint, f":{port}" if port else "")
        self._notify("updated", t)
        return True

    def modify_tunnel(
        self,
        tunnel_id: int,
        now: float,
        *,
        mtu: int | None = None,
        name: str | None = None,
        dns_servers: tuple[str, ...] | None = None,
        user_state: str | None = None,
        admin_state: str | None = None,
        new_update_key: bool = False,
    ) -> TunnelRecord:
        """Change a managed tunnel's settings; only the arguments given. Raises BrokerError."""
        t = self._managed(tunnel_id)
        for state in (user_state, admin_state):
            if state not in (None, "enabled", "disabled"):
                raise BrokerError(Refusal.INVALID_REQUEST, f"state {state!r}")
        if mtu is not None:
            t.mtu = self._mtu(mtu, t.kind)
        if name is not None:
            t.name = self._tunnel_name(name)
        if dns_servers is not None:
            if not t.routed_prefix and not t.delegated_prefix:
                raise BrokerError(Refusal.BAD_DNS_SERVERS, "the tunnel has no routed prefix")
            t.dns_servers = list(self._dns_servers(dns_servers))
        if user_state is not None:
            t.user_state = user_state
        if admin_state is not None:
            t.admin_state = admin_state
        if new_update_key:
            t.update_key = secrets.token_urlsafe(18)
        t.updated_at = now
        self._persister.save_tunnel(t)
        self._notify("updated", t)
        return t

    def record_traffic(
        self,
        tunnel_id: int,
        last_seen: float | None,
        packets: tuple[int, int],
        octets: tuple[int, int],
    ) -> bool:
        """The data plane's counters for a live tunnel (totals, in and out) and when it last
        heard from the client (wall clock); persisted when they changed. True if they did."""
        t = self._tunnels.get(tunnel_id)
        if t is None:
            return False
        new = (last_seen or t.last_seen, *packets, *octets)
        if new == (t.last_seen, t.packets_in, t.packets_out, t.bytes_in, t.bytes_out):
            return False
        t.last_seen, t.packets_in, t.packets_out, t.bytes_in, t.bytes_out = new
        self._persister.save_tunnel(t)
        return True

    def record_error(self, tunnel_id: int, error: str | None, now: float) -> None:
        """Remember why a tunnel last failed (shown to its user)."""
        t = self._tunnels.get(tunnel_id)
        if t is not None and t.last_error != error:
            t.last_error, t.updated_at = error, now
            self._persister.save_tunnel(t)

    def delete_tunnel(self, tunnel_id: int, now: float, reason: str = "deleted") -> TunnelRecord:
        """End any live tunnel by id (its user, the web, an operator). Raises BrokerError."""
        t = self._tunnels.get(tunnel_id)
        if t is None:
            raise BrokerError(Refusal.NO_TUNNEL, str(tunnel_id))
        self._end(t, reason, now)
        return t

    def pool_usage(self) -> list[tuple[str, str, int, float]]:
        """(name, pool, blocks allocated, fraction used) of each address pool."""
        return [
            (name, str(pool.pool), pool.allocated, pool.utilisation())
            for name, pool in (
                ("link /64s", self._link_pool),
                ("delegated prefixes", self._delegated_pool),
                ("IPv4 /30s (v4v6)", self._ipv4_pool),
            )
        ]

    # ---------------------------------------------------------------- expiry

    def next_expiry(self) -> float | None:
        while self._expiry:
            at, tid = self._expiry[0]
            t = self._tunnels.get(tid)
            if t is not None and t.expires_at == at:
                return at
            heapq.heappop(self._expiry)
        return None

    def expire(self, now: float) -> list[TunnelRecord]:
        """End every tunnel whose lifetime is over."""
        ended = []
        while self._expiry and self._expiry[0][0] <= now:
            at, tid = heapq.heappop(self._expiry)
            t = self._tunnels.get(tid)
            if t is not None and t.expires_at == at:
                self._end(t, "lifetime expired", now)
                ended.append(t)
        return ended

    def end(self, record: TunnelRecord, reason: str, now: float) -> None:
        """End a live tunnel (keepalive silence, an operator, a replaced session)."""
        if record.id in self._tunnels:
            self._end(record, reason, now)

    # ---------------------------------------------------------------- internals

    def _choose_encapsulation(
        self, req: TunnelRequest, who: Requester
    ) -> tuple[Encapsulation, bool]:
        nat = False
        if req.encapsulation is None or req.encapsulation is Encapsulation.V6UDPV4:
            nat = req.claimed_ipv4 is not None and req.claimed_ipv4 != who.source_ip
        if req.encapsulation is not None:
            if req.encapsulation is Encapsulation.V6UDPV4 and who.transport != "udp":
                raise BrokerError(Refusal.UNSUPPORTED_TYPE, "v6udpv4 needs a UDP session")
            return req.encapsulation, nat
        # v6anyv4: NAT discovery (RFC 5572 §3.1): the packet's source against the claim.
        if nat:
            if who.transport != "udp":
                raise BrokerError(Refusal.NAT_NEEDS_UDP)
            return Encapsulation.V6UDPV4, True
        return Encapsulation.V6V4, False

    def _endpoint(
        self, req: TunnelRequest, who: Requester, encap: Encapsulation
    ) -> tuple[str | None, str | None]:
        if encap is Encapsulation.V4V6:
            claim = req.claimed_ipv6 or who.source_ip
            try:
                ip6 = ipaddress.IPv6Address(claim)
            except ValueError:
                raise BrokerError(Refusal.INVALID_IPV6, claim) from None
            if str(ip6) != str(ipaddress.IPv6Address(who.source_ip)):
                # Like v6v4 below: never aim a tunnel at an address that did not ask for it.
                raise BrokerError(Refusal.INVALID_IPV6, "claimed address is not the source")
            return None, str(ip6)
        claim4 = req.claimed_ipv4
        if claim4 is not None:
            try:
                ipaddress.IPv4Address(claim4)
            except ValueError:
                raise BrokerError(Refusal.INVALID_IPV4, claim4) from None
        try:
            source = ipaddress.IPv4Address(who.source_ip)
        except ValueError:
            raise BrokerError(
                Refusal.UNSUPPORTED_TYPE, "IPv6-in-IPv4 needs an IPv4 session"
            ) from None
        if encap is Encapsulation.V6V4 and claim4 is not None and claim4 != str(source):
            # RFC 4891/3964: a tunnel endpoint the requester does not control turns the broker
            # into a reflector. A private claim is a NAT forwarding protocol 41: use its outside.
            if not any(ipaddress.IPv4Address(claim4) in n for n in _NATTED):
                raise BrokerError(Refusal.INVALID_IPV4, "claimed address is not the source")
        # The endpoint is where packets really come from; the claim is only echoed.
        return str(source), None

    def _existing(self, who: Requester, req: TunnelRequest, family: str) -> TunnelRecord | None:
        if who.user_id is not None:
            return self._by_user.get((who.user_id, family))
        key = (who.source_ip, req.claimed_ipv4 or req.claimed_ipv6 or "", family)
        return self._by_anon.get(key)

    def _find(self, who: Requester, family: str) -> TunnelRecord | None:
        if who.user_id is not None:
            return self._by_user.get((who.user_id, family))
        found = self._anon_by_source.get((who.source_ip, family))
        return next(iter(found.values())) if found else None

    def _check_limits(self, who: Requester) -> None:
        limits = self.config.limits
        if len(self._tunnels) + len(self._offers) >= limits.max_tunnels:
            raise BrokerError(Refusal.NO_CAPACITY)
        if who.user_id is not None:
            if self._per_user[who.user_id] >= limits.tunnels_per_user:
                raise BrokerError(Refusal.USER_LIMIT)
        elif self._per_ipv4[who.source_ip] >= limits.tunnels_per_ipv4:
            raise BrokerError(Refusal.IPV4_LIMIT, who.source_ip)

    def _keepalive(self, requested: int | None) -> int:
        k = self.config.keepalive
        if not requested:
            return k.default_interval
        return max(k.min_interval, min(k.max_interval, requested))

    def _dns_servers(self, servers: tuple[str, ...]) -> tuple[str, ...]:
        if len(servers) > 5:
            raise BrokerError(Refusal.BAD_DNS_SERVERS, "at most five nameservers")
        out = []
        for s in servers:
            try:
                out.append(str(ipaddress.ip_address(s)))
                continue
            except ValueError:
                pass
            if not _HOSTNAME.match(s):
                raise BrokerError(Refusal.BAD_DNS_SERVERS, s)
            out.append(s.rstrip(".").lower())
        return tuple(out)

    def _managed(self, tunnel_id: int) -> TunnelRecord:
        t = self._tunnels.get(tunnel_id)
        if t is None or t.kind not in MANAGED_KINDS:
            raise BrokerError(Refusal.NO_TUNNEL, str(tunnel_id))
        return t

    @staticmethod
    def _mtu(mtu: int | None, kind: str, default: int = 1280) -> int:
        if mtu is None:
            return default
        if not 1280 <= mtu <= 1480:
            raise BrokerError(Refusal.INVALID_MTU, str(mtu))
        if kind == "ayiya" and mtu > AYIYA_MAX_MTU:
            # A larger packet would not leave the PoP whole on a 1500-byte path (the PoP's
            # datagrams carry DF): its AYIYA datagram would be refused or fragmented.
            raise BrokerError(
                Refusal.INVALID_MTU,
                f"{mtu}: an AYIYA tunnel carries at most {AYIYA_MAX_MTU} (1500 less IPv4, UDP "
                "and AYIYA's 44-byte header)",
            )
        return mtu

    @staticmethod
    def _tunnel_name(name: str | None) -> str | None:
        if name is None or name == "":
            return None
        if not _TUNNEL_NAME.match(name):
            raise BrokerError(
                Refusal.INVALID_REQUEST,
                "a tunnel name is 1-64 letters, digits, spaces and . , : ( ) / + - _",
            )
        return name

    def _static_endpoint(self, ipv4: str) -> str:
        """A client IPv4 endpoint someone typed in: it must be a global unicast address."""
        try:
            addr = ipaddress.IPv4Address(ipv4)
        except ValueError:
            raise BrokerError(Refusal.INVALID_IPV4, repr(ipv4)) from None
        allowed = self.config.limits.static_endpoint_networks
        public = addr.is_global and not addr.is_multicast
        if not public and not any(addr in ipaddress.IPv4Network(n) for n in allowed):
            kind = next((k for k, nets in _NON_GLOBAL if any(addr in n for n in nets)), "reserved")
            raise BrokerError(
                Refusal.INVALID_IPV4,
                f"{addr} is a {kind} address; a static 6in4 tunnel needs a public one "
                "(behind a NAT, use AYIYA or TSP)",
            )
        return str(addr)

    def _tunnel_alloc(
        self, record: TunnelRecord, kind: str, length: int, allocs: list[AllocationRecord]
    ) -> AllocationRecord:
        who = Requester(record.user_id, None, "", 0, "api")
        scratch: list[AllocationRecord] = []
        a = self._new_alloc(who, kind, length, scratch, record.created_at)
        a.tunnel_id = record.id
        allocs.append(a)
        return a

    def _pool_for(self, kind: str) -> PrefixPool[Any]:
        kind = _TUNNEL_ALLOC_POOLS.get(kind, kind)
        if kind == "link":
            return self._link_pool
        if kind == "delegated":
            return self._delegated_pool
        if kind == "ipv4":
            return self._ipv4_pool
        raise ValueError(f"unknown allocation kind {kind!r}")

    def _new_alloc(
        self,
        who: Requester,
        kind: str,
        length: int,
        now_allocs: list[AllocationRecord],
        created: float,
    ) -> AllocationRecord:
        try:
            net = self._pool_for(kind).allocate(length)
        except PoolExhausted:
            if _TUNNEL_ALLOC_POOLS.get(kind, kind) == "delegated":
                raise BrokerError(
                    Refusal.PREFIX_UNAVAILABLE, f"/{length}: pool exhausted"
                ) from None
            raise BrokerError(Refusal.NO_CAPACITY, f"{kind} pool exhausted") from None
        except ValueError:
            raise BrokerError(Refusal.PREFIX_UNAVAILABLE, f"/{length} is not offered") from None
        a = AllocationRecord(
            id=next(self._alloc_ids),
            user_id=who.user_id,
            tunnel_id=None,
            kind=kind,
            prefix=str(net),
            created_at=created,
        )
        if who.user_id is not None and kind not in _TUNNEL_ALLOC_POOLS:
            self._user_allocs[(who.user_id, kind)] = a
        now_allocs.append(a)
        return a

    def _address_block(
        self, who: Requester, record: TunnelRecord, kind: str, new_allocs: list[AllocationRecord]
    ) -> AllocationRecord:
        if who.user_id is not None:
            a = self._user_allocs.get((who.user_id, kind))
            if a is not None:
                return a
        elif record.id is not None:
            for a in self._tunnel_allocs.get(record.id, []):
                if a.kind == kind:
                    return a
        length = 30 if kind == "ipv4" else 64
        return self._new_alloc(who, kind, length, new_allocs, record.created_at)

    def _delegated(
        self, who: Requester, record: TunnelRecord, length: int, new_allocs: list[AllocationRecord]
    ) -> AllocationRecord:
        pools = self.config.pools
        if not pools.min_prefix_length <= length <= pools.max_prefix_length:
            raise BrokerError(
                Refusal.PREFIX_UNAVAILABLE,
                f"/{length} is outside /{pools.min_prefix_length}../{pools.max_prefix_length}",
            )
        current: AllocationRecord | None = None
        if who.user_id is not None:
            current = self._user_allocs.get((who.user_id, "delegated"))
        elif record.id is not None:
            current = next(
                (a for a in self._tunnel_allocs.get(record.id, []) if a.kind == "delegated"), None
            )
        if current is not None and ipaddress.ip_network(current.prefix).prefixlen == length:
            return current
        if current is not None:
            # A different length: the old prefix goes back to the pool once the new one is live.
            self._pool_for("delegated").release(ipaddress.ip_network(current.prefix))
            self._persister.release_allocation(current)
            if who.user_id is not None:
                self._user_allocs.pop((who.user_id, "delegated"), None)
            elif record.id is not None:
                self._tunnel_allocs[record.id].remove(current)
        return self._new_alloc(who, "delegated", length, new_allocs, record.created_at)

    @staticmethod
    def _inner(link: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, str, int]:
        if link.version == 6:
            return str(link.network_address + 1), str(link.network_address + 2), 128
        # v4v6 /30: client is the first host, server the second (RFC 5572 Fig. 17).
        return str(link.network_address + 2), str(link.network_address + 1), 30

    def _grant(self, p: Offer, nat: bool) -> Grant:
        link = ipaddress.ip_network(p.link.prefix)
        server_inner, client_inner, plen = self._inner(link)
        domain = self.config.broker.client_domain
        name = f"{p.who.user_name}.{domain}" if domain and p.who.user_name else None
        return Grant(
            tunnel_id=p.record.id,
            encapsulation=p.encap,
            server_ipv4=self.config.broker.server_ipv4,
            server_ipv6=self.config.broker.server_ipv6,
            # The claim is echoed (RFC 5572 Fig. 19 echoes a NATed client's private address).
            client_ipv4=p.claimed_key if p.encap is not Encapsulation.V4V6 else None,
            client_ipv6=p.endpoint_ipv6,
            server_inner=server_inner,
            client_inner=client_inner,
            inner_prefix_length=plen,
            keepalive_interval=p.keepalive,
            keepalive_address=server_inner,
            lifetime=p.lifetime,
            delegated_prefix=p.delegated.prefix if p.delegated is not None else None,
            dns_servers=p.dns,
            resolvers=tuple(self.config.broker.dns_servers),
            client_name=name,
            nat_detected=nat,
        )

    def _index(self, t: TunnelRecord) -> None:
        assert t.id is not None
        self._tunnels[t.id] = t
        family = Encapsulation(t.type).family
        if t.user_id is not None:
            if t.kind not in MANAGED_KINDS:
                self._by_user[(t.user_id, family)] = t
            self._per_user[t.user_id] += 1
            self._user_tunnels.setdefault(t.user_id, {})[t.id] = t
        else:
            src = t.client_ipv4 or t.client_ipv6 or ""
            self._by_anon[(src, t.claimed_ipv4 or "", family)] = t
            self._anon_by_source.setdefault((src, family), {})[t.id] = t
            self._per_ipv4[src] += 1
        if t.type == Encapsulation.V6V4 and t.client_ipv4:
            self._v6v4_endpoints[t.client_ipv4] = t
        heapq.heappush(self._expiry, (t.expires_at, t.id))

    def _unindex(self, t: TunnelRecord) -> None:
        assert t.id is not None
        self._tunnels.pop(t.id, None)
        family = Encapsulation(t.type).family
        if t.user_id is not None:
            if self._by_user.get((t.user_id, family)) is t:
                del self._by_user[(t.user_id, family)]
            self._per_user[t.user_id] -= 1
            if self._per_user[t.user_id] <= 0:
                del self._per_user[t.user_id]
            mine = self._user_tunnels.get(t.user_id, {})
            mine.pop(t.id, None)
            if not mine:
                self._user_tunnels.pop(t.user_id, None)
        else:
            src = t.client_ipv4 or t.client_ipv6 or ""
            self._by_anon.pop((src, t.claimed_ipv4 or "", family), None)
            same = self._anon_by_source.get((src, family))
            if same is not None:
                same.pop(t.id, None)
                if not same:
                    del self._anon_by_source[(src, family)]
            self._per_ipv4[src] -= 1
            if self._per_ipv4[src] <= 0:
                del self._per_ipv4[src]
        if t.client_ipv4 and self._v6v4_endpoints.get(t.client_ipv4) is t:
            del self._v6v4_endpoints[t.client_ipv4]

    def _end(self, t: TunnelRecord, reason: str, now: float) -> None:
        self._unindex(t)
        t.state = "ended"
        t.end_reason = reason
        t.updated_at = now
        assert t.id is not None
        for a in self._tunnel_allocs.pop(t.id, []):
            # Anonymous and managed tunnels' addresses go back to the pool; an account's TSP
            # addresses stay with the account.
            self._pool_for(a.kind).release(ipaddress.ip_network(a.prefix))
            self._persister.release_allocation(a)
        self._persister.save_tunnel(t)
        log.info("tunnel %s ended: %s", t.id, reason)
        self._notify("down", t)

    def _notify(self, kind: str, t: TunnelRecord) -> None:
        event = TunnelEvent(kind, t)
        for obs in self._observers:
            try:
                obs(event)
            except Exception:
                log.exception("observer failed on %s of tunnel %s", kind, t.id)


@dataclass(eq=False, slots=True)
class Offer:
    """A tunnel offered to a client and not yet accepted; compared by identity."""

    record: TunnelRecord
    encap: Encapsulation
    endpoint_ipv4: str | None
    endpoint_ipv6: str | None
    who: Requester
    keepalive: int
    dns: tuple[str, ...]
    lifetime: int
    link: AllocationRecord
    delegated: AllocationRecord | None
    new_allocs: list[AllocationRecord]
    existing: bool
    claimed_key: str | None = None
