"""What a configuration needs to know about a tunnel, checked once."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_SAFE = re.compile(r"[^A-Za-z0-9 ._-]")
_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ConfigError(ValueError):
    """The tunnel cannot be described for that platform; the message says why."""


@dataclass(frozen=True)
class TunnelParams:
    """A tunnel as the scripts see it. Build with :meth:`make`, which checks every field."""

    tunnel_id: int
    #: ``static``, ``heartbeat``, ``ayiya`` or ``tsp``.
    kind: str
    server_ipv4: ipaddress.IPv4Address
    #: None when the endpoint is learnt (heartbeat, AYIYA) or NATed.
    client_ipv4: ipaddress.IPv4Address | None
    link: ipaddress.IPv6Network
    routed: ipaddress.IPv6Network | None
    prefix48: ipaddress.IPv6Network | None
    mtu: int
    #: The broker's host name (TIC, TSP and the update URL) and the account.
    broker_host: str
    username: str
    name: str = ""
    update_url: str = ""

    @property
    def server_ipv6(self) -> ipaddress.IPv6Address:
        return self.link.network_address + 1

    @property
    def client_ipv6(self) -> ipaddress.IPv6Address:
        return self.link.network_address + 2

    @property
    def label(self) -> str:
        """``T12`` and the user's name for it, safe for a comment."""
        return f"T{self.tunnel_id}" + (f" ({self.name})" if self.name else "")

    @property
    def lan_address(self) -> ipaddress.IPv6Interface | None:
        """``<routed /64>::1/64``, for the router's LAN interface."""
        if self.routed is None:
            return None
        return ipaddress.IPv6Interface(f"{self.routed.network_address + 1}/64")

    @classmethod
    def make(
        cls,
        *,
        tunnel_id: int,
        kind: str,
        server_ipv4: str,
        client_ipv4: str | None,
        link_prefix: str,
        routed_prefix: str | None,
        delegated_prefix: str | None,
        mtu: int,
        broker_host: str,
        username: str,
        name: str | None = None,
        update_url: str = "",
    ) -> TunnelParams:
        """Check everything; raises :class:`ConfigError` with the field that is wrong."""
        try:
            link = ipaddress.IPv6Network(link_prefix)
            routed = ipaddress.IPv6Network(routed_prefix) if routed_prefix else None
            prefix48 = ipaddress.IPv6Network(delegated_prefix) if delegated_prefix else None
            server = ipaddress.IPv4Address(server_ipv4)
            client = ipaddress.IPv4Address(client_ipv4) if client_ipv4 else None
        except ValueError as e:
            raise ConfigError(f"not an address: {e}") from None
        if kind not in ("static", "heartbeat", "ayiya", "tsp"):
            raise ConfigError(f"unknown tunnel type {kind!r}")
        if link.prefixlen != 64:
            raise ConfigError("the link must be a /64")
        if not 1280 <= mtu <= 1480:
            raise ConfigError(f"MTU {mtu} is outside 1280-1480")
        if tunnel_id < 1:
            raise ConfigError("bad tunnel id")
        if not _HOST.match(broker_host) and not _is_address(broker_host):
            raise ConfigError(f"bad broker host name {broker_host!r}")
        if not _USER.match(username):
            raise ConfigError(f"bad user name {username!r}")
        if update_url and not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]/?=&_%-]+", update_url):
            raise ConfigError("bad update URL")
        return cls(
            tunnel_id=tunnel_id,
            kind=kind,
            server_ipv4=server,
            client_ipv4=client,
            link=link,
            routed=routed,
            prefix48=prefix48,
            mtu=mtu,
            broker_host=broker_host.rstrip("."),
            username=username,
            name=_SAFE.sub("", name or "")[:64].strip(),
            update_url=update_url,
        )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
