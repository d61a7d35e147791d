"""Negotiate a tunnel with a TSP broker (RFC 5572) over asyncio, like gogoc but better.

:func:`negotiate` drives :class:`~tunnelbroker.protocols.tsp.client.ClientSession` (the
protocol) over real sockets, with :class:`~tunnelbroker.protocols.tsp.reliable_client.
ReliableUdpClient` on UDP. What it does around the machine, and why:

* **Transport.** ``auto`` tries reliable UDP first and falls back to TCP when UDP gets no
  answer at all or an ICMP port unreachable (``ConnectionRefusedError``), as gogoc does
  (tsp.md §2.2). v6udpv4 is UDP only: its data rides the signalling flow (RFC 5572 Fig. 4).
  v4v6 is signalled over IPv6, every other type over IPv4.
* **Version.** We send ``VERSION=2.0.0``, the version RFC 5572 defines (gogoc starts at its
  private 2.0.2). Only on ``302`` do we retry with 1.0.1, on a fresh socket; v6udpv4 does not
  exist before 2.0.0, so it stops there.
* **Redirects.** A 1000+ code with a broker list makes us try each broker in order (IPv4, IPv6
  or DNS names, on the same port), at most :data:`MAX_REDIRECTS` hops deep. A broker that
  cannot be reached is skipped; one that answers with an error ends the search.
* **NAT discovery.** ``client_ipv4="auto"`` sends the local address of the signalling socket,
  so a broker that sees another source address knows there is a NAT and offers v6udpv4.
* **Errors.** Everything that can go wrong ends in :class:`TspClientError` with the TSP code
  (when there is one) and the server's text; one overall timeout bounds the whole exchange.

The returned :class:`Negotiated` keeps the signalling socket open: a v6udpv4 tunnel carries
its packets on exactly that UDP flow (the NAT mapping the broker saw), and for the other types
gogoc keeps it open as a liveness hint. Call :meth:`Negotiated.close` when done.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunnelbroker.protocols.tsp.client import (
    ANY,
    MECHANISMS,
    ClientSession,
    Established,
    Event,
    Failed,
    Redirected,
    VersionRejected,
    build_request,
)
from tunnelbroker.protocols.tsp.messages import AddressType, Tunnel, TunnelType
from tunnelbroker.protocols.tsp.reliable_client import ReliableUdpClient, RetransmitTimeout

__all__ = [
    "DEFAULT_PORT",
    "MAX_REDIRECTS",
    "Negotiated",
    "TcpFlow",
    "TspClientError",
    "UdpFlow",
    "negotiate",
]

log = logging.getLogger(__name__)

#: IANA port of TSP, TCP and UDP.
DEFAULT_PORT = 3653
#: How many referrals deep we follow (gogoc keeps a list of up to 50 brokers, one level).
MAX_REDIRECTS = 5
#: Versions tried in order; the next one only after a 302 (gogoc: 2.0.2, 2.0.1, 2.0.0, 1.0.1).
VERSIONS = ("2.0.0", "1.0.1")

_TRANSPORTS = ("auto", "udp", "tcp")
# Datagrams kept for the reader of a v6udpv4 flow before new ones are dropped.
_FLOW_QUEUE = 1024
_READ_SIZE = 65536


class TspClientError(Exception):
    """Negotiation failed. ``code`` is the TSP status when there is one (e.g. 300 bad
    credentials, 303 unsupported tunnel type), ``text`` the server's or our explanation."""

    def __init__(self, text: str, code: int | None = None, *, server: str | None = None) -> None:
        self.code = code
        self.text = text
        self.server = server
        where = f"{server}: " if server else ""
        super().__init__(f"{where}{code} {text}" if code is not None else f"{where}{text}")


class _Unreachable(Exception):
    """This broker could not be talked to at all: try the next transport or broker."""


# --------------------------------------------------------------------------------------------
# Flows kept open after negotiation
# --------------------------------------------------------------------------------------------


class _DatagramQueue(asyncio.DatagramProtocol):
    """Datagrams and socket errors of a connected UDP socket, read with ``await get()``."""

    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._error: Exception | None = None
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        #: Datagrams dropped because nobody read them.
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self._items) >= _FLOW_QUEUE:
            self.dropped += 1
            return
        self._items.append(data)
        self._wake()

    def error_received(self, exc: Exception) -> None:
        # On a connected socket an ICMP port unreachable arrives here (ConnectionRefusedError).
        self._error = exc
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes:
        while True:
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            if self._closed:
                raise ConnectionError("the UDP socket is closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


@dataclass(eq=False)
class UdpFlow:
    """The connected UDP socket a negotiation ran on; a v6udpv4 tunnel reuses it."""

    transport: asyncio.DatagramTransport
    protocol: _DatagramQueue
    local: tuple[str, int]
    remote: tuple[str, int]

    def send(self, datagram: bytes) -> None:
        """Send one datagram to the broker (for v6udpv4: a bare IPv6 packet)."""
        self.transport.sendto(datagram)

    async def recv(self) -> bytes:
        """The next datagram from the broker. Raises OSError on ICMP errors."""
        return await self.protocol.get()

    def close(self) -> None:
        self.transport.close()


@dataclass(eq=False)
class TcpFlow:
    """The TCP connection a negotiation ran on (gogoc keeps it as a liveness hint)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    local: tuple[str, int]
    remote: tuple[str, int]

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Negotiated:
    """Everything the broker granted, and the still-open signalling flow."""

    #: The broker that made the offer, as named (after redirects, the referral's address).
    server: str
    #: The address it was reached at, and the port.
    server_address: str
    port: int
    #: ``"udp"`` or ``"tcp"``.
    transport: str
    #: The TSP version the session ran at.
    version: str
    #: The SASL mechanism used.
    mechanism: str
    #: What we asked for and what the broker chose (v6anyv4 becomes v6v4 or v6udpv4).
    requested_type: str
    tunnel_type: str
    #: Tunnel endpoints: outer (v4 for v6v4/v6udpv4) and inner addresses, as offered.
    server_ipv4: str
    server_ipv6: str
    client_ipv4: str
    client_ipv6: str
    #: The local address of the signalling socket.
    local_address: str
    #: The DNS name the broker gave the client, if any.
    client_name: str | None = None
    #: Tunnel lifetime in minutes (RFC 5572 §4.2), if given.
    lifetime: int | None = None
    #: Keepalive interval (s) and where to send the echo requests; None: no keepalive.
    keepalive_interval: int | None = None
    keepalive_address: str | None = None
    #: Router mode: the delegated prefix (network address, compressed) and its length.
    prefix: str | None = None
    prefix_length: int | None = None
    #: Resolvers offered in ``<client><dns_server>``.
    dns_servers: tuple[str, ...] = ()
    #: Nameservers the broker delegates reverse DNS of the prefix to.
    delegation_servers: tuple[str, ...] = ()
    #: Brokers we were referred through, in order.
    redirects: tuple[str, ...] = ()
    #: The offer as received.
    offer: Tunnel | None = field(default=None, repr=False)
    #: The signalling flow, still open (a v6udpv4 tunnel must use it).
    flow: UdpFlow | TcpFlow | None = field(default=None, repr=False)
    #: A SixXS tunnel's own secret (AYIYA signatures, heartbeat MD5), from TIC.
    secret: str | None = field(default=None, repr=False)
    #: The tunnel interface's MTU, where the server says (TIC's ``Tunnel MTU``, already
    #: clamped into 1280..1480); None: 1280.
    mtu: int | None = None
    #: The length of the tunnel link's prefix, where the server says (TIC's ``IPv6
    #: PrefixLength``): the client's address gets it. None: a /128 (/32 for v4v6).
    link_prefix_length: int | None = None

    def close(self) -> None:
        """Close the signalling flow (the broker keeps the tunnel until it expires)."""
        if self.flow is not None:
            self.flow.close()
            self.flow = None

    def to_dict(self) -> dict[str, object]:
        """The parameters as plain JSON-able values (no flow, no raw offer)."""
        return {
            "server": self.server,
            "server_address": self.server_address,
            "port": self.port,
            "transport": self.transport,
            "version": self.version,
            "mechanism": self.mechanism,
            "requested_type": self.requested_type,
            "tunnel_type": self.tunnel_type,
            "server_ipv4": self.server_ipv4,
            "server_ipv6": self.server_ipv6,
            "client_ipv4": self.client_ipv4,
            "client_ipv6": self.client_ipv6,
            "client_name": self.client_name,
            "local_address": self.local_address,
            "lifetime_minutes": self.lifetime,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_address": self.keepalive_address,
            "prefix": self.prefix,
            "prefix_length": self.prefix_length,
            "dns_servers": list(self.dns_servers),
            "delegation_servers": list(self.delegation_servers),
            "redirects": list(self.redirects),
            "mtu": self.mtu,
            "link_prefix_length": self.link_prefix_length,
        }


def _negotiated(
    ev: Established,
    session: ClientSession,
    *,
    server: str,
    address: str,
    port: int,
    local: str,
    redirects: tuple[str, ...],
) -> Negotiated:
    offer = ev.offer
    # ClientSession validated all of these before emitting Established.
    assert offer.server is not None and offer.client is not None
    assert session.mechanism is not None and session.request.type is not None

    def addr(endpoint: Any, kind: AddressType) -> str:
        found = endpoint.address(kind)
        assert found is not None
        return str(ipaddress.ip_address(found.value))

    client = offer.client
    name = client.address(AddressType.DN)
    ka = client.keepalive
    prefix = prefix_length = None
    delegation: tuple[str, ...] = ()
    if client.router is not None:
        delegation = tuple(a.value for a in client.router.dns_servers)
        if client.router.prefix is not None and client.router.prefix.value is not None:
            net = ipaddress.IPv6Network(
                f"{client.router.prefix.value}/{client.router.prefix.length}", strict=False
            )
            prefix, prefix_length = str(net.network_address), net.prefixlen
    return Negotiated(
        server=server,
        server_address=address,
        port=port,
        transport=session.transport.value,
        version=session.version,
        mechanism=session.mechanism,
        requested_type=session.request.type.value,
        tunnel_type=ev.tunnel_type.value,
        server_ipv4=addr(offer.server, AddressType.IPV4),
        server_ipv6=addr(offer.server, AddressType.IPV6),
        client_ipv4=addr(client, AddressType.IPV4),
        client_ipv6=addr(client, AddressType.IPV6),
        local_address=local,
        client_name=name.value if name is not None else None,
        lifetime=offer.lifetime,
        keepalive_interval=ka.interval if ka is not None else None,
        keepalive_address=(
            _canonical(ka.address.value) if ka is not None and ka.address is not None else None
        ),
        prefix=prefix,
        prefix_length=prefix_length,
        dns_servers=tuple(_canonical(a.value) for a in client.dns_servers),
        delegation_servers=delegation,
        redirects=redirects,
        offer=offer,
    )


def _canonical(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class _Options:
    port: int
    transport: str
    tunnel_type: TunnelType
    mechanism: str
    username: str | None
    password: str | None
    client_ipv4: str
    client_ipv6: str
    router: int | None
    dns_servers: tuple[str, ...]
    keepalive: int | None
    proxy: bool
    bind: str | None


# One attempt's terminal outcome, with the flow it ran on when it succeeded.
_Outcome = tuple[Event, ClientSession, "UdpFlow | TcpFlow | None", str]


class _Negotiator:
    def __init__(self, opts: _Options) -> None:
        self.opts = opts
        self.loop = asyncio.get_running_loop()

    # ---------------------------------------------------------------- brokers and redirects

    async def run(self, server: str) -> Negotiated:
        hosts: Sequence[str] = (server,)
        redirects: tuple[str, ...] = ()
        while True:
            result = await self._first_reachable(hosts, redirects)
            if isinstance(result, Negotiated):
                return result
            if len(redirects) >= MAX_REDIRECTS:
                raise TspClientError(
                    f"more than {MAX_REDIRECTS} redirects ({' -> '.join(redirects)})",
                    result.code,
                )
            hosts = [b.value for b in result.brokers]
            log.info("tsp: redirected (%d) to %s", result.code, ", ".join(hosts))
            redirects += (", ".join(hosts),)

    async def _first_reachable(
        self, hosts: Sequence[str], redirects: tuple[str, ...]
    ) -> Negotiated | Redirected:
        last: _Unreachable | None = None
        for host in hosts:
            try:
                return await self._with_host(host, redirects)
            except _Unreachable as e:
                log.info("tsp: %s unreachable: %s", host, e)
                last = e
        assert last is not None
        if len(hosts) > 1:
            raise TspClientError(f"no broker reachable (last: {last})")
        raise TspClientError(str(last), server=hosts[0])

    # ---------------------------------------------------------------- versions and transports

    async def _with_host(self, host: str, redirects: tuple[str, ...]) -> Negotiated | Redirected:
        address = await self._resolve(host)
        opts = self.opts
        if opts.transport == "auto":
            transports = ["udp"] if opts.tunnel_type is TunnelType.V6UDPV4 else ["udp", "tcp"]
        else:
            transports = [opts.transport]
        versions = VERSIONS[:1] if opts.tunnel_type is TunnelType.V6UDPV4 else VERSIONS
        last_reject: VersionRejected | None = None
        for version in versions:
            outcome: _Outcome | None = None
            for i, transport in enumerate(transports):
                try:
                    outcome = await self._attempt(host, address, transport, version)
                except _Unreachable as e:
                    if i + 1 < len(transports):
                        log.info(
                            "tsp: %s over %s: %s; trying %s", host, transport, e, transports[i + 1]
                        )
                        continue
                    raise
                # This transport answered: later versions use it too.
                transports = [transport]
                break
            assert outcome is not None
            ev, session, flow, local = outcome
            if isinstance(ev, Established):
                result = _negotiated(
                    ev,
                    session,
                    server=host,
                    address=address,
                    port=opts.port,
                    local=local,
                    redirects=redirects,
                )
                result.flow = flow
                return result
            if isinstance(ev, Redirected):
                return ev
            if isinstance(ev, VersionRejected):
                log.info("tsp: %s rejected version %s: %s", host, version, ev.text)
                last_reject = ev
                continue
            assert isinstance(ev, Failed)
            raise TspClientError(ev.text, ev.code, server=host)
        assert last_reject is not None
        raise TspClientError(
            f"{last_reject.text} (tried versions {', '.join(versions)})",
            last_reject.code,
            server=host,
        )

    async def _resolve(self, host: str) -> str:
        # v4v6 is signalled over IPv6, the v6-over-v4 types over IPv4 (RFC 5572 Fig. 4).
        family = socket.AF_INET6 if self.opts.tunnel_type is TunnelType.V4V6 else socket.AF_INET
        name = "IPv6" if family == socket.AF_INET6 else "IPv4"
        try:
            infos = await self.loop.getaddrinfo(
                host, self.opts.port, family=family, type=socket.SOCK_DGRAM
            )
        except (socket.gaierror, UnicodeError) as e:
            raise _Unreachable(
                f"cannot resolve {host!r} to an {name} address "
                f"({self.opts.tunnel_type.value} is negotiated over {name}): {e}"
            ) from None
        return str(infos[0][4][0])

    def _session(self, transport: str, version: str, host: str, local: str) -> ClientSession:
        opts = self.opts
        v4v6 = opts.tunnel_type is TunnelType.V4V6
        request = build_request(
            opts.tunnel_type,
            client_ipv4=None
            if v4v6
            else (local if opts.client_ipv4 == "auto" else opts.client_ipv4),
            client_ipv6=(local if opts.client_ipv6 == "auto" else opts.client_ipv6)
            if v4v6
            else None,
            keepalive=opts.keepalive,
            prefix_length=opts.router,
            dns_servers=opts.dns_servers,
            proxy=opts.proxy,
        )
        return ClientSession(
            transport=transport,
            request=request,
            version=version,
            mechanism=opts.mechanism,
            username=opts.username,
            password=opts.password,
            cnonce=secrets.token_hex(8),
            server_host=host,
        )

    async def _attempt(self, host: str, address: str, transport: str, version: str) -> _Outcome:
        log.debug("tsp: %s (%s) over %s, version %s", host, address, transport, version)
        if transport == "udp":
            return await self._attempt_udp(host, address, version)
        return await self._attempt_tcp(host, address, version)

    # ---------------------------------------------------------------- UDP

    async def _attempt_udp(self, host: str, address: str, version: str) -> _Outcome:
        try:
            dt, proto = await self.loop.create_datagram_endpoint(
                _DatagramQueue,
                remote_addr=(address, self.opts.port),
                local_addr=None if self.opts.bind is None else (self.opts.bind, 0),
            )
        except OSError as e:
            raise _Unreachable(f"UDP: {e}") from None
        local = dt.get_extra_info("sockname")
        remote = dt.get_extra_info("peername")
        flow = UdpFlow(dt, proto, (local[0], local[1]), (remote[0], remote[1]))
        session = self._session("udp", version, host, str(local[0]))
        return await self._drive(session, flow, self._run_udp(session, flow))

    async def _run_udp(self, session: ClientSession, flow: UdpFlow) -> Event:
        now = self.loop.time
        reliable = ReliableUdpClient(base_time=now())
        session.initiate(now())
        pending: deque[bytes] = deque()
        established: Established | None = None
        while True:
            while (ev := session.next_event()) is not None:
                if isinstance(ev, Established):
                    established = ev
                elif isinstance(ev, VersionRejected | Redirected | Failed):
                    # A reject of a bad offer is a courtesy: send it once, do not wait.
                    for msg in session.data_to_send()[:1]:
                        if not reliable.outstanding:
                            flow.send(reliable.wrap(msg, now()))
                    return ev
            pending.extend(session.data_to_send())
            if not pending:
                if established is not None:
                    # The accept was acknowledged: the offer is ours.
                    return established
                # Waiting with nothing to say: ask, as gogoc's header-only read does.
                pending.append(b"")
            flow.send(reliable.wrap(pending.popleft(), now()))
            payload = await self._udp_reply(reliable, flow)
            session.receive_data(payload, now())

    async def _udp_reply(self, reliable: ReliableUdpClient, flow: UdpFlow) -> bytes:
        while True:
            deadline = reliable.get_timer()
            assert deadline is not None
            try:
                datagram = await asyncio.wait_for(
                    flow.recv(), max(0.0, deadline - self.loop.time())
                )
            except TimeoutError:
                try:
                    again = reliable.handle_timer(self.loop.time())
                except RetransmitTimeout as e:
                    if e.answered_before:
                        raise TspClientError(f"UDP: {e}") from None
                    raise _Unreachable(f"UDP: {e}") from None
                if again is not None:
                    flow.send(again)
                continue
            except ConnectionRefusedError:
                raise _Unreachable("UDP: port unreachable") from None
            except OSError as e:
                raise _Unreachable(f"UDP: {e}") from None
            payload = reliable.receive(datagram, self.loop.time())
            if payload is not None:
                return payload

    # ---------------------------------------------------------------- TCP

    async def _attempt_tcp(self, host: str, address: str, version: str) -> _Outcome:
        try:
            reader, writer = await asyncio.open_connection(
                address,
                self.opts.port,
                local_addr=None if self.opts.bind is None else (self.opts.bind, 0),
            )
        except OSError as e:
            raise _Unreachable(f"TCP: {e.strerror or e}") from None
        local = writer.get_extra_info("sockname")
        remote = writer.get_extra_info("peername")
        flow = TcpFlow(reader, writer, (local[0], local[1]), (remote[0], remote[1]))
        session = self._session("tcp", version, host, str(local[0]))
        return await self._drive(session, flow, self._run_tcp(session, flow))

    @staticmethod
    async def _drive(
        session: ClientSession, flow: UdpFlow | TcpFlow, run: Coroutine[Any, Any, Event]
    ) -> _Outcome:
        """Run one attempt; the flow stays open only if a tunnel was established on it."""
        try:
            ev = await run
        except BaseException:
            flow.close()
            raise
        local = str(flow.local[0])
        if isinstance(ev, Established):
            return ev, session, flow, local
        flow.close()
        return ev, session, None, local

    async def _run_tcp(self, session: ClientSession, flow: TcpFlow) -> Event:
        now = self.loop.time
        session.initiate(now())
        while True:
            terminal: Event | None = None
            while (ev := session.next_event()) is not None:
                if isinstance(ev, Established | VersionRejected | Redirected | Failed):
                    terminal = ev
            try:
                for msg in session.data_to_send():
                    flow.writer.write(msg)
                await flow.writer.drain()
            except OSError as e:
                if terminal is not None:
                    return terminal
                raise TspClientError(f"TCP: {e}") from None
            if terminal is not None:
                return terminal
            try:
                data = await flow.reader.read(_READ_SIZE)
            except OSError as e:
                raise TspClientError(f"TCP: {e}") from None
            if data:
                session.receive_data(data, now())
            else:
                session.receive_eof(now())


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


async def negotiate(
    server: str,
    *,
    port: int = DEFAULT_PORT,
    transport: str = "auto",
    tunnel_type: TunnelType | str = "v6anyv4",
    mechanism: str = ANY,
    username: str | None = None,
    password: str | None = None,
    client_ipv4: str = "auto",
    client_ipv6: str = "auto",
    router: int | None = None,
    dns_servers: Sequence[str] = (),
    keepalive: int | None = 30,
    proxy: bool = False,
    bind: str | None = None,
    timeout: float = 60.0,
) -> Negotiated:
    """Negotiate one tunnel with the broker ``server`` and accept its offer.

    Args:
        server: host name or address of the broker (without port). It is also the host part
            of DIGEST-MD5's ``digest-uri`` (``tsp/<server>``), as in gogoc.
        port: TSP port of the broker.
        transport: ``auto`` (UDP, then TCP), ``udp`` or ``tcp``.
        tunnel_type: v6anyv4 (the broker chooses v6v4 or, behind a NAT, v6udpv4), v6v4,
            v6udpv4 (UDP only) or v4v6 (negotiated over IPv6).
        mechanism: ANY (DIGEST-MD5, else PLAIN; ANONYMOUS when no username is given),
            ANONYMOUS, PLAIN or DIGEST-MD5.
        username, password: the account, for every mechanism but ANONYMOUS.
        client_ipv4: the IPv4 endpoint we announce; ``auto``: the signalling socket's local
            address (a different source at the broker reveals a NAT).
        client_ipv6: the same for v4v6.
        router: ask for a delegated prefix of this length (0: the broker's default); None:
            host mode.
        dns_servers: nameservers for reverse delegation of that prefix (router mode).
        keepalive: requested keepalive interval, seconds (the broker decides); None: none.
        proxy: gogoc's ``proxy="yes"`` (no NAT traversal wanted).
        bind: local address for the signalling socket (multi-homed hosts); None: any.
        timeout: bound on the whole negotiation, redirects and fallbacks included, seconds.

    Returns:
        The accepted tunnel; its signalling flow is still open (see :class:`Negotiated`).

    Raises:
        TspClientError: the broker refused (``code`` set), could not be reached, answered
            nonsense, or the timeout expired.
        ValueError: inconsistent arguments.
    """
    try:
        tt = TunnelType(str(tunnel_type).lower())
    except ValueError:
        raise ValueError(f"unknown tunnel type {tunnel_type!r}") from None
    mode = transport.lower()
    if mode not in _TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}")
    if tt is TunnelType.V6UDPV4 and mode == "tcp":
        raise ValueError("v6udpv4 can only be negotiated over UDP")
    mech = mechanism.upper()
    if mech not in MECHANISMS:
        raise ValueError(f"unknown authentication mechanism {mechanism!r}")
    if mech == ANY and not username:
        mech = "ANONYMOUS"
    if mech != "ANONYMOUS" and (not username or not password):
        raise ValueError(f"{mech} needs a username and a password")
    if router is not None and not 0 <= router <= 128:
        raise ValueError(f"prefix length {router} not in 0..128")
    if dns_servers and router is None:
        raise ValueError("nameservers for reverse delegation need router mode")
    for name, value in (("client_ipv4", client_ipv4), ("client_ipv6", client_ipv6)):
        if value != "auto":
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{name} must be 'auto' or an address, not {value!r}") from None
            if ip.version != (4 if name == "client_ipv4" else 6):
                raise ValueError(f"{name} {value!r} is not an IPv{name[-1]} address")
    opts = _Options(
        port=port,
        transport=mode,
        tunnel_type=tt,
        mechanism=mech,
        username=username,
        password=password,
        client_ipv4=client_ipv4,
        client_ipv6=client_ipv6,
        router=router,
        dns_servers=tuple(dns_servers),
        keepalive=keepalive or None,
        proxy=proxy,
        bind=bind,
    )
    try:
        async with asyncio.timeout(timeout):
            return await _Negotiator(opts).run(server)
    except TimeoutError:
        raise TspClientError(f"no tunnel within {timeout:g} s", None, server=server) from None
