"""The client side of a TIC session, sans-IO, in AICCU's order (sixxs.md §2.2).

Theory of operation
-------------------
The client waits for the greeting, then sends one command at a time and reads its whole
reply before the next, as AICCU does::

    client TIC/draft-00 <name> <os>      -> 2xx
    get unixtime                         -> 200 <epoch>; |ours - theirs| > 120 s aborts
    starttls            (if asked)       -> 2xx: TlsRequested, wrap, tls_started()
                                            else: abort if TLS is required, go on if not
    username <name>                      -> 2xx
    challenge md5                        -> 200 <challenge>
    authenticate md5 <md5(challenge + md5(password))>
    tunnel list         (no tunnel id, or a listing)
    tunnel show <id>                     -> 201, Key: Value lines, 202
    QUIT <text>                          (no reply awaited)

A single-line reply succeeds if it starts with ``2`` (AICCU checks only that); blocks must
open with ``201`` and end with a line starting ``202``. The result is a :class:`Done` event
(the tunnel, or the listing) or a :class:`Failed` one; either way the I/O layer sends what
is queued (the ``QUIT``) and closes.

A failure is *permanent* (:attr:`TicClient.failure_permanent`) when another attempt cannot
succeed until someone changes something: the server refused the username, the login or the
tunnel asked for, refused ``starttls`` while TLS is required, or the account has no tunnel or
several to choose from. Anything else (a refused greeting: the server is busy or limiting
logins; a clock off; a garbled reply; a closed connection) may pass by itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from tunnelbroker.protocols.tic import codec
from tunnelbroker.protocols.tic.errors import LocalProtocolError, RemoteProtocolError
from tunnelbroker.protocols.tic.events import (
    Done,
    Event,
    Failed,
    TlsRequested,
    TunnelsListed,
)
from tunnelbroker.protocols.tic.messages import TIC_VERSION, TicListEntry, TicTunnel

#: AICCU and sixxsd refuse a clock off by more than this (seconds).
CLOCK_WINDOW = 120
#: Lines in one block before the reply is refused as runaway.
MAX_BLOCK_LINES = 4096


class ClientState(Enum):
    GREETING = auto()
    CLIENT = auto()
    UNIXTIME = auto()
    STARTTLS = auto()
    TLS_PENDING = auto()
    USERNAME = auto()
    CHALLENGE = auto()
    AUTHENTICATE = auto()
    LIST = auto()
    SHOW = auto()
    DONE = auto()
    FAILED = auto()


_BLOCK_STATES = frozenset({ClientState.LIST, ClientState.SHOW})


@dataclass(frozen=True, slots=True)
class ClientSettings:
    username: str
    password: str
    #: The tunnel to fetch; None: the account's only tunnel.
    tunnel_id: str | None = None
    #: Only list the tunnels (``aiccu tunnels``).
    list_only: bool = False
    #: Send ``starttls`` (AICCU's GnuTLS builds do).
    starttls: bool = False
    #: Give up if the server refuses ``starttls`` (AICCU's ``requiretls``).
    require_tls: bool = False
    #: ``<name>/<version>`` and ``<os>/<version>`` of the ``client`` line.
    client_name: str = "tunnelbroker/0.1"
    os_name: str = "Linux/unknown"
    clock_window: int = CLOCK_WINDOW


class TicClient:
    """One TIC exchange on the client side. See the module docstring."""

    def __init__(self, settings: ClientSettings, now: float) -> None:
        for value in (settings.username, settings.client_name, settings.os_name):
            if not value or any(c.isspace() for c in value):
                raise LocalProtocolError(f"must be one word: {value!r}")
        if settings.tunnel_id is not None and not settings.tunnel_id.strip():
            raise LocalProtocolError("empty tunnel id")
        self.settings = settings
        self.state = ClientState.GREETING
        self.tls = False
        self.server_time: int | None = None
        self.clock_offset: float | None = None
        self.entries: tuple[TicListEntry, ...] = ()
        self.tunnel: TicTunnel | None = None
        #: The failure, if any, is one another attempt cannot cure (see the module docstring).
        self.failure_permanent = False
        self._now = now
        self._reader = codec.LineReader()
        self._block: list[str] | None = None
        self._events: deque[Event] = deque()
        self._out = bytearray()

    # ---------------------------------------------------------------- public API

    @property
    def finished(self) -> bool:
        return self.state in (ClientState.DONE, ClientState.FAILED)

    def receive_data(self, data: bytes, now: float) -> None:
        if self.finished:
            return
        self._now = now
        if self.state is ClientState.TLS_PENDING:
            self._fail("server sent plaintext after agreeing to starttls")
            return
        self._reader.feed(data)
        try:
            while self._reading():
                line = self._reader.next_line()
                if line is None:
                    return
                self._on_line(line)
        except RemoteProtocolError as e:
            self._fail(str(e))

    def _reading(self) -> bool:
        return not self.finished and self.state is not ClientState.TLS_PENDING

    def connection_lost(self) -> None:
        """The server closed the connection before the exchange was complete."""
        if not self.finished:
            self._fail(f"connection closed by the server ({self.state.name.lower()})")

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def tls_started(self) -> None:
        """The TLS handshake after :class:`TlsRequested` completed."""
        if self.state is not ClientState.TLS_PENDING:
            raise LocalProtocolError(f"tls_started in state {self.state.name}")
        self.tls = True
        self._send_username()

    # ---------------------------------------------------------------- replies

    def _on_line(self, line: str) -> None:
        if self._block is not None:
            if line.startswith("202"):
                lines, self._block = self._block, None
                self._on_block(lines)
            elif len(self._block) >= MAX_BLOCK_LINES:
                raise RemoteProtocolError("block reply too long")
            else:
                self._block.append(line)
            return
        code, text = codec.parse_reply(line)
        if self.state in _BLOCK_STATES and code == 201:
            self._block = []
            return
        self._on_reply(code, text, line)

    def _on_reply(self, code: int, text: str, line: str) -> None:
        ok = 200 <= code < 300
        state = self.state
        if state is ClientState.GREETING:
            if not ok:
                self._fail("TIC server is not available", line)
                return
            s = self.settings
            self._command(f"client TIC/{TIC_VERSION} {s.client_name} {s.os_name}")
            self.state = ClientState.CLIENT
        elif state is ClientState.CLIENT:
            if not ok:
                self._fail("the server refused our client identification", line)
                return
            self._command("get unixtime")
            self.state = ClientState.UNIXTIME
        elif state is ClientState.UNIXTIME:
            self._on_unixtime(ok, text, line)
        elif state is ClientState.STARTTLS:
            if ok:
                self.state = ClientState.TLS_PENDING
                self._events.append(TlsRequested())
            elif self.settings.require_tls:
                self._quit("TLS required but not offered")
                self._fail("the server refused starttls and TLS is required", line, permanent=True)
            else:
                self._send_username()
        elif state is ClientState.USERNAME:
            if not ok:
                self._fail("the server refused the username", line, permanent=True)
                return
            self._command("challenge md5")
            self.state = ClientState.CHALLENGE
        elif state is ClientState.CHALLENGE:
            challenge = text.strip()
            if code != 200 or not challenge or " " in challenge:
                self._fail("the server gave no md5 challenge", line)
                return
            stored = codec.password_md5(self.settings.password)
            self._command(f"authenticate md5 {codec.challenge_response(challenge, stored)}")
            self.state = ClientState.AUTHENTICATE
        elif state is ClientState.AUTHENTICATE:
            if not ok:
                self._quit("Authentication failed")
                self._fail("login failed", line, permanent=True)
                return
            if self.settings.list_only or self.settings.tunnel_id is None:
                self._command("tunnel list")
                self.state = ClientState.LIST
            else:
                self._show(self.settings.tunnel_id)
        elif state is ClientState.LIST:
            self._quit("Could not list tunnels")
            self._fail("the server refused to list tunnels", line)
        elif state is ClientState.SHOW:
            self._quit("No such tunnel")
            self._fail(f"no such tunnel: {self.settings.tunnel_id}", line, permanent=True)

    def _on_unixtime(self, ok: bool, text: str, line: str) -> None:
        digits = text.strip()
        if not ok or not digits.isascii() or not digits.isdigit() or len(digits) > 12:
            self._fail("the server did not tell its time", line)
            return
        self.server_time = int(digits)
        self.clock_offset = self._now - self.server_time
        if abs(self.clock_offset) > self.settings.clock_window:
            seconds = int(abs(self.clock_offset))
            self._quit(f"Aborting: Clock is off by {seconds} seconds")
            self._fail(f"our clock is off by {seconds} seconds from the server's (max 120)")
            return
        if self.settings.starttls and not self.tls:
            self._command("starttls")
            self.state = ClientState.STARTTLS
        else:
            self._send_username()

    def _on_block(self, lines: list[str]) -> None:
        if self.state is ClientState.LIST:
            self.entries = tuple(codec.parse_list_line(line) for line in lines)
            self._events.append(TunnelsListed(self.entries))
            if self.settings.list_only:
                self._finish(None, "Getting current tunnel listing")
            elif not self.entries:
                self._quit("I didn't have any tunnels to select")
                self._fail("the account has no tunnels", permanent=True)
            elif len(self.entries) > 1:
                self._quit("User still needed to select a tunnel")
                ids = ", ".join(e.tunnel_id for e in self.entries)
                self._fail(f"the account has several tunnels ({ids}): choose one", permanent=True)
            else:
                self._show(self.entries[0].tunnel_id)
        else:
            tunnel = codec.parse_show(lines)
            self._finish(tunnel, "Done")

    # ---------------------------------------------------------------- helpers

    def _send_username(self) -> None:
        self._command(f"username {self.settings.username}")
        self.state = ClientState.USERNAME

    def _show(self, tunnel_id: str) -> None:
        self._command(f"tunnel show {tunnel_id}")
        self.state = ClientState.SHOW

    def _finish(self, tunnel: TicTunnel | None, farewell: str) -> None:
        self.tunnel = tunnel
        self._quit(farewell)
        self.state = ClientState.DONE
        self._events.append(Done(tunnel, self.entries))

    def _command(self, line: str) -> None:
        self._out += codec.encode_lines([line])

    def _quit(self, text: str) -> None:
        self._command(f"QUIT {text}")

    def _fail(
        self, reason: str, server_line: str | None = None, *, permanent: bool = False
    ) -> None:
        if self.finished:
            return
        self.state = ClientState.FAILED
        self.failure_permanent = permanent
        self._events.append(Failed(reason, server_line))
