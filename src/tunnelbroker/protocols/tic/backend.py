"""What the TIC server needs to know about accounts and tunnels, as a small interface.

The broker implements :class:`TicBackend`; :class:`MemoryBackend` is a dict-backed one for
tests and the lab. Calls are synchronous and must be quick (the server machine calls them
inline): the broker answers them from its in-memory state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tunnelbroker.protocols.tic.codec import password_md5
from tunnelbroker.protocols.tic.messages import TicPop, TicRoute, TicTunnel


class TicBackend(Protocol):
    def password_md5(self, username: str) -> str | None:
        """``md5hex(password)`` of the account, lowercase, or None (no such user, or no
        MD5 stored yet). None fails the login exactly like a wrong password."""

    def user_enabled(self, username: str) -> bool:
        """False for a disabled account: it cannot log in even with the right password."""

    def tunnels(self, username: str) -> Sequence[TicTunnel]:
        """The account's tunnels (those TIC can describe: AYIYA, heartbeat, static 6in4)."""

    def routes(self, username: str) -> Sequence[TicRoute]:
        """The account's routed (delegated) prefixes."""

    def pops(self) -> Sequence[TicPop]:
        """The tunnel servers (PoPs)."""


@dataclass
class MemoryUser:
    password_md5: str
    enabled: bool = True
    tunnels: list[TicTunnel] = field(default_factory=list)
    routes: list[TicRoute] = field(default_factory=list)


@dataclass
class MemoryBackend:
    """A :class:`TicBackend` over plain dictionaries."""

    users: dict[str, MemoryUser] = field(default_factory=dict)
    pop_list: list[TicPop] = field(default_factory=list)

    def add_user(
        self,
        username: str,
        password: str,
        tunnels: Sequence[TicTunnel] = (),
        routes: Sequence[TicRoute] = (),
        enabled: bool = True,
    ) -> MemoryUser:
        user = MemoryUser(password_md5(password), enabled, list(tunnels), list(routes))
        self.users[username] = user
        return user

    def password_md5(self, username: str) -> str | None:
        user = self.users.get(username)
        return user.password_md5 if user is not None else None

    def user_enabled(self, username: str) -> bool:
        user = self.users.get(username)
        return user is not None and user.enabled

    def tunnels(self, username: str) -> Sequence[TicTunnel]:
        user = self.users.get(username)
        return list(user.tunnels) if user is not None else []

    def routes(self, username: str) -> Sequence[TicRoute]:
        user = self.users.get(username)
        return list(user.routes) if user is not None else []

    def pops(self) -> Sequence[TicPop]:
        return list(self.pop_list)
