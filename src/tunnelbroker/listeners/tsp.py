"""asyncio listeners for TSP on TCP and UDP (port 3653), around the sans-IO session machine.

The listener feeds bytes in, answers the machine's decision events with the broker and the
accounts, and writes what the machine queued. Password checks (argon2) and account look-ups run
in worker threads so the event loop keeps serving other sessions meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from tunnelbroker.broker.model import BrokerError, Requester
from tunnelbroker.broker.service import Broker, Offer
from tunnelbroker.broker.users import UserService
from tunnelbroker.listeners.tsp_mapping import REFUSAL_CODES, family_of, to_offer, to_request
from tunnelbroker.listeners.udp_endpoint import PktinfoEndpoint, UdpReader
from tunnelbroker.protocols.tsp import framing
from tunnelbroker.protocols.tsp.errors import DecodeError, RemoteProtocolError, StatusCode
from tunnelbroker.protocols.tsp.events import (
    Authenticated,
    DigestAuthRequested,
    ErrorSent,
    PlainAuthRequested,
    SessionClosed,
    SessionRestarted,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
)
from tunnelbroker.protocols.tsp.messages import Action, TunnelType
from tunnelbroker.protocols.tsp.reliable import Disposition, ReliableUdpServer
from tunnelbroker.protocols.tsp.server import ServerSession, ServerSettings, Transport
from tunnelbroker.store.records import TunnelRecord

log = logging.getLogger(__name__)

#: Pause between the separate writes of one answer on TCP (gogoc reads each with one recv()).
_WRITE_GAP = 0.02


@dataclass(eq=False)
class SessionContext:
    """What the listener knows about one session beyond the machine's own state."""

    session: ServerSession
    peer: tuple[str, int]
    transport: str
    send_writes: Callable[[list[bytes]], None]
    on_closed: Callable[[], None]
    user_id: int | None = None
    user_name: str | None = None
    offered: Offer | None = None
    tunnel: TunnelRecord | None = None
    admitted: bool = True
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def requester(self) -> Requester:
        return Requester(self.user_id, self.user_name, self.peer[0], self.peer[1], self.transport)


class TspService:
    """The decisions behind every TSP session: accounts and the broker."""

    def __init__(
        self,
        broker: Broker,
        users: UserService,
        settings: ServerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.users = users
        self.settings = settings
        self.clock = clock
        self.offered_types: tuple[TunnelType, ...] = settings.tunnel_types + (
            (TunnelType.V6ANYV4,)
            if {TunnelType.V6V4, TunnelType.V6UDPV4} & set(settings.tunnel_types)
            else ()
        )
        self.sessions_started = 0
        self.sessions_refused = 0
        self.tunnels_accepted = 0
        self.errors_sent: dict[int, int] = {}

    def new_session(self, transport: Transport, ipv6: bool) -> ServerSession:
        return ServerSession(
            self.settings,
            transport=transport,
            ipv6_session=ipv6,
            nonce=secrets.token_hex(16),
            now=time.monotonic(),
        )

    def pump(self, ctx: SessionContext) -> None:
        """Handle every queued event, then hand the queued writes to the connection."""
        session = ctx.session
        while (ev := session.next_event()) is not None:
            if isinstance(ev, PlainAuthRequested):
                self._spawn(ctx, self._check_plain(ctx, ev))
            elif isinstance(ev, DigestAuthRequested):
                self._spawn(ctx, self._check_digest(ctx, ev))
            elif isinstance(ev, Authenticated):
                log.info(
                    "tsp %s: authenticated %s as %s",
                    _peer(ctx),
                    ev.mechanism,
                    ev.username or "anonymous",
                )
            elif isinstance(ev, TunnelRequested):
                self._on_request(ctx, ev)
            elif isinstance(ev, TunnelAccepted):
                self._on_accept(ctx)
            elif isinstance(ev, TunnelRejected) or isinstance(ev, SessionRestarted):
                if ctx.offered is not None:
                    self.broker.abandon(ctx.offered)
                    ctx.offered = None
            elif isinstance(ev, ErrorSent):
                self.errors_sent[ev.code] = self.errors_sent.get(ev.code, 0) + 1
                log.info("tsp %s: sent %d (%s)", _peer(ctx), ev.code, ev.reason)
            elif isinstance(ev, SessionClosed):
                if ctx.offered is not None:
                    self.broker.abandon(ctx.offered)
                    ctx.offered = None
                log.debug("tsp %s: session closed: %s", _peer(ctx), ev.reason)
        writes = session.data_to_send()
        if writes or not session.awaiting:
            ctx.send_writes(writes)
        if session.closed:
            ctx.on_closed()

    def release(self, ctx: SessionContext) -> None:
        """The connection is gone: undo an unaccepted offer, free the admission slot."""
        for task in list(ctx.tasks):
            task.cancel()
        if ctx.offered is not None:
            self.broker.abandon(ctx.offered)
            ctx.offered = None
        if ctx.admitted:
            ctx.admitted = False
            self.broker.session_finished(ctx.peer[0])

    # ------------------------------------------------------------------ decisions

    def _spawn(self, ctx: SessionContext, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    async def _check_plain(self, ctx: SessionContext, ev: PlainAuthRequested) -> None:
        user = await asyncio.to_thread(self.users.authenticate_plain, ev.username, ev.password)
        if ctx.session.closed:
            return
        if user is not None:
            ctx.user_id, ctx.user_name = user.id, user.name
        ctx.session.complete_plain(user.name if user is not None else None)
        self.pump(ctx)

    async def _check_digest(self, ctx: SessionContext, ev: DigestAuthRequested) -> None:
        found = await asyncio.to_thread(self.users.digest_credentials, ev.username)
        if ctx.session.closed:
            return
        ha1 = None
        if found is not None:
            user, ha1 = found
            ctx.user_id, ctx.user_name = user.id, user.name
        ctx.session.complete_digest(ha1)
        if ctx.session.username is None:
            ctx.user_id = ctx.user_name = None
        self.pump(ctx)

    def _on_request(self, ctx: SessionContext, ev: TunnelRequested) -> None:
        session = ctx.session
        doc = ev.request
        now = self.clock()
        try:
            if doc.action is Action.CREATE:
                if ctx.offered is not None:
                    self.broker.abandon(ctx.offered)
                    ctx.offered = None
                request = to_request(doc, self.offered_types)
                grant, record = self.broker.request(request, ctx.requester(), now)
                ctx.offered = record
                session.offer(to_offer(grant))
            elif doc.action is Action.DELETE:
                self.broker.delete(ctx.requester(), family_of(doc), now)
                ctx.tunnel = None
                session.acknowledge()
            else:
                found = self.broker.find(ctx.requester(), family_of(doc))
                if found is None:
                    session.refuse(StatusCode.SERVER_SIDE_ERROR, "info: no tunnel")
                else:
                    session.offer(to_offer(self.broker.grant_for(found)))
        except RemoteProtocolError as e:
            referral = e.code is StatusCode.UNSUPPORTED_TUNNEL_TYPE
            session.refuse(e.code, str(e), referral=referral)
        except BrokerError as e:
            code, referral = REFUSAL_CODES[e.refusal]
            session.refuse(code, str(e), referral=referral)
        except Exception:
            # A bug in the broker must not take the listener down; the client gets 310.
            log.exception("tsp %s: broker failed on %s", _peer(ctx), doc.action.value)
            session.refuse(StatusCode.SERVER_SIDE_ERROR, "internal error")

    def _on_accept(self, ctx: SessionContext) -> None:
        if ctx.offered is None:
            return
        offer, ctx.offered = ctx.offered, None
        try:
            record = self.broker.commit(offer, self.clock())
        except BrokerError as e:
            # The client believes it has the tunnel; the log says why it has not.
            log.error("tsp %s: accept could not be honoured: %s", _peer(ctx), e)
            return
        ctx.tunnel = record
        self.tunnels_accepted += 1
        if ctx.admitted:
            # Established: no longer a half-open session for admission control.
            ctx.admitted = False
            self.broker.session_finished(ctx.peer[0])
        log.info(
            "tsp %s: tunnel %s up (%s, %s, prefix %s)",
            _peer(ctx),
            record.id,
            record.type,
            record.link_prefix,
            record.delegated_prefix or "-",
        )


def _peer(ctx: SessionContext) -> str:
    host, port = ctx.peer[0], ctx.peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------- UDP


@dataclass(eq=False)
class _UdpPeer:
    reliable: ReliableUdpServer
    ctx: SessionContext
    last_seen: float
    #: Our address the client sent to: replies must come from it (tsp.md §2.3).
    local: str | None = None


class TspUdpProtocol:
    """TSP over UDP: one session per client address and port.

    State is created only for a well-formed header carrying ``VERSION=`` (STYLE.md pattern 8);
    other junk is dropped silently. Datagrams whose first nibble is 6 are IPv6 data of a
    v6udpv4 tunnel and go to ``data_handler`` (the tunnel server), never to the machine.
    """

    def __init__(
        self,
        service: TspService,
        ipv6: bool,
        data_handler: Callable[[bytes, tuple[str, int]], None] | None = None,
    ) -> None:
        self.service = service
        self.ipv6 = ipv6
        self.data_handler = data_handler
        self.peers: dict[tuple[str, int], _UdpPeer] = {}
        self.transport: PktinfoEndpoint | None = None
        self.dropped = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: PktinfoEndpoint) -> None:
        self.transport = transport
        self._schedule_sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for peer in list(self.peers.values()):
            self.service.release(peer.ctx)
        self.peers.clear()

    def datagram_received_on(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        if not data:
            return
        first = data[0] >> 4
        if first == 6:
            if self.data_handler is not None:
                self.data_handler(data, addr)
            else:
                self.dropped += 1
            return
        if first != 0xF:
            self.dropped += 1
            return
        peer = self.peers.get(addr)
        now = time.monotonic()
        if peer is None or (peer.ctx.session.closed and _is_version(data)):
            if not _is_version(data):
                self.dropped += 1
                return
            peer = self._new_peer(addr, now, peer, data, local)
            if peer is None:
                return
        try:
            received = peer.reliable.receive(data)
            if received.disposition is Disposition.DROP and _is_version(data):
                pending = peer.reliable.pending
                header = received.header
                if pending is None or header is None or pending.seq != header.seq:
                    # A VERSION with an older sequence number is a new client socket on the
                    # same address and port (gogoc restarts at 240; a NAT reuses the port):
                    # a new session, not a stray.
                    fresh = self._new_peer(addr, now, peer, data, local)
                    if fresh is None:
                        return
                    peer = fresh
                    received = peer.reliable.receive(data)
        except DecodeError:
            self.dropped += 1
            return
        peer.last_seen = now
        if received.disposition is Disposition.RESEND:
            self._sendto(received.reply, addr, peer.local)
            return
        if received.disposition is Disposition.DROP:
            return
        peer.ctx.session.receive_data(received.payload, now)
        self.service.pump(peer.ctx)

    def _new_peer(
        self,
        addr: tuple[str, int],
        now: float,
        replacing: _UdpPeer | None,
        data: bytes,
        local: str | None,
    ) -> _UdpPeer | None:
        if replacing is not None:
            self._forget(addr)
        if not self.service.broker.admit_session(addr[0], now):
            self.service.sessions_refused += 1
            # A stateless 530 (gogoc waits and retries), smaller than the VERSION it answers
            # so the port cannot amplify a spoofed flood.
            self._sendto(data[: framing.HEADER_SIZE] + b"530\r\n", addr, local)
            return None
        self.service.sessions_started += 1
        session = self.service.new_session(Transport.UDP, self.ipv6)
        reliable = ReliableUdpServer()

        def send(writes: list[bytes]) -> None:
            if reliable.pending is not None:
                self._sendto(reliable.reply(b"".join(writes)), addr, local)

        ctx = SessionContext(session, addr, "udp", send, lambda: None)
        peer = _UdpPeer(reliable, ctx, now, local)
        self.peers[addr] = peer
        return peer

    def _sendto(self, datagram: bytes, addr: tuple[str, int], local: str | None) -> None:
        if self.transport is not None:
            self.transport.sendto(datagram, addr, local)

    def _forget(self, addr: tuple[str, int]) -> None:
        peer = self.peers.pop(addr, None)
        if peer is not None:
            self.service.release(peer.ctx)

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(0.5, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        idle = self.service.settings.idle_timeout
        for addr, peer in list(self.peers.items()):
            session = peer.ctx.session
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timer(now)
                self.service.pump(peer.ctx)
            if session.closed or not self._worth_keeping(addr, peer, now - peer.last_seen > idle):
                self._forget(addr)
        self._schedule_sweep()

    @staticmethod
    def _worth_keeping(addr: tuple[str, int], peer: _UdpPeer, idle: bool) -> bool:
        """Keep a peer while it negotiates, or while it is the live flow of a v6udpv4 tunnel.

        Anything else is dropped once idle, so that memory follows live tunnels, not the
        number of sessions ever seen: a client that re-signals from a new port leaves its
        old peer behind, and that one goes as soon as the tunnel has moved on.
        """
        t = peer.ctx.tunnel
        if t is None:
            return not idle
        if t.state != "active":
            return False
        if t.type == "v6udpv4":
            return (t.client_ipv4, t.client_port) == addr
        return not idle


def _is_version(datagram: bytes) -> bool:
    return datagram[framing.HEADER_SIZE :].lstrip(b"\0 \r\n")[:8].upper() == b"VERSION="


# ---------------------------------------------------------------------- TCP


class TspTcpProtocol(asyncio.Protocol):
    """TSP over TCP: one session per connection."""

    def __init__(self, service: TspService, ipv6: bool) -> None:
        self.service = service
        self.ipv6 = ipv6
        self.transport: asyncio.Transport | None = None
        self.ctx: SessionContext | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._queue: list[bytes] = []
        self._flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        peer = (str(peername[0]), int(peername[1]))
        now = time.monotonic()
        if not self.service.broker.admit_session(peer[0], now):
            self.service.sessions_refused += 1
            self.transport.write(StatusCode.SERVER_TOO_BUSY.to_line().encode() + b"\r\n")
            self.transport.close()
            return
        self.service.sessions_started += 1
        session = self.service.new_session(Transport.TCP, self.ipv6)
        self.ctx = SessionContext(session, peer, "tcp", self._send, self._closed)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.ctx is None:
            return
        self.ctx.session.receive_data(data, time.monotonic())
        self.service.pump(self.ctx)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.ctx is not None:
            self.service.release(self.ctx)
            self.ctx = None

    def _send(self, writes: list[bytes]) -> None:
        self._queue.extend(w for w in writes if w)
        if not self._flushing:
            self._flush()

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing() and not self._queue:
            self._flushing = False
            return
        if not self._queue:
            self._flushing = False
            if self.ctx is not None and self.ctx.session.closed:
                self.transport.close()
            return
        self.transport.write(self._queue.pop(0))
        self._flushing = True
        if self._queue:
            asyncio.get_running_loop().call_later(_WRITE_GAP, self._flush)
        else:
            self._flush()

    def _closed(self) -> None:
        if not self._flushing and self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.ctx is None:
            return
        at = self.ctx.session.get_timer()
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        if self.ctx is None:
            return
        self.ctx.session.handle_timer(time.monotonic())
        self.service.pump(self.ctx)
        self._arm()


# ---------------------------------------------------------------------- sockets


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer; returns what the kernel granted.

    A burst of thousands of clients signalling at once (a PoP coming back, a reconnect storm)
    overflows the default ~200 KiB UDP buffer and every lost datagram costs its client a
    retransmission timeout. As root SO_RCVBUFFORCE passes net.core.rmem_max.
    """
    if size <= 0:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2  # Linux doubles it
    if granted < size:
        log.warning(
            "UDP receive buffer is %d bytes, not the %d asked for: raise net.core.rmem_max",
            granted,
            size,
        )
    return granted


def bind_socket(host: str, port: int, kind: int) -> socket.socket:
    """A bound socket; IPv6 ones are v6-only so ``0.0.0.0`` and ``::`` can share a port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # TIME_WAIT must not block a restart. Not for UDP: there Linux would let a second
            # broker bind the same port and silently split the traffic.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_tsp(
    service: TspService,
    hosts: list[str],
    port: int,
    data_handler: Callable[[bytes, tuple[str, int]], None] | None = None,
    receive_buffer: int = 0,
    udp_reader: UdpReader | None = None,
) -> tuple[list[PktinfoEndpoint], list[asyncio.Server], int]:
    """Start UDP and TCP listeners on every host; returns them and the port for shutdown.

    ``udp_reader`` (the tunnel server's fast path) may take over reading the UDP sockets: it
    forwards v6udpv4 data itself and hands signalling back (see PktinfoEndpoint).

    Port 0 picks a free port (for tests): the first UDP socket's, then used everywhere; if
    that number is taken for TCP or on another address, another is tried. On failure nothing
    stays bound.
    """
    attempts = 20 if port == 0 else 1
    for attempt in range(attempts):
        try:
            return await _start_tsp_once(
                service, hosts, port, data_handler, receive_buffer, udp_reader
            )
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def _start_tsp_once(
    service: TspService,
    hosts: list[str],
    port: int,
    data_handler: Callable[[bytes, tuple[str, int]], None] | None,
    receive_buffer: int,
    udp_reader: UdpReader | None = None,
) -> tuple[list[PktinfoEndpoint], list[asyncio.Server], int]:
    loop = asyncio.get_running_loop()
    udp: list[PktinfoEndpoint] = []
    tcp: list[asyncio.Server] = []
    try:
        for host in hosts:
            ipv6 = ":" in host
            usock = bind_socket(host, port, socket.SOCK_DGRAM)
            try:
                set_receive_buffer(usock, receive_buffer)
                port = usock.getsockname()[1]
                protocol = TspUdpProtocol(service, ipv6, data_handler)
                # With a tunnel server, v6udpv4 data is read off the event loop (see
                # PktinfoEndpoint); the protocol then only ever sees signalling.
                endpoint = PktinfoEndpoint(
                    usock, protocol, data_sink=data_handler, reader=udp_reader
                )
            except BaseException:
                usock.close()
                raise
            protocol.connection_made(endpoint)
            udp.append(endpoint)
            tsock = bind_socket(host, port, socket.SOCK_STREAM)
            try:
                server = await loop.create_server(
                    functools.partial(TspTcpProtocol, service, ipv6), sock=tsock, backlog=1024
                )
            except BaseException:
                tsock.close()
                raise
            tcp.append(server)
    except BaseException:
        for endpoint in udp:
            endpoint.close()
        for server in tcp:
            server.close()
        raise
    return udp, tcp, port
