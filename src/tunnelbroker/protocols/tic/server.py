"""The server side of one TIC session, sans-IO.

Theory of operation
-------------------
TIC (sixxs.md §2) is an SMTP-like line protocol on TCP 3874. The server greets, then
answers one command line with one reply: ``200 text``, a ``201``/``202`` block, or
``400 text``. Commands belong to stages (§2.3, §2.7)::

    INITIAL        client, get unixtime, starttls, username
    TLS_PENDING    (nothing: the I/O layer wraps the socket, then calls tls_started())
    CHALLENGE      challenge md5                         (after username)
    AUTHENTICATE   challenge md5, authenticate md5       (after challenge)
    LOGGED_IN      tunnel list, tunnel show, route list, route show, pop list, pop show
    any stage      get unixtime, QUIT

Anything else, or a command in the wrong stage, is answered ``400`` and the session goes on
(up to ``max_errors``). A failed ``authenticate`` consumes the challenge and returns to
INITIAL; ``max_failures`` of them close the session. A line too long or not UTF-8, plaintext
bytes pipelined behind ``starttls``, or ``idle_timeout`` seconds of silence close it.

The machine is fed bytes (:meth:`TicServer.receive_data`) and the current time (epoch
seconds: it is also what ``get unixtime`` answers, and AICCU checks it to ±120 s). Replies
come out as separate writes (:meth:`TicServer.data_to_send`): a multi-line reply is cut
into writes of at most ``burst`` bytes that the I/O layer sends apart, because AICCU gives
up when more than about 1,014 bytes wait in its buffer (§2.9). Account and tunnel data come
from a :class:`~.backend.TicBackend`; challenges from the injected random source.

Transitions are the table built in ``__init__``: ``(stage, command) -> handler``.
"""

from __future__ import annotations

import hmac
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import TypeVar

from tunnelbroker.protocols.tic import codec
from tunnelbroker.protocols.tic.backend import TicBackend
from tunnelbroker.protocols.tic.errors import LocalProtocolError, RemoteProtocolError
from tunnelbroker.protocols.tic.events import (
    Closed,
    ErrorSent,
    Event,
    LoginFailed,
    LoginSucceeded,
    StartTls,
)
from tunnelbroker.protocols.tic.messages import ReplyCode

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class State(Enum):
    INITIAL = auto()
    TLS_PENDING = auto()
    CHALLENGE = auto()
    AUTHENTICATE = auto()
    LOGGED_IN = auto()
    CLOSED = auto()


_ANY = frozenset(State) - {State.TLS_PENDING, State.CLOSED}
#: Verbs whose second word is part of the command.
_TWO_WORD = frozenset({"get", "tunnel", "route", "pop"})
_MAX_USERNAME = 64
#: Queued reply bytes after which a client that pipelines without reading is cut off.
_MAX_QUEUED = 65536


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every session of one listener shares."""

    service_name: str = "tunnelbroker"
    host_name: str = "localhost"
    #: A certificate is configured: ``starttls`` is offered.
    tls_available: bool = False
    #: Close a session silent this long (seconds).
    idle_timeout: float = 60.0
    #: Failed logins on one connection before it is closed.
    max_failures: int = 3
    #: ``400`` replies on one connection before it is closed.
    max_errors: int = 10
    max_line: int = codec.MAX_LINE
    #: Bytes per write of a multi-line reply.
    burst: int = codec.BURST


class TicServer:
    """One TIC session on the server side. See the module docstring."""

    def __init__(
        self,
        settings: ServerSettings,
        backend: TicBackend,
        *,
        peer: str,
        now: float,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        """Args:
        peer: the client's address, for the login message and logs.
        now: the current time, epoch seconds.
        random_bytes: a cryptographic random source (``os.urandom``) for challenges.
        """
        self.settings = settings
        self.backend = backend
        self.peer = peer
        self.state = State.INITIAL
        self.tls = False
        self.client_identity: str | None = None
        #: The name given with ``username``; the account once logged in.
        self.username: str | None = None
        self.logged_in = False
        self.failures = 0
        self.errors = 0
        self._random_bytes = random_bytes
        self._challenge: str | None = None
        self._reader = codec.LineReader(settings.max_line)
        self._events: deque[Event] = deque()
        self._writes: list[bytes] = []
        self._queued = 0
        self._now = now
        self._last_activity = now
        self._handlers: dict[tuple[State, str], Callable[[list[str], str], None]] = {}
        for state in _ANY:
            self._handlers[state, "get unixtime"] = self._on_unixtime
            self._handlers[state, "quit"] = self._on_quit
        self._handlers[State.INITIAL, "client"] = self._on_client
        self._handlers[State.INITIAL, "starttls"] = self._on_starttls
        self._handlers[State.INITIAL, "username"] = self._on_username
        self._handlers[State.CHALLENGE, "challenge"] = self._on_challenge
        self._handlers[State.AUTHENTICATE, "challenge"] = self._on_challenge
        self._handlers[State.AUTHENTICATE, "authenticate"] = self._on_authenticate
        for command, handler in (
            ("tunnel list", self._on_tunnel_list),
            ("tunnel show", self._on_tunnel_show),
            ("route list", self._on_route_list),
            ("route show", self._on_route_show),
            ("pop list", self._on_pop_list),
            ("pop show", self._on_pop_show),
        ):
            self._handlers[State.LOGGED_IN, command] = handler
        self._known = {command for _, command in self._handlers}
        self._send(
            codec.reply(
                ReplyCode.OK,
                f"{settings.service_name} TIC Service on {settings.host_name} ready",
            )
        )

    # ---------------------------------------------------------------- public API

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the client (plaintext, or already decrypted after STARTTLS)."""
        if self.state is State.CLOSED:
            return
        self._now = now
        self._last_activity = now
        if self.state is State.TLS_PENDING:
            self._fatal("Data before the TLS handshake")
            return
        self._reader.feed(data)
        while self.state not in (State.CLOSED, State.TLS_PENDING):
            try:
                line = self._reader.next_line()
            except RemoteProtocolError as e:
                self._fatal(str(e))
                return
            if line is None:
                return
            self._dispatch(line)
            if self._queued > _MAX_QUEUED:
                self._close("client does not read its replies")

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> list[bytes]:
        """Writes to send in order, apart from each other (see the module docstring)."""
        out, self._writes = self._writes, []
        self._queued = 0
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called (epoch seconds), or None."""
        if self.state is State.CLOSED:
            return None
        return self._last_activity + self.settings.idle_timeout

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is None or now < timer:
            return
        self._now = now
        self._send(codec.reply(ReplyCode.ERROR, "Idle timeout, closing connection"))
        self._close("idle timeout")

    def tls_started(self) -> None:
        """The TLS handshake after :class:`StartTls` completed."""
        if self.state is not State.TLS_PENDING:
            raise LocalProtocolError(f"tls_started in state {self.state.name}")
        self.tls = True
        self.state = State.INITIAL

    def close(self, reason: str, text: str | None = None) -> None:
        """Close from the I/O layer's side, optionally telling the client ``400 text``."""
        if self.state is State.CLOSED:
            return
        if text is not None:
            self._send(codec.reply(ReplyCode.ERROR, text))
        self._close(reason)

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, line: str) -> None:
        words = line.split()
        if not words:
            return  # A bare Enter from someone on telnet: no reply, no error.
        verb = words[0].lower()
        if verb in _TWO_WORD and len(words) > 1:
            command, args = f"{verb} {words[1].lower()}", words[2:]
        else:
            command, args = verb, words[1:]
        rest = line.strip()[len(words[0]) :].strip()
        handler = self._handlers.get((self.state, command))
        if handler is None:
            if command in self._known:
                self._error(command, f"Command not allowed at this stage: {command}")
            else:
                self._error(command, "Unknown command")
            return
        try:
            handler(args, rest)
        except LocalProtocolError as e:
            # The backend gave something the wire cannot carry: a bug on our side.
            log.error("tic %s: cannot answer %r: %s", self.peer, command, e)
            self._error(command, "Internal error")

    # ---------------------------------------------------------------- handlers

    def _on_unixtime(self, args: list[str], rest: str) -> None:
        self._send(codec.reply(ReplyCode.OK, str(int(self._now))))

    def _on_quit(self, args: list[str], rest: str) -> None:
        self._send(codec.reply(ReplyCode.OK, "Thank you for using this TIC service"))
        self._close("quit" + (f": {rest}" if rest else ""))

    def _on_client(self, args: list[str], rest: str) -> None:
        if not rest:
            self._error("client", "client needs an identification")
            return
        # Only for the log: keep it short and free of terminal control sequences.
        self.client_identity = "".join(c for c in rest[:200] if c.isprintable())
        self._send(codec.reply(ReplyCode.OK, "Client Identity accepted"))

    def _on_starttls(self, args: list[str], rest: str) -> None:
        if self.tls:
            self._error("starttls", "TLS is already active")
            return
        if not self.settings.tls_available:
            self._error("starttls", "This service is not SSL enabled (yet)")
            return
        if self._reader.pending():
            # Plaintext pipelined behind starttls would be taken as sent under TLS.
            self._fatal("Data after starttls")
            return
        self._send(codec.reply(ReplyCode.OK, "Starting TLS"))
        self.state = State.TLS_PENDING
        self._events.append(StartTls())

    def _on_username(self, args: list[str], rest: str) -> None:
        if len(args) != 1 or len(args[0]) > _MAX_USERNAME or not args[0].isprintable():
            self._error("username", "username needs one name")
            return
        self.username = args[0]
        self.state = State.CHALLENGE
        self._send(codec.reply(ReplyCode.OK, "Choose your authentication challenge please"))

    def _on_challenge(self, args: list[str], rest: str) -> None:
        if [a.lower() for a in args] != ["md5"]:
            self._error("challenge", "Only the md5 challenge is supported")
            return
        self._challenge = self._random_bytes(16).hex()
        self.state = State.AUTHENTICATE
        self._send(codec.reply(ReplyCode.OK, self._challenge))

    def _on_authenticate(self, args: list[str], rest: str) -> None:
        if len(args) != 2 or args[0].lower() != "md5":
            self._error("authenticate", "Only md5 authentication is supported")
            return
        username, challenge = self.username, self._challenge
        assert username is not None and challenge is not None
        self._challenge = None  # Single use, right or wrong.
        try:
            stored = self.backend.password_md5(username)
            enabled = stored is not None and self.backend.user_enabled(username)
        except Exception:
            log.exception("tic %s: backend failed looking up %r", self.peer, username)
            self.state = State.INITIAL
            self._error("authenticate", "Internal error")
            return
        ok = stored is not None and hmac.compare_digest(
            codec.challenge_response(challenge, stored).encode(), args[1].lower().encode()
        )
        if not ok or not enabled:
            reason = "wrong password or unknown user" if not ok else "account disabled"
            self._login_failed(username, reason)
            return
        self.logged_in = True
        self.state = State.LOGGED_IN
        self._events.append(LoginSucceeded(username))
        self._send(
            codec.reply(
                ReplyCode.OK, f"Succesfully logged in using md5 as {username} from {self.peer}"
            )
        )

    def _on_tunnel_list(self, args: list[str], rest: str) -> None:
        tunnels = self._backend_call("tunnel list", self.backend.tunnels)
        if tunnels is not None:
            lines = [codec.list_line(t) for t in tunnels]
            self._send_block("Listing tunnels", lines, "<tunnel_list>")

    def _on_tunnel_show(self, args: list[str], rest: str) -> None:
        if len(args) != 1:
            self._error("tunnel show", "tunnel show needs a TunnelId")
            return
        tunnels = self._backend_call("tunnel show", self.backend.tunnels)
        if tunnels is None:
            return
        for tunnel in tunnels:
            if tunnel.tunnel_id == args[0]:
                lines = codec.show_lines(tunnel)
                self._send_block(f"Showing tunnel information for {args[0]}", lines, "Done")
                return
        self._error("tunnel show", "Unknown tunnel")

    def _on_route_list(self, args: list[str], rest: str) -> None:
        routes = self._backend_call("route list", self.backend.routes)
        if routes is not None:
            lines = [codec.route_line(r) for r in routes]
            self._send_block("Listing routes", lines, "<route_list>")

    def _on_route_show(self, args: list[str], rest: str) -> None:
        if len(args) != 1:
            self._error("route show", "route show needs a RouteId")
            return
        # Only the account's own routes: another user's RouteId is as unknown as a made-up one.
        routes = self._backend_call("route show", self.backend.routes)
        if routes is None:
            return
        for route in routes:
            if route.route_id == args[0]:
                lines = codec.route_lines(route)
                self._send_block(f"Showing route information for {args[0]}", lines, "Done")
                return
        self._error("route show", "Unknown route")

    def _on_pop_list(self, args: list[str], rest: str) -> None:
        pops = self._backend_call("pop list", lambda _user: self.backend.pops())
        if pops is not None:
            lines = [codec.pop_list_line(p) for p in pops]
            self._send_block("Listing PoPs", lines, "<pop_list>")

    def _on_pop_show(self, args: list[str], rest: str) -> None:
        if len(args) != 1:
            self._error("pop show", "pop show needs a POPId")
            return
        pops = self._backend_call("pop show", lambda _user: self.backend.pops())
        if pops is None:
            return
        for pop in pops:
            if pop.pop_id == args[0]:
                lines = codec.pop_lines(pop)
                self._send_block(f"Showing PoP information for {args[0]}", lines, "Done")
                return
        self._error("pop show", "Unknown PoP")

    # ---------------------------------------------------------------- helpers

    def _backend_call(
        self, command: str, call: Callable[[str], Sequence[_T]]
    ) -> Sequence[_T] | None:
        assert self.username is not None
        try:
            return call(self.username)
        except Exception:
            # A broken backend must not end the session (or the listener): 400 and go on.
            log.exception("tic %s: backend failed on %r", self.peer, command)
            self._error(command, "Internal error")
            return None

    def _login_failed(self, username: str, reason: str) -> None:
        self.failures += 1
        self.state = State.INITIAL
        self.username = None
        self._events.append(LoginFailed(username, reason))
        self._error("authenticate", "Authentication failed")
        if self.failures >= self.settings.max_failures and self.state is not State.CLOSED:
            self._close("too many failed logins")

    def _send(self, line: str) -> None:
        data = codec.encode_lines([line])
        self._writes.append(data)
        self._queued += len(data)

    def _send_block(self, start: str, lines: list[str], end: str) -> None:
        writes = codec.pace(codec.block(start, lines, end), self.settings.burst)
        self._writes.extend(writes)
        self._queued += sum(len(w) for w in writes)

    def _error(self, command: str, text: str) -> None:
        self._send(codec.reply(ReplyCode.ERROR, text))
        self._events.append(ErrorSent(command, text))
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._close("too many errors")

    def _fatal(self, text: str) -> None:
        self._reader.clear()
        if self.state is not State.CLOSED:
            self._send(codec.reply(ReplyCode.ERROR, text))
            self._events.append(ErrorSent("", text))
            self._close(text)

    def _close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._events.append(Closed(reason))
