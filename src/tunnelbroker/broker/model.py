"""The broker's vocabulary: encapsulations, requests, grants and refusals.

Independent of any setup protocol: TSP (and later TIC and the web) translate to and from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class Encapsulation(StrEnum):
    """How a tunnel's packets travel."""

    #: IPv6 in IPv4, protocol 41 (RFC 4213).
    V6V4 = "v6v4"
    #: IPv6 directly in UDP/IPv4 on the TSP flow.
    V6UDPV4 = "v6udpv4"
    #: IPv4 in IPv6 (RFC 2473).
    V4V6 = "v4v6"
    #: IPv6 in AYIYA in UDP/IPv4 (SixXS; the client's address and port are learnt).
    AYIYA = "ayiya"

    @property
    def family(self) -> str:
        """Which address the tunnel carries: ``"ipv6"`` or ``"ipv4"``."""
        return "ipv4" if self is Encapsulation.V4V6 else "ipv6"


class Refusal(Enum):
    """Why the broker says no. Each setup protocol maps these to its own codes."""

    NO_CAPACITY = "no more tunnels available"
    USER_LIMIT = "tunnel limit for this account reached"
    IPV4_LIMIT = "tunnel limit for this IPv4 address reached"
    UNSUPPORTED_TYPE = "tunnel type not offered"
    NAT_NEEDS_UDP = "a NAT is in the path: v6udpv4 is needed, which needs a UDP session"
    INVALID_IPV4 = "invalid IPv4 address"
    INVALID_IPV6 = "invalid IPv6 address"
    ENDPOINT_IN_USE = "IPv4 endpoint already used by another tunnel"
    PREFIX_UNAVAILABLE = "requested prefix length cannot be assigned"
    PREFIX_FOR_ANONYMOUS = "prefix delegation needs an account"
    BAD_DNS_SERVERS = "invalid nameservers for reverse delegation"
    NO_TUNNEL = "no such tunnel"
    INVALID_MTU = "MTU must be between 1280 and 1480"
    INVALID_REQUEST = "invalid tunnel request"
    BUSY = "server too busy"
    INTERNAL = "server side error"


class BrokerError(Exception):
    """A refusal with a reason for logs and users."""

    def __init__(self, refusal: Refusal, detail: str = "") -> None:
        super().__init__(f"{refusal.value}: {detail}" if detail else refusal.value)
        self.refusal = refusal
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, and from where (the packet's source, not what the client claims)."""

    user_id: int | None
    user_name: str | None
    source_ip: str
    source_port: int
    transport: str  # "udp" or "tcp"


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """A request for a tunnel, protocol-neutral.

    ``encapsulation`` None means "choose for me" (TSP v6anyv4: NAT discovery decides).
    """

    encapsulation: Encapsulation | None
    claimed_ipv4: str | None = None
    claimed_ipv6: str | None = None
    #: Router mode: the delegated prefix length asked for (0: the broker's default).
    prefix_length: int | None = None
    #: Nameservers (addresses or names) for reverse delegation of the delegated prefix.
    dns_servers: tuple[str, ...] = ()
    keepalive_interval: int | None = None
    kind: str = "tsp"


#: How a managed tunnel (made by an operator, the web or the API, not by a TSP session) is set
#: up, and its SixXS type name as TIC shows it.
MANAGED_KINDS: dict[str, str] = {
    "static": "6in4-static",
    "heartbeat": "6in4-heartbeat",
    "ayiya": "ayiya",
}


@dataclass(frozen=True, slots=True)
class ManagedRequest:
    """A managed tunnel: static 6in4, 6in4 with heartbeat, or AYIYA.

    Unlike a TSP tunnel it lives until deleted, an account may hold several, and each has its
    own addresses: a link /64 (server ``::1``, client ``::2``), a routed /64 and, on request,
    a shorter prefix.
    """

    #: One of :data:`MANAGED_KINDS`.
    kind: str
    #: The client's IPv4 endpoint; required for ``static``, learnt for the others.
    client_ipv4: str | None = None
    #: 1280..1480; None: the configured default.
    mtu: int | None = None
    routed_64: bool = True
    #: A delegated prefix of this length besides the routed /64 (e.g. 48); None: none.
    prefix_length: int | None = None
    name: str | None = None
    #: The tunnel server (PoP) by name; None: this one.
    pop: str | None = None


@dataclass(slots=True)
class Grant:
    """What the broker gives: everything a setup protocol needs for its answer."""

    tunnel_id: int | None
    encapsulation: Encapsulation
    server_ipv4: str
    server_ipv6: str
    client_ipv4: str | None
    client_ipv6: str | None
    #: Inner addresses on the tunnel link.
    server_inner: str
    client_inner: str
    inner_prefix_length: int
    keepalive_interval: int
    keepalive_address: str
    lifetime: int
    delegated_prefix: str | None = None
    dns_servers: tuple[str, ...] = ()
    resolvers: tuple[str, ...] = ()
    client_name: str | None = None
    nat_detected: bool = False
