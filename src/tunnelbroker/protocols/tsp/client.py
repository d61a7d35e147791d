"""The client side of one TSP session, sans-IO.

Theory of operation
-------------------
One :class:`ClientSession` is one attempt: one TCP connection, or one UDP flow behind
:class:`~tunnelbroker.protocols.tsp.reliable_client.ReliableUdpClient`, at one protocol version.
It walks RFC 5572 §4 the way gogoc does on the wire (tsp.md §2.4, §2.5)::

    C: VERSION=2.0.0                       S: CAPABILITY TUNNEL=... AUTH=...
    C: AUTHENTICATE <MECH> CR LF NUL       S: 200 Success            (ANONYMOUS)
       PLAIN:  C: NUL user NUL pass         S: 200 Success
       DIGEST: S: b64 challenge   C: b64 response   S: b64 rspauth   S: 200 Success
    C: Content-length: N / <tunnel action="create" ...>
    S: Content-length: N / 200 Success / <tunnel action="info" ...>
    C: Content-length: 35 / <tunnel action="accept"></tunnel>           (not with TSP 1.x)

Every attempt ends in exactly one terminal event: :class:`Established`, :class:`VersionRejected`
(302: the driver retries with an older version), :class:`Redirected` (a 1000+ code with a
broker list) or :class:`Failed`. Peer input never raises: it becomes :class:`Failed`.

The I/O layer calls :meth:`receive_data` with what arrived and sends each item of
:meth:`data_to_send` as a separate write (TCP) or datagram (UDP). On UDP every datagram is
answered by exactly one datagram, possibly header-only; the machine counts unanswered
messages, so when a reply leaves it waiting with nothing in flight it queues a header-only
"read" probe (an empty message), as gogoc does after DIGEST-MD5's rspauth (tsp.md §2.9) or
when a framed reply is split over datagrams.

Nothing here touches sockets, clocks or randomness: ``now`` and the DIGEST-MD5 ``cnonce`` come
from the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from tunnelbroker.protocols.sasl import digest_md5, plain
from tunnelbroker.protocols.sasl.errors import SaslError
from tunnelbroker.protocols.tsp import codec, framing
from tunnelbroker.protocols.tsp.errors import (
    REFERRAL_OFFSET,
    DecodeError,
    LocalProtocolError,
    StatusCode,
)
from tunnelbroker.protocols.tsp.messages import (
    Action,
    Address,
    AddressType,
    Endpoint,
    Keepalive,
    Prefix,
    Router,
    Tunnel,
    TunnelType,
)
from tunnelbroker.protocols.tsp.server import Transport

__all__ = [
    "ANY",
    "MECHANISMS",
    "Authenticated",
    "CapabilityReceived",
    "ClientSession",
    "ClientState",
    "Established",
    "Event",
    "Failed",
    "Redirected",
    "VersionRejected",
    "build_request",
]

#: ``mechanism="ANY"``: DIGEST-MD5, else PLAIN, by what the server offers; never ANONYMOUS.
ANY = "ANY"
#: The mechanisms a client can ask for, in gogoc's preference order for ANY.
MECHANISMS = ("ANONYMOUS", "PLAIN", "DIGEST-MD5", ANY)
_ANY_ORDER = ("DIGEST-MD5", "PLAIN")

#: The TSP version this client speaks first (RFC 5572 is 2.0.0).
DEFAULT_VERSION = "2.0.0"

# A status line is a code then text; a SASL token is base64 without blanks. Base64 that is
# nothing but a few digits is not a real challenge or rspauth, so this test cannot misfire.
_STATUS_RE = re.compile(rb"[0-9]{1,9}(?:[ \t].*)?", re.DOTALL)
_CONTENT_LENGTH = b"content-length"
# Servers may send the referral XML after a bare status line, with no length: it ends at
# </tunnel> (or at the end of the connection or datagram).
_TUNNEL_END_RE = re.compile(rb"</\s*tunnel\s*>", re.IGNORECASE)
_JUNK = b"\x00 \t\r\n\x0b\x0c"

_MAX_MESSAGE = 16384


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


class Event:
    """Base class of everything :meth:`ClientSession.next_event` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CapabilityReceived(Event):
    """The server's CAPABILITY line (informational)."""

    capability: framing.Capability


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """SASL succeeded with ``mechanism``; the create request has been queued."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class Established(Event):
    """Terminal: the offer was valid and accepted (``accept`` queued unless TSP 1.x).

    ``tunnel_type`` is what the broker chose (v6anyv4 resolves to v6v4 or v6udpv4).
    """

    offer: Tunnel
    tunnel_type: TunnelType


@dataclass(frozen=True, slots=True)
class VersionRejected(Event):
    """Terminal: ``302`` to our VERSION; retry with an older version on a fresh flow."""

    version: str
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Redirected(Event):
    """Terminal: a 1000+ code with a broker list (RFC 5572 Fig. 9); try those brokers."""

    code: int
    brokers: tuple[Address, ...]
    text: str = ""


@dataclass(frozen=True, slots=True)
class Failed(Event):
    """Terminal: the session cannot succeed.

    ``code`` is the TSP status (None when no code applies, e.g. a malformed reply);
    ``from_server`` is False when the client decided, e.g. an unadvertised mechanism (300) or
    tunnel type (303), a bad rspauth or an unusable offer.
    """

    code: int | None
    text: str
    from_server: bool = True


# --------------------------------------------------------------------------------------------
# The create document
# --------------------------------------------------------------------------------------------


def _address_of(value: str) -> Address:
    """An ``<address>`` with the type its text implies: IPv4, IPv6, else a DNS name."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return Address(AddressType.DN, value)
    return Address(AddressType.IPV4 if ip.version == 4 else AddressType.IPV6, str(ip))


def build_request(
    tunnel_type: TunnelType | str,
    *,
    client_ipv4: str | None = None,
    client_ipv6: str | None = None,
    keepalive: int | None = 30,
    prefix_length: int | None = None,
    dns_servers: tuple[str, ...] = (),
    proxy: bool = False,
) -> Tunnel:
    """The ``create`` document gogoc sends (tsp.md §2.5).

    Args:
        tunnel_type: what to ask for; v6anyv4 lets the broker choose.
        client_ipv4: our IPv4 endpoint (the v6-over-v4 types); the broker compares it with
            the packet source for NAT discovery.
        client_ipv6: our IPv6 endpoint (v4v6).
        keepalive: requested interval in seconds; None or 0: no keepalive block.
        prefix_length: router mode: the delegated prefix length asked for (0: the broker's
            default); None: host mode.
        dns_servers: names or addresses for reverse delegation of the prefix (router mode).
        proxy: gogoc's ``proxy_client``: ``proxy="yes"`` asks for no NAT traversal.

    Raises:
        ValueError: nameservers without router mode, or a prefix length out of 0..128.
    """
    tt = TunnelType(tunnel_type)
    addresses: list[Address] = []
    if client_ipv4 is not None:
        addresses.append(Address(AddressType.IPV4, client_ipv4))
    if client_ipv6 is not None:
        addresses.append(Address(AddressType.IPV6, client_ipv6))
    ka = None
    if keepalive:
        # gogoc asks with the unspecified address; v4v6 keepalives are IPv4, so no address.
        ka_addr = None if tt is TunnelType.V4V6 else Address(AddressType.IPV6, "::")
        ka = Keepalive(int(keepalive), ka_addr)
    router = None
    if prefix_length is not None:
        if not 0 <= prefix_length <= 128:
            raise ValueError(f"prefix length {prefix_length} not in 0..128")
        router = Router(Prefix(prefix_length), tuple(_address_of(d) for d in dns_servers))
    elif dns_servers:
        raise ValueError("nameservers for reverse delegation need router mode")
    return Tunnel(
        action=Action.CREATE,
        type=tt,
        proxy=proxy,
        client=Endpoint(addresses=tuple(addresses), keepalive=ka, router=router),
    )


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


class ClientState(Enum):
    IDLE = auto()
    #: VERSION sent: CAPABILITY or a status line comes next.
    VERSION = auto()
    #: ANONYMOUS or PLAIN sent: the status line comes next.
    AUTH_STATUS = auto()
    DIGEST_CHALLENGE = auto()
    DIGEST_RSPAUTH = auto()
    #: rspauth checked: ``200 Success`` comes next (on UDP after a probe).
    DIGEST_STATUS = auto()
    #: A 1000+ status line arrived unframed: its ``<tunnel>`` broker list follows.
    REFERRAL = auto()
    #: The create request was sent: a Content-length reply comes next.
    REPLY = auto()
    ESTABLISHED = auto()
    CLOSED = auto()


_TERMINAL = frozenset({ClientState.ESTABLISHED, ClientState.CLOSED})
# States in which the peer sends lines (everything before the command phase).
_LINE_STATES = frozenset(
    {
        ClientState.VERSION,
        ClientState.AUTH_STATUS,
        ClientState.DIGEST_CHALLENGE,
        ClientState.DIGEST_RSPAUTH,
        ClientState.DIGEST_STATUS,
    }
)


def _is_status(line: bytes) -> bool:
    return _STATUS_RE.fullmatch(line) is not None


def _type_offered(wanted: TunnelType, offered: tuple[TunnelType, ...]) -> bool:
    # tsp.md §2.4: "either type satisfies v6anyv4".
    if wanted is TunnelType.V6ANYV4:
        return bool({TunnelType.V6ANYV4, TunnelType.V6V4, TunnelType.V6UDPV4} & set(offered))
    return wanted in offered


class ClientSession:
    """One TSP negotiation, client side. See the module docstring."""

    def __init__(
        self,
        *,
        transport: Transport | str,
        request: Tunnel,
        version: str = DEFAULT_VERSION,
        mechanism: str = "ANONYMOUS",
        username: str | None = None,
        password: str | None = None,
        cnonce: str = "",
        server_host: str = "",
        idle_timeout: float | None = None,
    ) -> None:
        """Args:
        transport: ``"tcp"``/``"udp"`` (or :class:`Transport`).
        request: the ``create`` document (:func:`build_request`).
        version: sent in ``VERSION=``; 1.x sessions send no ``accept``.
        mechanism: ANONYMOUS, PLAIN, DIGEST-MD5 or ANY (DIGEST-MD5, else PLAIN).
        username, password: the account; needed by every mechanism but ANONYMOUS.
        cnonce: a fresh DIGEST-MD5 client nonce (gogoc uses the Unix time).
        server_host: the server as the user named it: DIGEST-MD5's ``digest-uri`` is
            ``tsp/<server_host>``.
        idle_timeout: fail when the server is silent this long (seconds); None: never.

        Raises:
            LocalProtocolError: an unknown mechanism or transport, a request that is not a
                typed ``create``, or missing credentials.
        """
        try:
            self.transport = Transport(
                transport.value if isinstance(transport, Transport) else transport.lower()
            )
        except ValueError:
            raise LocalProtocolError(f"unknown transport {transport!r}") from None
        mech = mechanism.upper()
        if mech not in MECHANISMS:
            raise LocalProtocolError(f"unknown SASL mechanism {mechanism!r}")
        if mech != "ANONYMOUS" and (not username or not password):
            raise LocalProtocolError(f"{mech} needs a username and a password")
        if mech in ("DIGEST-MD5", ANY) and (not cnonce or not server_host):
            raise LocalProtocolError("DIGEST-MD5 needs a cnonce and the server host")
        if request.action is not Action.CREATE or request.type is None:
            raise LocalProtocolError("the request must be a create with a tunnel type")
        self.request = request
        self.version = version
        self.requested_mechanism = mech
        self._username = username
        self._password = password
        self._cnonce = cnonce
        self._server_host = server_host
        self._idle_timeout = idle_timeout
        self.state = ClientState.IDLE
        #: The server's CAPABILITY, once received.
        self.capability: framing.Capability | None = None
        #: The mechanism actually used, once chosen.
        self.mechanism: str | None = None
        #: The validated offer, once established.
        self.offer: Tunnel | None = None
        self._reader = framing.MessageReader(_MAX_MESSAGE)
        self._digest: digest_md5.DigestClient | None = None
        self._events: deque[Event] = deque()
        self._writes: list[bytes] = []
        # UDP: messages handed out whose reply datagram has not arrived yet.
        self._unanswered = 0
        self._last_activity: float | None = None
        # A 1000+ status line waiting for its unframed broker list.
        self._referral: tuple[int, str] | None = None
        self._handlers: dict[ClientState, Callable[[bytes], None]] = {
            ClientState.VERSION: self._on_version_reply,
            ClientState.AUTH_STATUS: self._on_auth_status,
            ClientState.DIGEST_CHALLENGE: self._on_challenge,
            ClientState.DIGEST_RSPAUTH: self._on_rspauth,
            ClientState.DIGEST_STATUS: self._on_auth_status,
        }

    # ---------------------------------------------------------------- public API

    @property
    def done(self) -> bool:
        """True once a terminal event has been queued."""
        return self.state in _TERMINAL

    def initiate(self, now: float = 0.0) -> None:
        """Queue ``VERSION=<version>``; the first thing said on a new flow."""
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError("initiate() called twice")
        self._last_activity = now
        self._writes.append(framing.encode_version(self.version))
        self.state = ClientState.VERSION

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed what arrived: a TCP chunk, or one UDP reply's payload (``b""`` for a bare ack)."""
        if self.state in _TERMINAL or self.state is ClientState.IDLE:
            return
        self._last_activity = now
        if self.transport is Transport.UDP:
            self._receive_datagram(data)
        else:
            self._reader.feed(data)
            self._drain()

    def receive_eof(self, now: float) -> None:
        """The server closed the connection (TCP)."""
        if self.state in _TERMINAL or self.state is ClientState.IDLE:
            return
        if self.state is ClientState.REFERRAL:
            self._finish_referral(self._reader.take_rest())
            return
        self._fail(None, f"the server closed the connection ({self._stage()})", from_server=True)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> list[bytes]:
        """Messages to send, in order; each is one write (TCP) or one datagram (UDP).

        On UDP an empty message is a header-only probe ("what now?").
        """
        out, self._writes = self._writes, []
        self._unanswered += len(out)
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called, or None."""
        if self._idle_timeout is None or self._last_activity is None or self.done:
            return None
        return self._last_activity + self._idle_timeout

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is not None and now >= timer:
            self._fail(None, f"no answer from the server ({self._stage()})", from_server=False)

    # ---------------------------------------------------------------- input plumbing

    def _receive_datagram(self, payload: bytes) -> None:
        if self._unanswered > 0:
            self._unanswered -= 1
        if payload:
            if not payload.rstrip(b"\0").endswith(b"\n") and self._expects_line(payload):
                # One datagram is one message even without its line end.
                payload += b"\r\n"
            self._reader.feed(payload)
            self._drain()
            if self.state is ClientState.REFERRAL:
                # The broker list came in this datagram or not at all.
                self._finish_referral(self._reader.take_rest())
            elif self.state in _LINE_STATES and self._reader.pending():
                # Nothing carries over between datagrams except a split framed reply.
                self._reader.take_rest()
        if not self.done and self._unanswered == 0 and not self._writes:
            # Waiting with nothing in flight: ask for the rest (gogoc's header-only read).
            self._writes.append(b"")

    def _expects_line(self, payload: bytes) -> bool:
        if self.state in _LINE_STATES:
            return True
        # In the command phase only a bare status line (no Content-length) is a line.
        head = payload.lstrip(_JUNK)[: len(_CONTENT_LENGTH)].lower()
        return (
            self.state is ClientState.REPLY
            and not self._reader.in_body
            and head != (_CONTENT_LENGTH)
        )

    def _drain(self) -> None:
        try:
            while not self.done:
                if self.state is ClientState.REFERRAL:
                    self._scan_referral()
                    return
                if self.state is ClientState.REPLY:
                    if not self._next_reply():
                        return
                    continue
                line = self._reader.next_line()
                if line is None:
                    return
                line = framing.strip_nuls(line)
                if line:
                    self._handlers[self.state](line)
        except DecodeError as e:
            self._fail(None, f"malformed reply from the server: {e}", from_server=True)

    def _next_reply(self) -> bool:
        """Handle one framed reply (or an unframed status line); False if incomplete."""
        if not self._reader.in_body:
            head = self._reader.peek().lstrip(_JUNK)
            if not head:
                self._reader.take_rest()
                return False
            probe = head[: len(_CONTENT_LENGTH)].lower()
            if not _CONTENT_LENGTH.startswith(probe):
                # Some servers answer errors with a bare status line (and maybe a list).
                line = self._reader.next_line()
                if line is None:
                    return False
                code, text = framing.parse_status_line(line)
                self._on_status(code, text)
                return True
        body = self._reader.next_content()
        if body is None:
            return False
        self._on_reply(framing.parse_reply(body))
        return True

    # ---------------------------------------------------------------- per-state handlers

    # CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5 ... (tsp.md §2.4): exactly that
    # prefix, case-sensitive, as gogoc checks; anything else is read as a status.
    def _on_version_reply(self, line: bytes) -> None:
        if line == b"CAPABILITY" or line.startswith(b"CAPABILITY "):
            self._on_capability(framing.parse_capability(line))
            return
        if not _is_status(line):
            raise DecodeError(f"expected CAPABILITY, got {line[:40]!r}")
        code, text = framing.parse_status_line(line)
        if code == StatusCode.UNSUPPORTED_CLIENT_VERSION:
            self.state = ClientState.CLOSED
            self._events.append(VersionRejected(self.version, code, text))
            return
        self._on_status(code, text)

    def _on_capability(self, cap: framing.Capability) -> None:
        self.capability = cap
        self._events.append(CapabilityReceived(cap))
        assert self.request.type is not None
        if not _type_offered(self.request.type, cap.tunnel_types):
            offered = " ".join(t.value for t in cap.tunnel_types) or "none"
            self._fail(
                StatusCode.UNSUPPORTED_TUNNEL_TYPE,
                f"the server does not offer tunnel type {self.request.type.value} "
                f"(it offers: {offered})",
                from_server=False,
            )
            return
        mech = self._choose_mechanism(cap.mechanisms)
        if mech is None:
            offered = " ".join(cap.mechanisms) or "none"
            wanted = (
                "DIGEST-MD5 or PLAIN"
                if self.requested_mechanism == ANY
                else self.requested_mechanism
            )
            self._fail(
                StatusCode.AUTHENTICATION_FAILED,
                f"the server does not offer {wanted} (it offers: {offered})",
                from_server=False,
            )
            return
        self.mechanism = mech
        # gogoc ends every AUTHENTICATE line with a NUL (tsp.md §2.4); servers expect it.
        self._writes.append(f"AUTHENTICATE {mech}\r\n\0".encode("ascii"))
        if mech == "ANONYMOUS":
            self.state = ClientState.AUTH_STATUS
        elif mech == "PLAIN":
            assert self._username is not None and self._password is not None
            # Raw, not base64, as its own message, without waiting (tsp.md §2.4).
            try:
                self._writes.append(plain.encode_plain(self._username, self._password))
            except ValueError as e:
                self._fail(None, f"PLAIN: {e}", from_server=False)
                return
            self.state = ClientState.AUTH_STATUS
        else:
            assert self._username is not None and self._password is not None
            self._digest = digest_md5.DigestClient(
                self._username, self._password, self._cnonce, host=self._server_host
            )
            self.state = ClientState.DIGEST_CHALLENGE

    def _choose_mechanism(self, offered: tuple[str, ...]) -> str | None:
        if self.requested_mechanism == ANY:
            return next((m for m in _ANY_ORDER if m in offered), None)
        return self.requested_mechanism if self.requested_mechanism in offered else None

    def _on_auth_status(self, line: bytes) -> None:
        if not _is_status(line):
            raise DecodeError(f"expected a status line, got {line[:40]!r}")
        code, text = framing.parse_status_line(line)
        if code != StatusCode.SUCCESS:
            self._on_status(code, text)
            return
        assert self.mechanism is not None
        self._events.append(Authenticated(self.mechanism))
        self._writes.append(framing.encode_request(codec.tunnel_to_xml(self.request)))
        self.state = ClientState.REPLY

    def _on_challenge(self, line: bytes) -> None:
        if _is_status(line):
            self._on_status(*framing.parse_status_line(line))
            return
        assert self._digest is not None
        try:
            response = self._digest.respond(digest_md5.decode_b64_line(line))
        except SaslError as e:
            self._fail(None, f"DIGEST-MD5: unusable challenge: {e}", from_server=False)
            return
        self._writes.append(digest_md5.encode_b64_line(response))
        self.state = ClientState.DIGEST_RSPAUTH

    def _on_rspauth(self, line: bytes) -> None:
        if _is_status(line):
            code, text = framing.parse_status_line(line)
            if code == StatusCode.SUCCESS:
                # Success without proof that the server knows our secret: it may be an
                # impostor (gogoc crashes here; we refuse).
                self._fail(None, "DIGEST-MD5: the server sent no rspauth", from_server=False)
            else:
                self._on_status(code, text)
            return
        assert self._digest is not None
        try:
            self._digest.check_rspauth(digest_md5.decode_b64_line(line))
        except SaslError as e:
            self._fail(
                None,
                f"DIGEST-MD5: the server failed mutual authentication: {e}",
                from_server=False,
            )
            return
        # TCP: 200 Success follows as a separate write, maybe already buffered. UDP: it may
        # sit in this datagram (ddtb) or come as the answer to a probe (tsp.md §2.4).
        self.state = ClientState.DIGEST_STATUS

    # Reply framing (tsp.md §2.5): Content-length: N / status line / XML.
    def _on_reply(self, reply: framing.Reply) -> None:
        if reply.code != StatusCode.SUCCESS:
            if reply.code > REFERRAL_OFFSET:
                self._finish_referral(reply.xml, (reply.code, reply.text))
            else:
                self._fail(reply.code, reply.text or _code_text(reply.code), from_server=True)
            return
        try:
            offer = codec.tunnel_from_xml(reply.xml, _MAX_MESSAGE)
        except DecodeError as e:
            self._reject(f"the server's offer is not a valid tunnel document: {e}")
            return
        problem, chosen = self._check_offer(offer)
        if problem is not None or chosen is None:
            self._reject(f"the server's offer is unusable: {problem}")
            return
        self.offer = offer
        if not self.version.startswith("1."):
            self._writes.append(framing.encode_request(codec.tunnel_to_xml(Tunnel(Action.ACCEPT))))
        self.state = ClientState.ESTABLISHED
        self._events.append(Established(offer, chosen))

    def _on_status(self, code: int, text: str) -> None:
        """A non-success status at any stage: a referral, or a failure."""
        if code > REFERRAL_OFFSET:
            self._referral = (code, text)
            self.state = ClientState.REFERRAL
            self._scan_referral()
            return
        self._fail(code, text or _code_text(code), from_server=True)

    def _scan_referral(self) -> None:
        buffered = self._reader.peek()
        m = _TUNNEL_END_RE.search(buffered)
        if m is not None:
            self._reader.take_rest()
            self._finish_referral(buffered[: m.end()])
        elif len(buffered) > _MAX_MESSAGE:
            self._fail(None, "the server's broker list is too long", from_server=True)

    def _finish_referral(self, xml: bytes, status: tuple[int, str] | None = None) -> None:
        status = status or self._referral
        assert status is not None
        code, text = status
        start = xml.find(b"<")
        brokers: tuple[Address, ...] = ()
        if start >= 0:
            try:
                brokers = codec.tunnel_from_xml(xml[start:].strip(_JUNK), _MAX_MESSAGE).brokers
            except DecodeError as e:
                self._fail(code, f"{text} (unreadable broker list: {e})", from_server=True)
                return
        if not brokers:
            self._fail(code, f"{text} (a referral without brokers)", from_server=True)
            return
        self.state = ClientState.CLOSED
        self._events.append(Redirected(code, brokers, text))

    # ---------------------------------------------------------------- offer validation

    def _check_offer(self, offer: Tunnel) -> tuple[str | None, TunnelType | None]:
        """gogoc's "bad tunnel parameters" checks (tsp.md §2.5), plus type consistency."""
        if offer.action is not Action.INFO:
            return f"action is {offer.action.value}, not info", None
        wanted = self.request.type
        assert wanted is not None
        chosen = offer.type or wanted
        if wanted is TunnelType.V6ANYV4:
            if chosen not in (TunnelType.V6V4, TunnelType.V6UDPV4):
                return f"v6anyv4 was answered with type {chosen.value}", None
        elif chosen is not wanted:
            return f"asked for {wanted.value}, offered {chosen.value}", None
        if chosen is TunnelType.V6UDPV4 and self.transport is not Transport.UDP:
            # Its data would be written into the TCP stream (tsp.md §2.5).
            return "v6udpv4 offered on a TCP session", None
        for side, endpoint in (("server", offer.server), ("client", offer.client)):
            if endpoint is None:
                return f"no <{side}> element", None
            for kind in (AddressType.IPV4, AddressType.IPV6):
                addr = endpoint.address(kind)
                if addr is None:
                    return f"no {side} {kind.value} address", None
                problem = _bad_address(addr)
                if problem:
                    return f"{side} {problem}", None
        assert offer.client is not None
        ka = offer.client.keepalive
        if ka is not None and ka.address is not None:
            problem = _bad_address(ka.address)
            if problem:
                return f"keepalive {problem}", None
        for resolver in offer.client.dns_servers:
            problem = _bad_address(resolver)
            if problem:
                return f"dns_server {problem}", None
        requested = self.request.client
        wants_prefix = requested is not None and requested.router is not None
        router = offer.client.router
        if router is not None and router.prefix is not None:
            prefix = router.prefix
            if prefix.value is None:
                return "prefix without a value", None
            try:
                ipaddress.IPv6Network(f"{prefix.value}/{prefix.length}", strict=False)
            except ValueError:
                return f"invalid prefix {prefix.value}/{prefix.length}", None
        elif wants_prefix:
            return "router mode was requested but no prefix was delegated", None
        return None, chosen

    def _reject(self, reason: str) -> None:
        # Tell the broker at once so it frees what it reserved (gogoc just disconnects).
        if not self.version.startswith("1."):
            self._writes.append(framing.encode_request(codec.tunnel_to_xml(Tunnel(Action.REJECT))))
        self._fail(None, reason, from_server=False)

    # ---------------------------------------------------------------- helpers

    def _fail(self, code: int | None, text: str, *, from_server: bool) -> None:
        if self.state in _TERMINAL:
            return
        self.state = ClientState.CLOSED
        self._events.append(Failed(code, text, from_server))

    def _stage(self) -> str:
        return {
            ClientState.VERSION: "waiting for CAPABILITY",
            ClientState.AUTH_STATUS: "during authentication",
            ClientState.DIGEST_CHALLENGE: "waiting for the DIGEST-MD5 challenge",
            ClientState.DIGEST_RSPAUTH: "waiting for the DIGEST-MD5 rspauth",
            ClientState.DIGEST_STATUS: "waiting for the DIGEST-MD5 status",
            ClientState.REFERRAL: "reading a broker list",
            ClientState.REPLY: "waiting for the tunnel offer",
        }.get(self.state, self.state.name.lower())


def _bad_address(addr: Address) -> str | None:
    """Why an IPv4/IPv6 address value is unusable, or None (DNS names pass)."""
    try:
        if addr.type is AddressType.IPV4:
            ipaddress.IPv4Address(addr.value)
        elif addr.type is AddressType.IPV6:
            ipaddress.IPv6Address(addr.value)
    except ValueError:
        return f"{addr.type.value} address {addr.value!r} is invalid"
    return None


def _code_text(code: int) -> str:
    try:
        return StatusCode(code).text
    except ValueError:
        return f"status {code}"
