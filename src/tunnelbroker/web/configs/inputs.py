"""What a configuration template needs to know about a tunnel, checked before any use.

Every value here ends up inside a shell script or a router's command line, so each is parsed
(addresses with :mod:`ipaddress`) or matched against a strict pattern. A template can then
put any field anywhere without quoting; only :attr:`TunnelConfigInput.description` is free
text, and templates put it in comments only (it can hold neither a newline nor a quote).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T", ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv6Network)

#: RFC 4213 section 3.2: the tunnel MTU is at most 1480 (1500 less the IPv4 header); IPv6
#: needs at least 1280.
MTU_MIN, MTU_MAX = 1280, 1480
#: Tunnel ids become interface numbers (Cisco ``Tunnel<n>``, VyOS ``tun<n>``), which stop
#: at 2**31 - 1.
TUNNEL_ID_MAX = 2**31 - 1

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
#: The broker's own user-name rule (``broker/users.py``), capped the same way.
_USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Linux allows 15 bytes; the other characters are kept out because UCI section names,
#: netsh and RouterOS would need quoting for them.
_INTERFACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,14}")
#: The broker's tunnel-name rule (``broker/service.py``): no newline, quote, ``;``, ``$``...
_DESCRIPTION = re.compile(r"[\w .,:()/+-]{0,64}")
#: ``http(s)://host[:port]/path``, without credentials, query or anything a shell reads.
_UPDATE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._/-]*)?")
_UPDATE_KEY = re.compile(r"[A-Za-z0-9_-]{8,128}")


class ConfigError(ValueError):
    """The configuration cannot be made; the message names the field and says why."""


class TunnelKind(enum.StrEnum):
    """The broker's tunnel types, as the store and the API spell them."""

    #: 6in4 (IP protocol 41) to a fixed client IPv4 address.
    STATIC = "static"
    #: 6in4 whose client endpoint follows signed heartbeats (SixXS).
    HEARTBEAT = "heartbeat"
    #: IPv6 in signed UDP (SixXS AYIYA), through NATs.
    AYIYA = "ayiya"
    #: Set up by a TSP client (RFC 5572): v6v4, or v6udpv4 behind a NAT.
    TSP = "tsp"


@dataclass(frozen=True, slots=True)
class TunnelConfigInput:
    """One tunnel, as the templates see it. Construction checks every field.

    Build it from the store's strings with :meth:`make`, or directly from parsed values.
    """

    tunnel_id: int
    kind: TunnelKind
    #: The PoP's IPv4 endpoint.
    server_ipv4: ipaddress.IPv4Address
    #: The user's IPv4 endpoint; None for tunnels whose endpoint is learnt (heartbeat,
    #: AYIYA, TSP), which only a client program can configure.
    client_ipv4: ipaddress.IPv4Address | None
    #: The /64 on the tunnel link and the two ends' addresses in it.
    link: ipaddress.IPv6Network
    server_ipv6: ipaddress.IPv6Address
    client_ipv6: ipaddress.IPv6Address
    #: The /64 routed to the user, for a LAN.
    routed: ipaddress.IPv6Network | None
    #: A larger routed prefix (usually a /48), if one is allocated.
    delegated: ipaddress.IPv6Network | None
    mtu: int
    #: The broker as the user reaches it, and the port of the service the tunnel's client
    #: logs in to (TSP for ``tsp`` tunnels, TIC for the others) when not the default.
    broker_host: str
    broker_port: int | None
    username: str
    #: The tunnel interface on platforms that let the user name it.
    interface: str
    #: The user's name for the tunnel; comments only.
    description: str = ""
    #: ``/nic/update`` of this broker and the tunnel's update key, for a changing IPv4.
    update_url: str | None = None
    update_key: str | None = None

    def __post_init__(self) -> None:
        _check(self)

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
        broker_port: int | None = None,
        server_ipv6: str | None = None,
        client_ipv6: str | None = None,
        interface: str | None = None,
        description: str | None = None,
        update_url: str | None = None,
        update_key: str | None = None,
    ) -> TunnelConfigInput:
        """Parse the store's strings. The link addresses default to ``::1`` (server) and
        ``::2`` (client) of the link, the interface to ``tb<id>``.

        Raises:
            ConfigError: naming the field that is wrong.
        """
        try:
            kind_ = TunnelKind(kind)
        except ValueError:
            raise ConfigError(f"tunnel type: unknown type {kind!r}") from None
        link = _parse(ipaddress.IPv6Network, "link prefix", link_prefix)
        return cls(
            tunnel_id=tunnel_id,
            kind=kind_,
            server_ipv4=_parse(ipaddress.IPv4Address, "server IPv4", server_ipv4),
            client_ipv4=(
                _parse(ipaddress.IPv4Address, "client IPv4", client_ipv4) if client_ipv4 else None
            ),
            link=link,
            server_ipv6=(
                _parse(ipaddress.IPv6Address, "server IPv6", server_ipv6)
                if server_ipv6
                else link.network_address + 1
            ),
            client_ipv6=(
                _parse(ipaddress.IPv6Address, "client IPv6", client_ipv6)
                if client_ipv6
                else link.network_address + 2
            ),
            routed=(
                _parse(ipaddress.IPv6Network, "routed prefix", routed_prefix)
                if routed_prefix
                else None
            ),
            delegated=(
                _parse(ipaddress.IPv6Network, "delegated prefix", delegated_prefix)
                if delegated_prefix
                else None
            ),
            mtu=mtu,
            broker_host=broker_host,
            broker_port=broker_port,
            username=username,
            interface=interface if interface is not None else f"tb{tunnel_id}",
            description=description or "",
            update_url=update_url or None,
            update_key=update_key or None,
        )

    @property
    def label(self) -> str:
        """``T12`` and the user's name for it, for comments."""
        return f"T{self.tunnel_id}" + (f" ({self.description})" if self.description else "")

    @property
    def lan_address(self) -> ipaddress.IPv6Interface | None:
        """``<routed /64>::1/64``: the router's address on the LAN."""
        if self.routed is None:
            return None
        return ipaddress.IPv6Interface(f"{self.routed.network_address + 1}/64")

    @property
    def broker(self) -> str:
        """``host`` or ``host:port`` (``[v6]:port``), as our client takes it."""
        if self.broker_port is None:
            return self.broker_host
        host = f"[{self.broker_host}]" if ":" in self.broker_host else self.broker_host
        return f"{host}:{self.broker_port}"

    def replace(self, **changes: object) -> TunnelConfigInput:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _parse(kind: type[_T], field: str, text: str) -> _T:
    try:
        return kind(text)
    except ValueError as e:
        raise ConfigError(f"{field}: {e}") from None


def _check(p: TunnelConfigInput) -> None:
    """Every rule, each failing with the field's name and the reason."""

    def fail(message: str) -> None:
        raise ConfigError(message)

    if type(p.tunnel_id) is not int or not 1 <= p.tunnel_id <= TUNNEL_ID_MAX:
        fail(f"tunnel id: {p.tunnel_id!r} is not a number from 1 to {TUNNEL_ID_MAX}")
    if not isinstance(p.kind, TunnelKind):
        fail(f"tunnel type: {p.kind!r} is not a TunnelKind")
    _endpoint("server IPv4", p.server_ipv4)
    if p.client_ipv4 is not None:
        _endpoint("client IPv4", p.client_ipv4)
        if p.client_ipv4 == p.server_ipv4:
            fail("client IPv4: the same as the server's")
    if p.kind is TunnelKind.STATIC and p.client_ipv4 is None:
        fail("client IPv4: a static 6in4 tunnel needs the client's IPv4 address")
    if not isinstance(p.link, ipaddress.IPv6Network) or p.link.prefixlen != 64:
        fail(f"link prefix: {p.link} is not an IPv6 /64")
    for field, address in (("server IPv6", p.server_ipv6), ("client IPv6", p.client_ipv6)):
        if not isinstance(address, ipaddress.IPv6Address) or address not in p.link:
            fail(f"{field}: {address} is not in the link prefix {p.link}")
        if address in (p.link.network_address, p.link.broadcast_address):
            fail(f"{field}: {address} is the first or last address of {p.link}")
    if p.server_ipv6 == p.client_ipv6:
        fail("client IPv6: the same as the server's")
    if p.routed is not None:
        if not isinstance(p.routed, ipaddress.IPv6Network) or p.routed.prefixlen != 64:
            fail(f"routed prefix: {p.routed} is not an IPv6 /64")
    if p.delegated is not None:
        if not isinstance(p.delegated, ipaddress.IPv6Network) or not (
            32 <= p.delegated.prefixlen <= 64
        ):
            fail(f"delegated prefix: {p.delegated} is not an IPv6 prefix from /32 to /64")
    for field, net in (("routed prefix", p.routed), ("delegated prefix", p.delegated)):
        if net is not None and net.overlaps(p.link):
            fail(f"{field}: {net} overlaps the link prefix {p.link}")
    if type(p.mtu) is not int or not MTU_MIN <= p.mtu <= MTU_MAX:
        fail(f"MTU: {p.mtu!r} is outside {MTU_MIN}-{MTU_MAX}")
    if not _is_host(p.broker_host):
        fail(f"broker host: {_show(p.broker_host)} is neither a host name nor an address")
    if p.broker_port is not None and (
        type(p.broker_port) is not int or not 0 < p.broker_port < 65536
    ):
        fail(f"broker port: {p.broker_port!r} is not a port number")
    if not _matches(_USERNAME, p.username):
        fail(f"user name: {_show(p.username)} is not 1-64 of A-Z a-z 0-9 . _ -")
    if not _matches(_INTERFACE, p.interface):
        fail(f"interface: {_show(p.interface)} is not a letter then up to 14 letters, digits or _")
    if not _matches(_DESCRIPTION, p.description):
        fail(
            f"description: {_show(p.description)} may hold only up to 64 letters, digits, "
            "spaces and . , : ( ) / + - _"
        )
    if p.update_url is not None and not _matches(_UPDATE_URL, p.update_url):
        fail(f"update URL: {_show(p.update_url)} is not a plain http(s)://host/path")
    if p.update_key is not None and not _matches(_UPDATE_KEY, p.update_key):
        fail("update key: not 8-128 of A-Z a-z 0-9 _ -")


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _show(value: object) -> str:
    """``value`` for an error message: quoted, and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _endpoint(field: str, address: ipaddress.IPv4Address) -> None:
    if not isinstance(address, ipaddress.IPv4Address):
        raise ConfigError(f"{field}: {address!r} is not an IPv4 address")
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise ConfigError(f"{field}: {address} cannot be a tunnel endpoint")
    if address == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{field}: {address} cannot be a tunnel endpoint")


def _is_host(text: object) -> bool:
    if not isinstance(text, str):
        return False
    if _HOSTNAME.fullmatch(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
