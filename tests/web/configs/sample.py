"""The sample tunnel the configuration tests render, one per type, with changes on request."""

from __future__ import annotations

from tunnelbroker.web.configs import TunnelConfigInput

#: Documentation addresses throughout (RFC 5737, RFC 3849).
SAMPLE: dict[str, object] = dict(
    tunnel_id=12,
    server_ipv4="192.0.2.1",
    client_ipv4="203.0.113.7",
    link_prefix="2001:db8:8000:c::/64",
    routed_prefix="2001:db8:c000:12::/64",
    delegated_prefix="2001:db8:c012::/48",
    mtu=1480,
    broker_host="broker.example.net",
    username="alice",
    description="home (router)",
    update_url="https://broker.example.net/nic/update",
)


def make_input(kind: str = "static", **changes: object) -> TunnelConfigInput:
    """The sample tunnel of type ``kind`` (no client IPv4 unless static), with ``changes``."""
    values = dict(SAMPLE, kind=kind)
    if kind != "static":
        values["client_ipv4"] = None  # learnt: heartbeat, AYIYA, TSP
    values.update(changes)
    return TunnelConfigInput.make(**values)  # type: ignore[arg-type]
