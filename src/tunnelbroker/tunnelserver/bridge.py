"""From the broker's tunnel records to the data plane's tunnel states."""

from __future__ import annotations

import ipaddress

from tunnelbroker.store.records import TunnelRecord
from tunnelbroker.tunnelserver.engine import Encap, TunnelState


def state_from_record(record: TunnelRecord, now_wall: float, now_mono: float) -> TunnelState:
    """The data plane's view of a live tunnel.

    The link /64 gives the server ``::1`` (the keepalive address) and the client ``::2``; a v4v6
    link /30 gives the client the first host and the server the second. Lifetimes are stored as
    wall-clock time and the data plane runs on the monotonic clock.
    """
    assert record.id is not None
    encap = Encap(record.type)
    link = ipaddress.ip_network(record.link_prefix)
    prefixes: list[ipaddress.IPv6Network | ipaddress.IPv4Network]
    if encap is Encap.V4V6:
        client = link.network_address + 1
        server = link.network_address + 2
        prefixes = [ipaddress.IPv4Network(f"{client}/32")]
        remote = record.client_ipv6 or ""
    else:
        client = link.network_address + 2
        server = link.network_address + 1
        prefixes = [ipaddress.IPv6Network(f"{client}/128")]
        if record.delegated_prefix:
            prefixes.append(ipaddress.IPv6Network(record.delegated_prefix))
        remote = record.client_ipv4 or ""
    return TunnelState(
        tunnel_id=record.id,
        encap=encap,
        remote=remote,
        port=record.client_port if encap is Encap.V6UDPV4 else None,
        prefixes=prefixes,
        server_inner=str(server),
        mtu=record.mtu,
        keepalive_interval=record.keepalive_interval,
        expires_at=now_mono + max(0.0, record.expires_at - now_wall),
    )
