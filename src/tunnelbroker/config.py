"""The broker's configuration: one TOML file, every key optional.

Loaded explicitly by :func:`load_config` (never at import time). docs/configuration.md documents
every key; tests/test_config.py checks that the document and this model agree.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IPv4Net = Annotated[str, Field(description="an IPv4 network in CIDR form")]
IPv6Net = Annotated[str, Field(description="an IPv6 network in CIDR form")]

AuthMechanism = Literal["ANONYMOUS", "PLAIN", "DIGEST-MD5"]
TunnelTypeName = Literal["v6v4", "v6udpv4", "v6anyv4", "v4v6"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSection(_Section):
    """Identity of this broker and its own tunnel endpoints."""

    #: Name used as the DIGEST-MD5 realm; changing it invalidates stored digest secrets.
    realm: str = "tunnelbroker"
    #: This tunnel server's IPv4 endpoint, sent to clients as ``<server><address type="ipv4">``.
    server_ipv4: str = "192.0.2.1"
    #: This tunnel server's IPv6 endpoint, used for v4v6 tunnels.
    server_ipv6: str = "2001:db8::1"
    #: Resolvers offered to clients in ``<client><dns_server>`` (gogoc requires at least one).
    dns_servers: list[str] = ["2001:4860:4860::8888"]
    #: Domain under which client names are published (``<address type="dn">``); empty: none.
    client_domain: str = ""
    #: This tunnel server's name (TIC's ``POP Id``, the portal's server list).
    pop_name: str = Field("pop01", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")

    @field_validator("server_ipv4")
    @classmethod
    def _v4(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v

    @field_validator("server_ipv6")
    @classmethod
    def _v6(cls, v: str) -> str:
        ipaddress.IPv6Address(v)
        return v

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one resolver is needed (gogoc crashes without one)")
        for a in v:
            ipaddress.IPv6Address(a)
        return v


class TspSection(_Section):
    """The TSP listeners (RFC 5572)."""

    enabled: bool = True
    #: Addresses to listen on, TCP and UDP each; IPv4 and IPv6.
    listen: list[str] = ["0.0.0.0", "::"]
    #: 0 picks a free port (tests).
    port: int = Field(3653, ge=0, le=65535)
    #: Tunnel types offered in CAPABILITY, in this order.
    tunnel_types: list[TunnelTypeName] = ["v6v4", "v6udpv4", "v6anyv4", "v4v6"]
    #: SASL mechanisms offered in CAPABILITY, in this order.
    auth_mechanisms: list[AuthMechanism] = ["DIGEST-MD5", "PLAIN", "ANONYMOUS"]
    #: Accept SASL ANONYMOUS (tunnels without an account, released when they expire).
    allow_anonymous: bool = True
    #: Largest TSP message (a line or a Content-length body) accepted, in bytes.
    max_message_size: int = Field(4096, ge=512, le=65536)
    #: A session that sends nothing for this long is closed, seconds.
    idle_timeout: float = Field(30.0, gt=0)
    #: A session that has not finished negotiating after this long is closed, seconds.
    session_timeout: float = Field(120.0, gt=0)
    #: UDP socket receive buffer, bytes (0: the system default). Absorbs sign-up bursts.
    udp_receive_buffer: int = Field(4 * 1024 * 1024, ge=0, le=1 << 30)
    #: Other brokers to refer clients to (1000+ codes) when this one is full or lacks a type.
    referrals: list[str] = []


class PoolsSection(_Section):
    """Address pools. Defaults are documentation ranges: replace them in production."""

    #: Each tunnel gets one /64 from here for its link: server ``::1``, client ``::2``.
    link_prefix: IPv6Net = "2001:db8:8000::/40"
    #: Delegated (routed) prefixes for router-mode tunnels come from here.
    delegated_prefix: IPv6Net = "2001:db8:c000::/34"
    #: Shortest prefix a user may be delegated.
    min_prefix_length: int = Field(48, ge=16, le=64)
    #: Longest prefix a user may be delegated.
    max_prefix_length: int = Field(64, ge=16, le=64)
    #: Length delegated when a router asks for length 0 (gogoc's "default").
    default_prefix_length: int = Field(56, ge=16, le=64)
    #: v4v6 (DSTM) tunnels: each client gets a /30 from here (client first host, server second).
    ipv4_prefix: IPv4Net = "100.64.0.0/16"

    @field_validator("link_prefix", "delegated_prefix")
    @classmethod
    def _v6net(cls, v: str) -> str:
        net = ipaddress.IPv6Network(v)
        if net.prefixlen > 64:
            raise ValueError("an IPv6 pool must be /64 or shorter")
        return v

    @field_validator("ipv4_prefix")
    @classmethod
    def _v4net(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v)
        if net.prefixlen > 30:
            raise ValueError("the IPv4 pool must be /30 or shorter")
        return v

    @model_validator(mode="after")
    def _lengths(self) -> PoolsSection:
        if not self.min_prefix_length <= self.default_prefix_length <= self.max_prefix_length:
            raise ValueError("need min_prefix_length <= default_prefix_length <= max_prefix_length")
        dp = ipaddress.IPv6Network(self.delegated_prefix).prefixlen
        if self.min_prefix_length < dp:
            raise ValueError("min_prefix_length is shorter than the delegated_prefix pool itself")
        link = ipaddress.IPv6Network(self.link_prefix)
        if link.overlaps(ipaddress.IPv6Network(self.delegated_prefix)):
            raise ValueError("link_prefix and delegated_prefix overlap")
        return self


class LifetimesSection(_Section):
    """Tunnel lifetimes, in seconds (TSP sends them in minutes)."""

    anonymous: int = Field(86400, ge=60)
    authenticated: int = Field(7 * 86400, ge=60)


class KeepaliveSection(_Section):
    """Keepalive interval bounds, seconds; the broker clamps the client's request."""

    min_interval: int = Field(5, ge=1)
    max_interval: int = Field(120, ge=1)
    default_interval: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> KeepaliveSection:
        if not self.min_interval <= self.default_interval <= self.max_interval:
            raise ValueError("need min_interval <= default_interval <= max_interval")
        return self


class LimitsSection(_Section):
    """Limits per user and per client IPv4 address (RFC 5572 §8)."""

    #: Most live tunnels anonymous sessions may hold from one IPv4 address.
    tunnels_per_ipv4: int = Field(4, ge=1)
    #: Most live tunnels one account may hold (TSP uses one per address family).
    tunnels_per_user: int = Field(5, ge=1)
    #: New sessions per second allowed from one IPv4 address (token bucket rate).
    sessions_per_second_per_ipv4: float = Field(5.0, gt=0)
    #: Burst of new sessions allowed from one IPv4 address (token bucket depth).
    session_burst_per_ipv4: int = Field(20, ge=1)
    #: Sessions still negotiating from one IPv4 address at once.
    half_open_per_ipv4: int = Field(16, ge=1)
    #: Sessions still negotiating in total; beyond this new ones get 530.
    max_sessions: int = Field(20000, ge=1)
    #: Total live tunnels; beyond this new ones get 301 (or a referral).
    max_tunnels: int = Field(100000, ge=1)
    #: Delegate prefixes to anonymous (router-mode) sessions; off: they get 522.
    anonymous_prefixes: bool = False
    #: Managed tunnels of one account that may have a prefix besides their routed /64 (a /48).
    prefixes_per_user: int = Field(1, ge=0)
    #: Non-global IPv4 networks accepted anyway as static 6in4 endpoints (a lab, a private
    #: network); otherwise private, shared (100.64/10) and reserved addresses are refused.
    static_endpoint_networks: list[IPv4Net] = []

    @field_validator("static_endpoint_networks")
    @classmethod
    def _v4nets(cls, v: list[str]) -> list[str]:
        for n in v:
            ipaddress.IPv4Network(n)
        return v


class TunnelServerSection(_Section):
    """This machine's data plane."""

    #: ``userspace``: one TUN and raw sockets (needs root or CAP_NET_ADMIN + CAP_NET_RAW);
    #: ``none``: control plane only (tunnels are recorded and negotiated, nothing forwarded).
    backend: Literal["userspace", "none"] = "userspace"
    #: Name of the TUN device that carries every tunnel.
    tun_name: str = Field("tb0", min_length=1, max_length=15)
    #: MTU of that TUN device; per-tunnel MTUs (1280-1480) are enforced below it.
    tun_mtu: int = Field(1500, ge=1280, le=65535)
    #: MTU of new tunnels (RFC 4213 §3.2: 1280 is always safe).
    default_mtu: int = Field(1280, ge=1280, le=1480)


class SixxsSection(_Section):
    """SixXS compatibility: TIC (tunnel information), heartbeat and AYIYA (sixxs.md)."""

    #: Addresses for the TIC (TCP) and heartbeat and AYIYA (UDP) listeners.
    listen: list[str] = ["0.0.0.0", "::"]
    #: TIC on TCP; AICCU has 3874 built in. 0 picks a free port (tests).
    tic_enabled: bool = True
    tic_port: int = Field(3874, ge=0, le=65535)
    #: PEM certificate and key for TIC's STARTTLS; empty: STARTTLS is refused (400). The key
    #: may be in the certificate's file (tls_key empty).
    tls_certificate: str = ""
    tls_key: str = ""
    #: Heartbeats for 6in4-heartbeat tunnels on UDP; AICCU has 3740 built in.
    heartbeat_enabled: bool = True
    heartbeat_port: int = Field(3740, ge=0, le=65535)
    #: AYIYA on UDP (AICCU has 5072 built in), on ``broker.server_ipv4``; needs the userspace
    #: data plane.
    ayiya_enabled: bool = True
    ayiya_port: int = Field(5072, ge=0, le=65535)
    #: The beat interval TIC tells clients (``Heartbeat_Interval``), seconds.
    heartbeat_interval: int = Field(60, ge=10, le=3600)
    #: A heartbeat or AYIYA tunnel without a valid beat or datagram this long is down until
    #: the next one, seconds (sixxsd: 120).
    down_after: int = Field(120, ge=20)
    #: How far a client's clock may be from ours, seconds (AICCU and sixxsd: 120).
    clock_window: int = Field(120, ge=10, le=3600)

    @model_validator(mode="after")
    def _tls_pair(self) -> SixxsSection:
        if self.tls_key and not self.tls_certificate:
            # Else STARTTLS would be silently off while the operator thinks it configured.
            raise ValueError("sixxs.tls_key is set but sixxs.tls_certificate is not")
        return self


class WebSection(_Section):
    """The web portal, the REST API and ``/nic/update`` (HTTP; put TLS in front of it)."""

    enabled: bool = True
    #: Loopback by default: serve it to the world through a TLS reverse proxy.
    listen: list[str] = ["127.0.0.1", "::1"]
    #: 0 picks a free port (tests).
    port: int = Field(8080, ge=0, le=65535)
    #: Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (the caller's address
    #: is the default ``myip`` of ``/nic/update``).
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    #: Largest request body accepted, bytes; beyond it 413.
    max_body: int = Field(65536, ge=1024)
    #: Failed logins (password or token) allowed per client address: rate per second and burst.
    login_failures_per_second: float = Field(0.2, gt=0)
    login_failure_burst: int = Field(10, ge=1)
    #: ``/nic/update`` answers ``abuse`` after this many unchanged updates of one tunnel in a
    #: row within ``nochg_window`` seconds.
    nochg_limit: int = Field(5, ge=1)
    nochg_window: float = Field(300.0, gt=0)
    #: Who may sign up on the portal: ``open`` (anyone), ``approval`` (an administrator
    #: enables new accounts), ``invite`` (with a code an administrator made), ``closed``.
    signup: Literal["open", "approval", "invite", "closed"] = "approval"
    #: New sign-ups allowed per client address: rate per second and burst.
    signups_per_second: float = Field(0.01, gt=0)
    signup_burst: int = Field(3, ge=1)
    #: Portal sessions last this long, seconds.
    session_lifetime: int = Field(43200, ge=300)
    #: Send the session cookie only over HTTPS (keep on behind a TLS proxy; off for plain
    #: HTTP on a lab or loopback).
    secure_cookies: bool = True
    #: Check a static tunnel's endpoint answers ICMP echo before creating it (needs root).
    reachability_check: bool = False
    #: Networks allowed to read Prometheus metrics at ``/metrics`` (others get 404).
    metrics_from: list[str] = ["127.0.0.0/8", "::1/128"]

    @field_validator("metrics_from", "trusted_proxies")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for n in v:
            ipaddress.ip_network(n, strict=False)
        return v


class DnsSection(_Section):
    """Publishing tunnels in the DNS: RFC 2136 updates to the operator's primary server."""

    enabled: bool = False
    #: The primary server that accepts dynamic updates for ``zones``.
    server: str = "127.0.0.1"
    port: int = Field(53, ge=1, le=65535)
    #: Zones the broker may update: the forward zone of ``broker.client_domain`` and the
    #: ip6.arpa zones covering the pools. Records outside them are not published.
    zones: list[str] = []
    #: TSIG key for the updates (strongly advised); empty name: unsigned.
    tsig_name: str = ""
    tsig_secret: str = ""
    tsig_algorithm: str = "hmac-sha256"
    ttl: int = Field(3600, ge=1)
    timeout: float = Field(5.0, gt=0)

    @field_validator("server")
    @classmethod
    def _addr(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class DatabaseSection(_Section):
    """The store. Empty url: SQLite (WAL) in the data directory."""

    url: str = ""


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    """The whole configuration file."""

    #: Where the SQLite database and runtime state live.
    data_dir: str = "/var/lib/tunnelbroker"
    broker: BrokerSection = BrokerSection()
    tsp: TspSection = TspSection()
    pools: PoolsSection = PoolsSection()
    lifetimes: LifetimesSection = LifetimesSection()
    keepalive: KeepaliveSection = KeepaliveSection()
    limits: LimitsSection = LimitsSection()
    tunnelserver: TunnelServerSection = TunnelServerSection()
    sixxs: SixxsSection = SixxsSection()
    web: WebSection = WebSection()
    dns: DnsSection = DnsSection()
    database: DatabaseSection = DatabaseSection()
    logging: LoggingSection = LoggingSection()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.data_dir) / 'tunnelbroker.db'}"


class ConfigError(Exception):
    """The configuration file is unreadable or invalid; the message says where."""


def load_config(path: str | Path | None, overrides: dict[str, object] | None = None) -> Config:
    """Read ``path`` (None: defaults only) and apply top-level ``overrides``."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
    if overrides:
        data.update(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(
            f"invalid configuration{f' in {path}' if path else ''}:\n" + "\n".join(lines)
        ) from e
