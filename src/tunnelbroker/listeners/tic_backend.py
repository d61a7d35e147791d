"""The broker as TIC sees it: accounts and their static, heartbeat and AYIYA tunnels.

Tunnels, routes and PoPs come from the broker's memory. The account lookups
(:meth:`password_md5`, :meth:`user_enabled`) read one row of the store: TIC logins are rare,
and a row read costs well under a millisecond on the event loop with SQLite.

TIC's challenge needs ``md5hex(password)``, which the store keeps only for accounts whose
password was set or used since TIC support came in. An older account cannot log in over TIC
until then; the client only sees ``400 Authentication failed`` (TIC does not say which
accounts exist), so the operator's log says why and what fixes it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from tunnelbroker.broker.model import MANAGED_KINDS
from tunnelbroker.broker.service import Broker
from tunnelbroker.broker.users import UserService
from tunnelbroker.config import Config
from tunnelbroker.protocols.tic import TicPop, TicRoute, TicTunnel
from tunnelbroker.store.records import TunnelRecord

log = logging.getLogger(__name__)


class BrokerTicBackend:
    """:class:`~tunnelbroker.protocols.tic.TicBackend` over the broker and the store."""

    def __init__(self, broker: Broker, users: UserService, config: Config) -> None:
        self.broker = broker
        self.users = users
        self.config = config

    def password_md5(self, username: str) -> str | None:
        found = self.users.tic_credentials(username)
        if found is not None:
            return found[1]
        user = self.users.get(username)
        if user is not None and not user.disabled and user.tic_md5 is None:
            log.warning(
                "tic: %r cannot log in over TIC: the account predates TIC support and no MD5 "
                "of its password is stored yet; one login with the password on the web portal "
                "or over TSP (SASL PLAIN) stores it, or reset the password "
                "(tunnelbroker user passwd %s)",
                username,
                username,
            )
        return None

    def user_enabled(self, username: str) -> bool:
        user = self.users.get(username)
        return user is not None and not user.disabled

    def tunnels(self, username: str) -> Sequence[TicTunnel]:
        return [self.describe(t) for t in self._managed(username)]

    def routes(self, username: str) -> Sequence[TicRoute]:
        out = []
        for t in self._managed(username):
            for n, prefix in enumerate((t.routed_prefix, t.delegated_prefix), 1):
                if prefix:
                    out.append(TicRoute(f"R{t.id}-{n}", f"T{t.id}", prefix))
        return out

    def pops(self) -> Sequence[TicPop]:
        b = self.config.broker
        return [TicPop(b.pop_name, ipv4=b.server_ipv4, ipv6=b.server_ipv6)]

    def describe(self, t: TunnelRecord) -> TicTunnel:
        """One tunnel in AICCU's terms (sixxs.md §2.6)."""
        link = ipaddress.IPv6Network(t.link_prefix)
        if t.kind == "static":
            ipv4_endpoint = t.client_ipv4 or ""
        else:
            ipv4_endpoint = "ayiya" if t.kind == "ayiya" else "heartbeat"
        return TicTunnel(
            tunnel_id=f"T{t.id}",
            type=MANAGED_KINDS[t.kind],
            ipv6_endpoint=str(link.network_address + 2),
            ipv6_pop=str(link.network_address + 1),
            ipv6_prefix_length=link.prefixlen,
            pop_id=self.config.broker.pop_name,
            ipv4_endpoint=ipv4_endpoint,
            ipv4_pop=t.server_ipv4 or self.config.broker.server_ipv4,
            user_state=t.user_state,
            admin_state=t.admin_state,
            password=t.secret,
            heartbeat_interval=t.keepalive_interval or self.config.sixxs.heartbeat_interval,
            mtu=t.mtu,
            name=t.name or "",
        )

    def _managed(self, username: str) -> list[TunnelRecord]:
        user = self.users.get(username)
        if user is None:
            return []
        return [t for t in self.broker.user_tunnels(user.id) if t.kind in MANAGED_KINDS]
