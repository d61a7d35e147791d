"""The REST API's request and response bodies (pydantic), which also make the OpenAPI document."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunnelbroker.broker.model import MANAGED_KINDS
from tunnelbroker.store import TunnelRecord


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Every error: a short reason, and details where a field was wrong."""

    error: str
    detail: list[dict[str, object]] | None = None


class TokenIn(_Strict):
    name: str = Field("api", min_length=1, max_length=64, pattern=r"^[\w .:@+-]+$")


class TokenOut(BaseModel):
    id: int
    name: str
    created_at: float
    last_used: float | None = None
    #: Only in the answer that created it: it is not stored and cannot be shown again.
    token: str | None = None


class TunnelIn(_Strict):
    """A new tunnel."""

    type: Literal["static", "heartbeat", "ayiya"]
    #: The client's public IPv4 (static only; the others learn it from their packets).
    client_ipv4: str | None = Field(None, max_length=15)
    mtu: int = Field(1280, ge=1280, le=1480)
    #: A routed /64 besides the link /64.
    routed_64: bool = True
    #: Also delegate a prefix of this length (e.g. 48).
    prefix_length: int | None = Field(None, ge=16, le=64)
    name: str | None = Field(None, max_length=64)


class TunnelPatch(_Strict):
    """Changes to a tunnel; fields left out stay as they are."""

    client_ipv4: str | None = Field(None, max_length=15)
    mtu: int | None = Field(None, ge=1280, le=1480)
    name: str | None = Field(None, max_length=64)
    enabled: bool | None = None
    #: Nameservers for the reverse delegation of the routed prefixes (up to five).
    dns_servers: list[str] | None = Field(None, max_length=5)


class TunnelStats(BaseModel):
    up: bool
    #: Seconds since the last packet from the client; None: never.
    idle_seconds: float | None = None
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class TunnelOut(BaseModel):
    id: int
    #: ``static``, ``heartbeat``, ``ayiya`` or ``tsp``.
    type: str
    #: The SixXS / TIC name of the type, or the TSP encapsulation.
    type_name: str
    name: str | None
    enabled: bool
    admin_enabled: bool
    server_ipv4: str | None
    client_ipv4: str | None
    client_port: int | None
    link_prefix: str
    #: Addresses on the link: IPv6 ``::1`` and ``::2``, or for a v4v6 tunnel its IPv4 pair.
    server_inner: str
    client_inner: str
    routed_prefix: str | None
    delegated_prefix: str | None
    mtu: int
    dns_servers: list[str]
    heartbeat_interval: int | None
    secret: str | None
    update_key: str | None
    last_error: str | None
    created_at: float
    stats: TunnelStats | None = None

    @classmethod
    def of(cls, t: TunnelRecord, stats: TunnelStats | None = None) -> TunnelOut:
        assert t.id is not None
        link = ipaddress.ip_network(t.link_prefix)
        server, client = (1, 2) if link.version == 6 else (2, 1)
        return cls(
            id=t.id,
            type=t.kind,
            type_name=MANAGED_KINDS.get(t.kind, t.type),
            name=t.name,
            enabled=t.user_state == "enabled",
            admin_enabled=t.admin_state == "enabled",
            server_ipv4=t.server_ipv4,
            client_ipv4=t.client_ipv4,
            client_port=t.client_port,
            link_prefix=t.link_prefix,
            server_inner=str(link.network_address + server),
            client_inner=str(link.network_address + client),
            routed_prefix=t.routed_prefix,
            delegated_prefix=t.delegated_prefix,
            mtu=t.mtu,
            dns_servers=list(t.dns_servers),
            heartbeat_interval=t.keepalive_interval if t.kind != "static" else None,
            secret=t.secret,
            update_key=t.update_key,
            last_error=t.last_error,
            created_at=t.created_at,
            stats=stats,
        )


class StatusOut(BaseModel):
    version: str
    tunnels: int
    tunnel_types: list[str]
