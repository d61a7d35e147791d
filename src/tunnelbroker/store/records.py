"""Plain records passed in and out of :class:`~tunnelbroker.store.database.Store`.

They mirror the table rows column for column (same names, same order) and are mutable so the
broker can keep them as its in-memory state. Times are epoch seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class UserRecord:
    """One account."""

    id: int
    name: str
    #: argon2id PHC string.
    password_hash: str
    #: 32 hex digits: MD5(name:realm:password), the DIGEST-MD5 secret.
    digest_ha1: str
    #: The realm ``digest_ha1`` was computed for.
    realm: str
    is_admin: bool
    disabled: bool
    created_at: float
    #: 32 hex digits: MD5(password), what TIC's ``challenge md5`` needs. None: set before TIC
    #: existed here; filled in at the next password login or change.
    tic_md5: str | None = None


@dataclass(slots=True)
class TunnelRecord:
    """One tunnel, live or ended. ``id`` is None until the store has assigned one."""

    id: int | None
    #: None: an anonymous tunnel.
    user_id: int | None
    #: How it was set up, e.g. ``"tsp"``.
    kind: str
    #: ``"v6v4"``, ``"v6udpv4"`` or ``"v4v6"``.
    type: str
    #: ``"offered"``, ``"active"`` or ``"ended"``.
    state: str
    #: ``"udp"`` or ``"tcp"``: how the client reached the broker.
    transport: str
    client_ipv4: str | None
    client_port: int | None
    #: The client's outer IPv6 endpoint (v4v6 tunnels).
    client_ipv6: str | None
    server_ipv4: str | None
    server_ipv6: str | None
    #: The link network, CIDR.
    link_prefix: str
    #: The routed prefix, CIDR (router mode only).
    delegated_prefix: str | None
    #: Nameservers for the reverse delegation of ``delegated_prefix``.
    dns_servers: list[str]
    keepalive_interval: int
    mtu: int
    created_at: float
    updated_at: float
    expires_at: float
    last_seen: float | None = None
    end_reason: str | None = None
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: The outer address the client claimed for itself (``<client><address>``; IPv6 for v4v6);
    #: behind NAT it differs from ``client_ipv4``. Keys an anonymous client's tunnel.
    claimed_ipv4: str | None = None
    #: The user's label for a managed tunnel.
    name: str | None = None
    #: The tunnel server (PoP) carrying it; None: the default one.
    pop: str | None = None
    #: The tunnel's own secret (heartbeat MD5, AYIYA SHA-1; TIC's ``Password``), not the
    #: account password. Managed heartbeat and AYIYA tunnels only.
    secret: str | None = None
    #: The key that may update this tunnel's endpoint (``/nic/update``) instead of the password.
    update_key: str | None = None
    #: The routed /64 of a managed tunnel (``delegated_prefix`` holds the optional shorter one).
    routed_prefix: str | None = None
    #: ``enabled`` or ``disabled``: the user's switch and the operator's (TIC's UserState and
    #: AdminState).
    user_state: str = "enabled"
    admin_state: str = "enabled"
    #: Why the tunnel last failed (a refused endpoint, a bad heartbeat...), for the user.
    last_error: str | None = None


@dataclass(slots=True)
class AllocationRecord:
    """One prefix held for a user (or an anonymous tunnel).

    In :class:`~tunnelbroker.store.database.Changes`, ``tunnel_id`` may be the placeholder
    ``-(i + 1)``: "the tunnel at index ``i`` of the same batch", resolved once it is inserted.
    """

    id: int | None
    user_id: int | None
    tunnel_id: int | None
    #: ``"link"``, ``"delegated"`` or ``"ipv4"``.
    kind: str
    #: CIDR; unique across all allocations.
    prefix: str
    created_at: float


@dataclass(slots=True)
class TokenRecord:
    """One API token of a user; only its SHA-256 is stored."""

    id: int
    user_id: int
    token_hash: str
    name: str
    created_at: float
    last_used: float | None = None


@dataclass(slots=True)
class AuditRecord:
    """One audit log entry."""

    id: int
    at: float
    actor: str | None
    source: str | None
    action: str
    target: str | None
    detail: str | None
