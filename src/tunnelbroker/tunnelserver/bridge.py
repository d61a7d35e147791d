"""From the broker's tunnel records to the data plane's tunnel states."""

from __future__ import annotations

import ipaddress

from tunnelbroker.protocols.ayiya import AyiyaLink, Role
from tunnelbroker.store.records import TunnelRecord
from tunnelbroker.tunnelserver.engine import Encap, TunnelState

#: Record types this data plane forwards.
_FORWARDED = {e.value for e in Encap}
#: Tunnels made by an operator or the web rather than a TSP session: they live until deleted.
_MANAGED = {"static", "heartbeat", "ayiya"}


def installable(record: TunnelRecord) -> bool:
    """Whether the data plane should carry this tunnel now: live, switched on by its user and
    the operator, of a type it forwards, and with a known endpoint (a heartbeat tunnel has none
    until its first beat)."""
    return (
        record.state == "active"
        and record.user_state == "enabled"
        and record.admin_state == "enabled"
        and record.type in _FORWARDED
        # An AYIYA tunnel is found by its identity: it is carried before its first packet
        # tells where the client is.
        and (bool(record.client_ipv4 or record.client_ipv6) or record.type == "ayiya")
        and (record.type != "ayiya" or bool(record.secret))
    )


def state_from_record(
    record: TunnelRecord,
    now_wall: float,
    now_mono: float,
    clock_window: int = 120,
    *,
    silent: bool = False,
) -> TunnelState:
    """The data plane's view of a live tunnel.

    The link /64 gives the server ``::1`` (the keepalive address) and the client ``::2``; a v4v6
    link /30 gives the client the first host and the server the second. Lifetimes are stored as
    wall-clock time and the data plane runs on the monotonic clock. Only for records that
    are :func:`installable`. ``silent``: an AYIYA tunnel that is down (no datagram for too
    long) goes in without its last endpoint, until its client is heard again.
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
        for routed in (record.routed_prefix, record.delegated_prefix):
            if routed:
                prefixes.append(ipaddress.IPv6Network(routed))
        remote = record.client_ipv4 or ""
    port = record.client_port if encap in (Encap.V6UDPV4, Encap.AYIYA) else None
    if silent and encap is Encap.AYIYA:
        remote, port = "", None
    ayiya = None
    if encap is Encap.AYIYA:
        ayiya = AyiyaLink(
            record.secret or "",
            role=Role.SERVER,
            local=ipaddress.IPv6Address(server),
            remote=ipaddress.IPv6Address(client),
            clock_window=clock_window,
        )
    return TunnelState(
        tunnel_id=record.id,
        encap=encap,
        remote=remote,
        port=port,
        ayiya=ayiya,
        prefixes=prefixes,
        server_inner=str(server),
        mtu=record.mtu,
        # A managed tunnel that falls silent is down, not ended: its heartbeat (or nothing,
        # for a static one) decides, so the data plane never expires it for idleness.
        keepalive_interval=0 if record.kind in _MANAGED else record.keepalive_interval,
        expires_at=now_mono + max(0.0, record.expires_at - now_wall),
        # Counters go on from the recorded totals, across re-installs and restarts.
        packets_in=record.packets_in,
        packets_out=record.packets_out,
        bytes_in=record.bytes_in,
        bytes_out=record.bytes_out,
    )
