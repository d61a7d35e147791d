"""The server side of one TSP session, sans-IO.

Theory of operation
-------------------
A session is one TCP connection, or one UDP 5-tuple behind :class:`ReliableUdpServer`. It walks
the three phases of RFC 5572 §4: authentication (``VERSION=``, ``CAPABILITY``, SASL), command
(``Content-length``-framed ``<tunnel action="create|delete|info">``) and response (our offer,
then the client's ``accept`` or ``reject``).

The machine is fed bytes with :meth:`ServerSession.receive_data` and yields events
(:mod:`.events`) and writes (:meth:`data_to_send`, a list because gogoc reads each reply with a
single ``recv()``: on TCP the DIGEST-MD5 ``rspauth`` and ``200 Success`` must be separate writes,
tsp.md §2.4). Decisions that need the store or the broker are events; the machine waits
(:attr:`awaiting`) until the I/O layer calls the matching ``complete_*``/``offer``/``refuse``.

On UDP each datagram payload is one message, and every datagram is answered by exactly one
datagram: :class:`ReliableUdpServer` echoes the header and joins whatever the machine queued
(an empty payload is a valid ack). A header-only probe (an empty payload) asks "what now?": after
DIGEST-MD5 it is answered with ``200 Success`` (tsp.md §2.4, reply 2).

Transitions are the table ``_HANDLERS``: one handler per state for each message; a message in a
state without a handler is a remote protocol error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto

from tunnelbroker.protocols.sasl import digest_md5, plain
from tunnelbroker.protocols.sasl.errors import SaslError
from tunnelbroker.protocols.tsp import codec, framing
from tunnelbroker.protocols.tsp.errors import (
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    StatusCode,
)
from tunnelbroker.protocols.tsp.events import (
    Authenticated,
    DigestAuthRequested,
    ErrorSent,
    Event,
    PlainAuthRequested,
    SessionClosed,
    SessionRestarted,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
    VersionAccepted,
)
from tunnelbroker.protocols.tsp.messages import Action, Address, AddressType, Tunnel, TunnelType

log = logging.getLogger(__name__)


class Transport(Enum):
    TCP = "tcp"
    UDP = "udp"


class State(Enum):
    VERSION = auto()
    AUTHENTICATE = auto()
    PLAIN_CREDENTIALS = auto()
    PLAIN_CHECK = auto()
    DIGEST_RESPONSE = auto()
    DIGEST_CHECK = auto()
    DIGEST_OK = auto()
    COMMAND = auto()
    COMMAND_PENDING = auto()
    OFFERED = auto()
    ESTABLISHED = auto()
    CLOSED = auto()


#: States in which the machine waits for the I/O layer, not for the peer.
AWAITING_STATES = frozenset({State.PLAIN_CHECK, State.DIGEST_CHECK, State.COMMAND_PENDING})

#: States whose messages are Content-length framed; all others are lines.
_CONTENT_STATES = frozenset({State.COMMAND, State.OFFERED, State.ESTABLISHED})


def _version_supported(version: str) -> bool:
    # RFC 5572 is version 2.0.0; gogoc sends 2.0.2, then falls back to 2.0.1, 2.0.0 and 1.0.1
    # on 302. 1.0.x differs only in having no accept step, so both families are served.
    parts = version.split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) <= 4 for p in parts):
        return False
    return (parts[0], parts[1]) in {("2", "0"), ("1", "0")}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What one broker offers; shared by all sessions."""

    realm: str
    tunnel_types: tuple[TunnelType, ...] = (TunnelType.V6V4, TunnelType.V6UDPV4, TunnelType.V4V6)
    mechanisms: tuple[str, ...] = ("DIGEST-MD5", "PLAIN", "ANONYMOUS")
    allow_anonymous: bool = True
    max_message_size: int = 4096
    #: Close a session silent for this long (seconds) before it is established.
    idle_timeout: float = 30.0
    #: Close a session not established this long (seconds) after it began.
    session_timeout: float = 120.0
    #: Brokers to refer to with 1000+ codes; empty: plain errors.
    referrals: tuple[Address, ...] = field(default=())

    def capability_types(self, transport: Transport, ipv6_session: bool) -> list[TunnelType]:
        """Types to advertise on a session (RFC 5572 Fig. 4).

        v6udpv4 needs UDP (gogoc would write raw IPv6 into a TCP socket); the v6-over-v4 types
        need an IPv4 session and v4v6 an IPv6 one. v6anyv4 is implied by V6V4/V6UDPV4.
        """
        out: list[TunnelType] = []
        for t in self.tunnel_types:
            if t is TunnelType.V6ANYV4:
                continue
            if t is TunnelType.V6UDPV4 and transport is not Transport.UDP:
                continue
            if (t is TunnelType.V4V6) != ipv6_session:
                continue
            out.append(t)
        return out

    def offered_mechanisms(self) -> list[str]:
        return [m for m in self.mechanisms if m != "ANONYMOUS" or self.allow_anonymous]


class ServerSession:
    """One TSP session on the server side. See the module docstring."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        transport: Transport,
        ipv6_session: bool,
        nonce: str,
        now: float,
    ) -> None:
        """Args:
        settings: the broker's offer.
        transport: TCP (a stream) or UDP (one message per datagram payload).
        ipv6_session: the session runs over IPv6 (only v4v6 can be set up then).
        nonce: a fresh unpredictable DIGEST-MD5 nonce for this session (no commas or quotes).
        now: the current monotonic time, seconds.
        """
        self.settings = settings
        self.transport = transport
        self.ipv6_session = ipv6_session
        self._nonce = nonce
        self.state = State.VERSION
        self.version: str | None = None
        self.mechanism: str | None = None
        self.username: str | None = None
        self.offer_sent: Tunnel | None = None
        self._reader = framing.MessageReader(settings.max_message_size)
        self._events: deque[Event] = deque()
        self._writes: list[bytes] = []
        self._digest: digest_md5.DigestServer | None = None
        self._digest_response: digest_md5.DigestResponse | None = None
        self._started = now
        self._last_activity = now
        self._established = False
        self._pending_action = Action.CREATE
        self._handlers: dict[State, Callable[[bytes], None]] = {
            State.VERSION: self._on_version,
            State.AUTHENTICATE: self._on_authenticate,
            State.PLAIN_CREDENTIALS: self._on_plain_credentials,
            State.DIGEST_RESPONSE: self._on_digest_response,
            State.COMMAND: self._on_command,
            State.OFFERED: self._on_offer_answer,
            State.ESTABLISHED: self._on_established,
        }

    # ---------------------------------------------------------------- public API

    @property
    def awaiting(self) -> bool:
        """True while a decision event is outstanding."""
        return self.state in AWAITING_STATES

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer: a TCP chunk, or one UDP datagram's payload."""
        if self.state is State.CLOSED:
            return
        self._last_activity = now
        if self.transport is Transport.UDP:
            self._receive_datagram(data)
            return
        try:
            self._reader.feed(data)
        except DecodeError as e:
            self._fail(e.code, str(e), fatal=True)
            return
        self._drain_reader()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> list[bytes]:
        """Separate writes, in order (TCP: write each; UDP: the reliable layer joins them)."""
        out, self._writes = self._writes, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        if self.state is State.CLOSED or self._established:
            return None
        return min(
            self._last_activity + self.settings.idle_timeout,
            self._started + self.settings.session_timeout,
        )

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is None or now < timer:
            return
        if now >= self._started + self.settings.session_timeout:
            self._close("session did not complete in time")
        else:
            self._close("idle timeout")

    def complete_plain(self, username: str | None) -> None:
        """Answer :class:`PlainAuthRequested`: the account name, or None if the check failed."""
        self._expect(State.PLAIN_CHECK)
        if username is None:
            self._fail(StatusCode.AUTHENTICATION_FAILED, "PLAIN: bad credentials", fatal=True)
            return
        self._authenticated("PLAIN", username)
        self._send_line(StatusCode.SUCCESS.to_line())

    def complete_digest(self, ha1: bytes | None) -> None:
        """Answer :class:`DigestAuthRequested` with the user's HA1 (None: no such user)."""
        self._expect(State.DIGEST_CHECK)
        assert self._digest is not None and self._digest_response is not None
        # gogoc at TSP 2.0.0 and older truncates A1 at a NUL byte (tsp_auth.c, "BUG1455").
        legacy = self.version is not None and _version_tuple(self.version) <= (2, 0, 0)
        try:
            rspauth = self._digest.verify(self._digest_response, ha1, allow_legacy_a1=legacy)
        except SaslError as e:
            self._fail(StatusCode.AUTHENTICATION_FAILED, f"DIGEST-MD5: {e}", fatal=True)
            return
        username = self._digest_response.username
        self._digest_response = None
        self._authenticated("DIGEST-MD5", username)
        self._writes.append(digest_md5.encode_b64_line(rspauth))
        if self.transport is Transport.TCP:
            # A separate write: gogoc reads rspauth and the status with two recv() calls.
            self._send_line(StatusCode.SUCCESS.to_line())
            self.state = State.COMMAND
        else:
            self.state = State.DIGEST_OK

    def offer(self, tunnel: Tunnel) -> None:
        """Answer a create or info :class:`TunnelRequested` with a tunnel document."""
        self._expect(State.COMMAND_PENDING)
        self._writes.append(
            framing.encode_reply(StatusCode.SUCCESS.to_line(), codec.tunnel_to_xml(tunnel))
        )
        if tunnel.action is Action.INFO and self._pending_action is Action.CREATE:
            self.offer_sent = tunnel
            if self.version is not None and self.version.startswith("1."):
                # TSP 1.0 has no accept step: the offer stands.
                self._establish(tunnel)
            else:
                self.state = State.OFFERED
        else:
            self.state = State.ESTABLISHED if self._established else State.COMMAND

    def acknowledge(self) -> None:
        """Answer a delete :class:`TunnelRequested` with ``200 Success``."""
        self._expect(State.COMMAND_PENDING)
        self._writes.append(framing.encode_reply(StatusCode.SUCCESS.to_line()))
        self._established = False
        self.state = State.COMMAND

    def refuse(self, code: StatusCode, reason: str = "", *, referral: bool = False) -> None:
        """Answer a :class:`TunnelRequested` with an error; the session may try again.

        With ``referral`` and configured referrals, the code gets +1000 and a broker list.
        """
        self._expect(State.COMMAND_PENDING)
        brokers = self.settings.referrals if referral else ()
        xml = None
        if brokers:
            xml = codec.tunnel_to_xml(Tunnel(action=Action.LIST, brokers=brokers))
        self._writes.append(framing.encode_reply(code.to_line(referral=bool(brokers)), xml))
        self._events.append(ErrorSent(code, reason or code.text, fatal=False))
        self.state = State.ESTABLISHED if self._established else State.COMMAND

    def close(self, reason: str = "closed by server") -> None:
        self._close(reason)

    # ---------------------------------------------------------------- input plumbing

    def _receive_datagram(self, payload: bytes) -> None:
        if not payload:
            # A header-only probe: "what now?".
            self._on_probe()
            return
        if self.state is State.DIGEST_OK:
            # A client that sends its request without probing for the status first evidently
            # took rspauth as success (ddtb sends both in one datagram): carry on.
            self.state = State.COMMAND
        if self.state in _CONTENT_STATES:
            body = payload
        else:
            # One datagram is one line even without its CRLF.
            body = payload if payload.rstrip(b"\0").endswith(b"\n") else payload + b"\r\n"
        try:
            self._reader.feed(body)
        except DecodeError as e:
            self._fail(e.code, str(e), fatal=True)
            return
        self._drain_reader()
        # A datagram is one whole message (RFC 5572 §3.2): nothing carries over to the next.
        # Trailing bytes (gogoc's NULs) are dropped; a body cut short is an error.
        if self._reader.pending() or self._reader.in_body:
            truncated = self._reader.in_body
            self._reader.take_rest()
            if truncated and self.state in _CONTENT_STATES:
                self._fail(
                    StatusCode.INVALID_REQUEST_FORMAT,
                    "Content-length does not match the datagram",
                    fatal=False,
                )

    def _drain_reader(self) -> None:
        while self.state is not State.CLOSED and not self.awaiting:
            try:
                if self.state in _CONTENT_STATES:
                    msg = self._next_content_or_version()
                else:
                    msg = self._reader.next_line()
                if msg is None:
                    return
                self._dispatch(msg)
            except RemoteProtocolError as e:
                # In the command phase a bad request is answered and the session goes on;
                # before it, the session cannot recover its footing.
                recoverable = self.state in _CONTENT_STATES
                self._fail(e.code, str(e), fatal=not recoverable)
                if recoverable:
                    # Resynchronise: whatever was buffered belongs to the bad request.
                    self._reader.take_rest()

    def _next_content_or_version(self) -> bytes | None:
        # In the command phase a new VERSION= restarts the session (tsp.md §3 item 7).
        stripped = self._reader.peek().lstrip(b"\0 \t\r\n")
        if not self._reader.in_body and stripped[:8].upper() == b"VERSION=":
            line = self._reader.next_line()
            if line is None:
                return None
            return line
        return self._reader.next_content()

    def _dispatch(self, msg: bytes) -> None:
        head = framing.strip_nuls(msg)
        if head[:8].upper() == b"VERSION=" and self.state is not State.VERSION:
            self._restart()
        self._handlers[self.state](msg)

    def _on_probe(self) -> None:
        if self.state is State.DIGEST_OK:
            self._send_line(StatusCode.SUCCESS.to_line())
            self.state = State.COMMAND
        # In any other state an empty ack is the answer (the reliable layer sends it).

    # ---------------------------------------------------------------- per-state handlers

    def _on_version(self, line: bytes) -> None:
        version = framing.parse_version(line)
        if not _version_supported(version):
            self._fail(
                StatusCode.UNSUPPORTED_CLIENT_VERSION, f"client version {version!r}", fatal=True
            )
            return
        self.version = version
        types = self.settings.capability_types(self.transport, self.ipv6_session)
        self._writes.append(framing.encode_capability(types, self.settings.offered_mechanisms()))
        self._events.append(VersionAccepted(version))
        self.state = State.AUTHENTICATE

    def _on_authenticate(self, line: bytes) -> None:
        mech = framing.parse_authenticate(line)
        if mech not in self.settings.offered_mechanisms():
            self._fail(
                StatusCode.AUTHENTICATION_FAILED, f"mechanism {mech!r} not offered", fatal=True
            )
            return
        self.mechanism = mech
        if mech == "ANONYMOUS":
            self._authenticated(mech, None)
            self._send_line(StatusCode.SUCCESS.to_line())
        elif mech == "PLAIN":
            # gogoc sends the credentials as a separate message and waits for no reply on TCP;
            # on UDP the reliable layer acks this datagram with an empty payload.
            self.state = State.PLAIN_CREDENTIALS
        else:
            self._digest = digest_md5.DigestServer(self.settings.realm, self._nonce)
            self._writes.append(digest_md5.encode_b64_line(self._digest.challenge()))
            self.state = State.DIGEST_RESPONSE

    def _on_plain_credentials(self, line: bytes) -> None:
        try:
            creds = plain.parse_plain(line)
        except SaslError as e:
            self._fail(StatusCode.AUTHENTICATION_FAILED, f"PLAIN: {e}", fatal=True)
            return
        if creds.authzid and creds.authzid != creds.authcid:
            self._fail(
                StatusCode.AUTHENTICATION_FAILED, "PLAIN: authorization identity", fatal=True
            )
            return
        self.state = State.PLAIN_CHECK
        self._events.append(PlainAuthRequested(creds.authzid, creds.authcid, creds.password))

    def _on_digest_response(self, line: bytes) -> None:
        try:
            response = digest_md5.parse_digest_response(digest_md5.decode_b64_line(line))
        except SaslError as e:
            self._fail(StatusCode.AUTHENTICATION_FAILED, f"DIGEST-MD5: {e}", fatal=True)
            return
        self._digest_response = response
        self.state = State.DIGEST_CHECK
        self._events.append(DigestAuthRequested(response.username, self.settings.realm))

    def _on_command(self, body: bytes) -> None:
        request = codec.tunnel_from_xml(body, self.settings.max_message_size)
        if request.action in (Action.ACCEPT, Action.REJECT):
            raise RemoteProtocolError(f"{request.action.value} without an offer")
        if request.action not in (Action.CREATE, Action.DELETE, Action.INFO):
            raise RemoteProtocolError(f"action {request.action.value!r} from a client")
        if request.action is Action.CREATE and request.type is None:
            raise RemoteProtocolError("create without a tunnel type")
        self._pending_action = request.action
        self.state = State.COMMAND_PENDING
        self._events.append(TunnelRequested(request, self.username))

    def _on_offer_answer(self, body: bytes) -> None:
        answer = codec.tunnel_from_xml(body, self.settings.max_message_size)
        assert self.offer_sent is not None
        if answer.action is Action.ACCEPT:
            self._establish(self.offer_sent)
        elif answer.action is Action.REJECT:
            self._events.append(TunnelRejected(self.offer_sent))
            self.offer_sent = None
            self.state = State.COMMAND
        elif answer.action in (Action.CREATE, Action.DELETE, Action.INFO):
            # A new command instead of an answer: the offer lapses.
            self._events.append(TunnelRejected(self.offer_sent))
            self.offer_sent = None
            self.state = State.COMMAND
            self._on_command(body)
        else:
            raise RemoteProtocolError(f"unexpected action {answer.action.value!r}")

    def _on_established(self, body: bytes) -> None:
        # Commands after the tunnel is up (delete, info, or a new create that replaces it).
        self._on_command(body)

    # ---------------------------------------------------------------- helpers

    def _establish(self, tunnel: Tunnel) -> None:
        self._established = True
        self.state = State.ESTABLISHED
        self._events.append(TunnelAccepted(tunnel))

    def _restart(self) -> None:
        self._events.append(SessionRestarted(had_tunnel=self._established))
        self._established = False
        self.offer_sent = None
        self.username = None
        self.mechanism = None
        self._digest = None
        self.state = State.VERSION

    def _authenticated(self, mechanism: str, username: str | None) -> None:
        self.username = username
        self._events.append(Authenticated(mechanism, username))
        self.state = State.COMMAND

    def _send_line(self, line: str) -> None:
        self._writes.append(line.encode("ascii") + b"\r\n")

    def _fail(self, code: StatusCode, reason: str, *, fatal: bool) -> None:
        if self.state in _CONTENT_STATES or self.state is State.COMMAND_PENDING:
            self._writes.append(framing.encode_reply(code.to_line()))
        else:
            self._send_line(code.to_line())
        self._events.append(ErrorSent(code, reason, fatal=fatal))
        if fatal:
            self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._events.append(SessionClosed(reason))

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"called in state {self.state.name}, needs {state.name}")


def referral_addresses(hosts: Sequence[str]) -> tuple[Address, ...]:
    """Turn configured referral hosts into ``<broker><address>`` entries."""
    import ipaddress

    out = []
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            out.append(Address(AddressType.DN, h))
            continue
        kind = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
        out.append(Address(kind, str(ip)))
    return tuple(out)
