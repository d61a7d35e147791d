"""TSP messages as immutable values.

The XML document of RFC 5572 Appendix A maps onto :class:`Tunnel`; ``codec.py`` turns it into
bytes and back. Addresses are kept as the text that travels on the wire (validated by the codec),
so that a value read from a client is echoed exactly and what we send is exactly what we chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TunnelType(StrEnum):
    """IANA TSP tunnel types (RFC 5572 §6.1)."""

    #: IPv6 in IPv4, IP protocol 41 (RFC 4213).
    V6V4 = "v6v4"
    #: IPv6 in UDP/IPv4 on the signalling flow; NAT traversal.
    V6UDPV4 = "v6udpv4"
    #: The broker chooses v6v4 or v6udpv4 from NAT discovery.
    V6ANYV4 = "v6anyv4"
    #: IPv4 in IPv6 (RFC 2473), signalled over IPv6.
    V4V6 = "v4v6"

    def to_capability(self) -> str:
        """The ``TUNNEL=`` token value, e.g. ``V6UDPV4``."""
        return self.value.upper()


class Action(StrEnum):
    """``tunnel@action``. ``list`` appears only in referrals (RFC 5572 Fig. 9)."""

    CREATE = "create"
    DELETE = "delete"
    INFO = "info"
    ACCEPT = "accept"
    REJECT = "reject"
    LIST = "list"


class AddressType(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DN = "dn"


@dataclass(frozen=True, slots=True)
class Address:
    """``<address type="..." length="...">value</address>``."""

    type: AddressType
    value: str
    length: int | None = None


@dataclass(frozen=True, slots=True)
class Keepalive:
    """``<keepalive interval="T"><address .../></keepalive>``; interval in seconds."""

    interval: int
    address: Address | None = None


@dataclass(frozen=True, slots=True)
class Prefix:
    """``<prefix length="L">value</prefix>``; ``value`` is None in a client's request."""

    length: int
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Router:
    """``<router>``: a prefix request/assignment and nameservers for reverse delegation."""

    prefix: Prefix | None = None
    dns_servers: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The ``<client>`` or ``<server>`` element.

    ``dns_servers`` is the ``<client><dns_server>`` list that gogoc requires in an offer (the
    resolver the client should use); ``router.dns_servers`` is the list for reverse delegation.
    """

    addresses: tuple[Address, ...] = ()
    keepalive: Keepalive | None = None
    router: Router | None = None
    dns_servers: tuple[Address, ...] = ()

    def address(self, type_: AddressType) -> Address | None:
        """The first address of the given type, if any."""
        for a in self.addresses:
            if a.type is type_:
                return a
        return None


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A ``<tunnel>`` document: request, offer, accept/reject or referral list."""

    action: Action
    type: TunnelType | None = None
    lifetime: int | None = None
    proxy: bool | None = None
    mtu: int | None = None
    client: Endpoint | None = None
    server: Endpoint | None = None
    brokers: tuple[Address, ...] = field(default=())
