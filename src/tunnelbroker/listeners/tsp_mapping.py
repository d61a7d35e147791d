"""Translation between TSP documents and the broker's protocol-neutral model. Pure."""

from __future__ import annotations

import ipaddress
import math

from tunnelbroker.broker.model import Encapsulation, Grant, Refusal, TunnelRequest
from tunnelbroker.protocols.tsp.codec import expand_ipv6
from tunnelbroker.protocols.tsp.errors import RemoteProtocolError, StatusCode
from tunnelbroker.protocols.tsp.messages import (
    Action,
    Address,
    AddressType,
    Endpoint,
    Keepalive,
    Prefix,
    Router,
    Tunnel,
    TunnelType,
)

_ENCAP = {
    TunnelType.V6V4: Encapsulation.V6V4,
    TunnelType.V6UDPV4: Encapsulation.V6UDPV4,
    TunnelType.V6ANYV4: None,
    TunnelType.V4V6: Encapsulation.V4V6,
}

#: Refusal -> (TSP code, whether a referral to another broker makes sense).
REFUSAL_CODES: dict[Refusal, tuple[StatusCode, bool]] = {
    Refusal.NO_CAPACITY: (StatusCode.NO_MORE_TUNNELS, True),
    Refusal.USER_LIMIT: (StatusCode.NO_MORE_TUNNELS, False),
    Refusal.IPV4_LIMIT: (StatusCode.NO_MORE_TUNNELS, False),
    Refusal.UNSUPPORTED_TYPE: (StatusCode.UNSUPPORTED_TUNNEL_TYPE, True),
    Refusal.NAT_NEEDS_UDP: (StatusCode.UNSUPPORTED_TUNNEL_TYPE, False),
    Refusal.INVALID_IPV4: (StatusCode.INVALID_IPV4_ADDRESS, False),
    Refusal.INVALID_IPV6: (StatusCode.INVALID_IPV6_ADDRESS, False),
    Refusal.ENDPOINT_IN_USE: (StatusCode.IPV4_ADDRESS_ALREADY_USED, False),
    Refusal.PREFIX_UNAVAILABLE: (StatusCode.PREFIX_LENGTH_UNAVAILABLE, True),
    Refusal.PREFIX_FOR_ANONYMOUS: (StatusCode.PREFIX_FOR_ANONYMOUS, False),
    Refusal.BAD_DNS_SERVERS: (StatusCode.DNS_DELEGATION_ERROR, False),
    Refusal.NO_TUNNEL: (StatusCode.SERVER_SIDE_ERROR, False),
    Refusal.BUSY: (StatusCode.SERVER_TOO_BUSY, False),
    Refusal.INTERNAL: (StatusCode.SERVER_SIDE_ERROR, False),
}


def family_of(request: Tunnel) -> str:
    """The address family a ``delete``/``info`` is about (v4v6 carries IPv4)."""
    return "ipv4" if request.type is TunnelType.V4V6 else "ipv6"


def to_request(doc: Tunnel, offered: tuple[TunnelType, ...]) -> TunnelRequest:
    """A client's ``create`` as a broker request.

    Raises RemoteProtocolError with 303 for a type this broker does not offer, 501/502 for
    unusable addresses.
    """
    assert doc.type is not None
    if doc.type not in offered:
        raise RemoteProtocolError(
            f"type {doc.type.value} not offered", StatusCode.UNSUPPORTED_TUNNEL_TYPE
        )
    client = doc.client or Endpoint()
    v4 = client.address(AddressType.IPV4)
    v6 = client.address(AddressType.IPV6)
    claimed_v4 = v4.value if v4 is not None else None
    claimed_v6 = v6.value if v6 is not None else None
    if claimed_v4 is not None:
        try:
            claimed_v4 = str(ipaddress.IPv4Address(claimed_v4))
        except ValueError:
            raise RemoteProtocolError(
                f"bad IPv4 {claimed_v4!r}", StatusCode.INVALID_IPV4_ADDRESS
            ) from None
    if claimed_v6 is not None and doc.type is TunnelType.V4V6:
        try:
            claimed_v6 = str(ipaddress.IPv6Address(claimed_v6))
        except ValueError:
            raise RemoteProtocolError(
                f"bad IPv6 {claimed_v6!r}", StatusCode.INVALID_IPV6_ADDRESS
            ) from None
    prefix_length = None
    dns: tuple[str, ...] = ()
    if client.router is not None:
        # gogoc: prefixlen=0 asks for the broker's default; no <prefix> means the same.
        prefix = client.router.prefix
        prefix_length = prefix.length if prefix is not None else 0
        dns = tuple(a.value for a in client.router.dns_servers)
    keepalive = client.keepalive.interval if client.keepalive is not None else None
    return TunnelRequest(
        encapsulation=_ENCAP[doc.type],
        claimed_ipv4=claimed_v4,
        claimed_ipv6=claimed_v6 if doc.type is TunnelType.V4V6 else None,
        prefix_length=prefix_length,
        dns_servers=dns,
        keepalive_interval=keepalive,
    )


def to_offer(grant: Grant) -> Tunnel:
    """The broker's grant as the ``info`` document gogoc and RFC 5572 clients accept.

    gogoc needs client and server v4 and v6, a ``<client><dns_server>`` (without it gogoc 1.2
    crashes) and fully expanded prefixes (tsp.md §2.5).
    """
    minutes = max(1, math.ceil(grant.lifetime / 60))  # RFC 5572 §4.2: lifetime in minutes
    resolvers = tuple(Address(AddressType.IPV6, r) for r in grant.resolvers)
    if grant.encapsulation is Encapsulation.V4V6:
        server = Endpoint(
            addresses=(
                Address(AddressType.IPV4, grant.server_inner, 30),
                Address(AddressType.IPV6, grant.server_ipv6),
            )
        )
        client_addrs = [
            Address(AddressType.IPV4, grant.client_inner, 30),
            Address(AddressType.IPV6, grant.client_ipv6 or ""),
        ]
        ka_addr = Address(AddressType.IPV4, grant.keepalive_address)
    else:
        server = Endpoint(
            addresses=(
                Address(AddressType.IPV4, grant.server_ipv4),
                Address(AddressType.IPV6, grant.server_inner),
            )
        )
        client_addrs = [
            Address(AddressType.IPV4, grant.client_ipv4 or ""),
            Address(AddressType.IPV6, grant.client_inner),
        ]
        ka_addr = Address(AddressType.IPV6, grant.keepalive_address)
    if grant.client_name:
        client_addrs.append(Address(AddressType.DN, grant.client_name))
    router = None
    if grant.delegated_prefix is not None:
        net = ipaddress.IPv6Network(grant.delegated_prefix)
        router = Router(
            prefix=Prefix(net.prefixlen, expand_ipv6(str(net.network_address))),
            dns_servers=tuple(_ns_address(n) for n in grant.dns_servers),
        )
    client = Endpoint(
        addresses=tuple(client_addrs),
        keepalive=Keepalive(grant.keepalive_interval, ka_addr),
        router=router,
        dns_servers=resolvers,
    )
    return Tunnel(
        action=Action.INFO,
        type=TunnelType(grant.encapsulation.value),
        lifetime=minutes,
        client=client,
        server=server,
    )


def _ns_address(name: str) -> Address:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return Address(AddressType.DN, name)
    return Address(AddressType.IPV4 if ip.version == 4 else AddressType.IPV6, str(ip))
