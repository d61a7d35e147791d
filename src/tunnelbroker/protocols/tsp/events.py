"""Events a TSP session machine hands to its I/O layer.

Some events are decisions the machine cannot take alone because they need the store or the broker
(is this password right, which tunnel does this user get). The I/O layer answers them by calling
the matching method on the machine (``complete_plain``, ``complete_digest``, ``offer``, ``refuse``,
``acknowledge``); until then the machine is *awaiting* and queues nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnelbroker.protocols.tsp.errors import StatusCode
from tunnelbroker.protocols.tsp.messages import Tunnel


class Event:
    """Base class of everything :meth:`next_event` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class VersionAccepted(Event):
    """The client's ``VERSION=`` was accepted; CAPABILITY has been queued."""

    version: str


@dataclass(frozen=True, slots=True)
class PlainAuthRequested(Event):
    """Decision: check this password, then call ``complete_plain(username or None)``."""

    authzid: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class DigestAuthRequested(Event):
    """Decision: look up the user's HA1 for ``realm``, then call ``complete_digest(ha1)``."""

    username: str
    realm: str


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """Authentication succeeded; ``username`` is None for ANONYMOUS."""

    mechanism: str
    username: str | None


@dataclass(frozen=True, slots=True)
class TunnelRequested(Event):
    """Decision: a ``create``, ``delete`` or ``info`` command (``request.action``).

    Answer ``create``/``info`` with ``offer(tunnel)``, ``delete`` with ``acknowledge()``, any of
    them with ``refuse(code)``.
    """

    request: Tunnel
    username: str | None


@dataclass(frozen=True, slots=True)
class TunnelAccepted(Event):
    """The client accepted the offer (or, with TSP 1.0, the offer stands as accepted)."""

    offer: Tunnel


@dataclass(frozen=True, slots=True)
class TunnelRejected(Event):
    """The client rejected the offer."""

    offer: Tunnel


@dataclass(frozen=True, slots=True)
class SessionRestarted(Event):
    """A ``VERSION=`` arrived on a live session: whatever it set up is being replaced."""

    had_tunnel: bool


@dataclass(frozen=True, slots=True)
class ErrorSent(Event):
    """An error status went to the client; ``reason`` is for the log, never for the wire."""

    code: StatusCode
    reason: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    """The session is over; the I/O layer closes the connection (TCP) or forgets the peer."""

    reason: str
