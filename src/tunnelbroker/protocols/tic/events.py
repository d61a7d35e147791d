"""Events the TIC machines hand to their I/O layers."""

from __future__ import annotations

from dataclasses import dataclass

from tunnelbroker.protocols.tic.messages import TicListEntry, TicTunnel


class Event:
    """Base class of everything ``next_event()`` returns."""

    __slots__ = ()


# ---------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class StartTls(Event):
    """Send what is queued (the ``200``), then wrap the connection in TLS as the server and
    call ``tls_started()``. Nothing more is read in plaintext."""


@dataclass(frozen=True, slots=True)
class LoginSucceeded(Event):
    username: str


@dataclass(frozen=True, slots=True)
class LoginFailed(Event):
    """A failed ``authenticate``: count it against the peer. ``reason`` is for the log."""

    username: str
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorSent(Event):
    """A ``400`` went to the peer; ``command`` is the verb it answered (empty for none)."""

    command: str
    text: str


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The session is over: send what is queued, then close the connection."""

    reason: str


# ---------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class TlsRequested(Event):
    """The server agreed to ``starttls``: wrap the connection as a TLS client, then call
    ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class TunnelsListed(Event):
    entries: tuple[TicListEntry, ...]


@dataclass(frozen=True, slots=True)
class Done(Event):
    """The exchange is complete (``QUIT`` is queued): ``tunnel`` is None for a listing."""

    tunnel: TicTunnel | None
    entries: tuple[TicListEntry, ...]


@dataclass(frozen=True, slots=True)
class Failed(Event):
    """The exchange failed. ``server_text`` is the server's reply when it refused."""

    reason: str
    server_text: str | None = None
