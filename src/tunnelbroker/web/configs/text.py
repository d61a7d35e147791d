"""The comment blocks every configuration shares: what it does and the broker's values."""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import ConfigError, TunnelConfigInput, TunnelKind

_KIND_TEXT = {
    TunnelKind.STATIC: "6in4 (IPv6 in IPv4, IP protocol 41)",
    TunnelKind.HEARTBEAT: "6in4 with heartbeat (protocol 41; the endpoint follows your IPv4)",
    TunnelKind.AYIYA: "AYIYA (IPv6 in signed UDP, works through NATs)",
    TunnelKind.TSP: "TSP (the client negotiates 6in4, or IPv6 in UDP behind a NAT)",
}


#: Short names, as the portal shows them.
KIND_NAMES = {
    TunnelKind.STATIC: "6in4",
    TunnelKind.HEARTBEAT: "6in4 heartbeat",
    TunnelKind.AYIYA: "AYIYA",
    TunnelKind.TSP: "TSP",
}


def kind_text(p: TunnelConfigInput) -> str:
    """What the tunnel's type is, in a few words."""
    return _KIND_TEXT[p.kind]


def header(p: TunnelConfigInput, platform: str, does: list[str], comment: str = "#") -> str:
    """The opening comment: tunnel id, platform, what the file does, the broker's values."""
    client = (
        f"{p.client_ipv4} (this end; behind a NAT, put this host's private address instead)"
        if p.client_ipv4 is not None
        else "learnt by the broker from your packets"
    )
    lines = [
        f"tunnelbroker: tunnel {p.label}, {platform}",
        *does,
        "Values from the broker:",
        f"  tunnel       T{p.tunnel_id}, {kind_text(p)}, MTU {p.mtu}",
        f"  server IPv4  {p.server_ipv4} (the tunnel server)",
        f"  client IPv4  {client}",
        f"  link         {p.link}: server {p.server_ipv6}, client {p.client_ipv6}",
    ]
    if p.routed is not None:
        lines.append(f"  routed /64   {p.routed}")
    if p.delegated is not None:
        lines.append(f"  routed /{p.delegated.prefixlen}   {p.delegated}")
    return comments(lines, comment)


def comments(lines: list[str], comment: str = "#") -> str:
    """``lines`` as comment lines (an empty line stays a bare comment mark)."""
    return "".join(f"{comment} {line}".rstrip() + "\n" for line in lines)


def lan_hint(p: TunnelConfigInput, how: list[str], comment: str = "#") -> str:
    """How to put the routed /64 on a LAN (the lines in ``how`` may use ``{lan}``), and
    what the larger prefix is for. Empty without a routed prefix."""
    lan = p.lan_address
    if lan is None:
        return ""
    lines = [
        f"To route {p.routed} to your LAN (this host as its router):",
        *(f"  {line.format(lan=lan, net=p.routed)}" for line in how),
    ]
    if p.delegated is not None:
        lines.append(f"More LANs: take further /64s out of {p.delegated}.")
    return comments(lines, comment)


def update_hint(p: TunnelConfigInput, comment: str = "#") -> str:
    """For a static tunnel: how to tell the broker about a new IPv4 address."""
    if p.kind is not TunnelKind.STATIC or p.update_url is None:
        return ""
    key = p.update_key or "UPDATE-KEY"
    return comments(
        [
            "When your IPv4 address changes, tell the broker (key: the tunnel's update key):",
            f'  curl -4 -u "{p.username}:{key}" "{p.update_url}?hostname={p.tunnel_id}"',
        ],
        comment,
    )


def local_ipv4(p: TunnelConfigInput) -> str:
    """The client's IPv4 address, which every 6in4 configuration needs."""
    # The registry sends only static tunnels (which always have one) to these templates;
    # this keeps a direct call honest too.
    if p.client_ipv4 is None:
        raise ConfigError("client IPv4: a 6in4 configuration needs the client's address")
    return str(p.client_ipv4)
