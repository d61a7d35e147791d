"""The TSP client machine, in memory: against the real server machine, and gogoc's bytes.

No sockets. :class:`Pair` wires a :class:`ClientSession` to a :class:`ServerSession` (on UDP
through both reliable-UDP halves) and answers the server's decisions the way the listener
would. Golden bytes come from tsp.md §2.4, §2.5 and §2.9 (gogoc 1.2, measured).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelbroker.protocols.sasl import digest_md5
from tunnelbroker.protocols.tsp import codec, framing
from tunnelbroker.protocols.tsp.client import (
    Authenticated,
    CapabilityReceived,
    ClientSession,
    ClientState,
    Established,
    Event,
    Failed,
    Redirected,
    VersionRejected,
    build_request,
)
from tunnelbroker.protocols.tsp.errors import LocalProtocolError, StatusCode
from tunnelbroker.protocols.tsp.events import (
    DigestAuthRequested,
    PlainAuthRequested,
    TunnelAccepted,
    TunnelRequested,
)
from tunnelbroker.protocols.tsp.events import Event as ServerEvent
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
from tunnelbroker.protocols.tsp.reliable import Disposition, ReliableUdpServer
from tunnelbroker.protocols.tsp.reliable_client import ReliableUdpClient
from tunnelbroker.protocols.tsp.server import ServerSession, ServerSettings, Transport

# tsp.md §2.5, "What gogoc sends (measured here)": v6udpv4 with keepalive_interval=5.
# tsp.md §2.5 "What gogoc sends", captured byte for byte (CRLF line ends).
GOGOC_CREATE = (Path(__file__).parent / "data" / "gogoc_create_v6udpv4.bin").read_bytes()
GOGOC_ACCEPT = b'Content-length: 35\r\n<tunnel action="accept"></tunnel>\r\n'
# tsp.md §2.5, host_type=router, prefixlen=56, dns_server=ns1.example.net:ns2.example.net.
GOGOC_ROUTER_BLOCK = (
    b"  <router>\r\n"
    b'   <prefix length="56"/>\r\n'
    b"   <dns_server>\r\n"
    b'     <address type="dn">ns1.example.net</address>\r\n'
    b'     <address type="dn">ns2.example.net</address>\r\n'
    b"   </dns_server>\r\n"
    b"  </router>\r\n"
)

REALM = "testrealm"
USERS = {"alice": "secret"}
PREFIX = "2001:0db8:0c18:1200:0000:0000:0000:0000"


def offer_for(request: Tunnel, source: str = "127.0.0.1", udp: bool = True) -> Tunnel:
    """What a broker would offer: gogoc's required fields, NAT discovery for v6anyv4."""
    assert request.type is not None and request.client is not None
    claimed = request.client.address(AddressType.IPV4)
    kind = request.type
    if kind is TunnelType.V6ANYV4:
        nat = claimed is not None and claimed.value != source
        kind = TunnelType.V6UDPV4 if nat and udp else TunnelType.V6V4
    router = None
    if request.client.router is not None:
        assert request.client.router.prefix is not None
        router = Router(Prefix(request.client.router.prefix.length or 48, PREFIX))
    return Tunnel(
        action=Action.INFO,
        type=kind,
        lifetime=1440,
        server=Endpoint(
            addresses=(
                Address(AddressType.IPV4, "192.0.2.1"),
                Address(AddressType.IPV6, "2001:db8:ffff::1"),
            )
        ),
        client=Endpoint(
            addresses=(
                Address(AddressType.IPV4, claimed.value if claimed else source),
                Address(AddressType.IPV6, "2001:db8:ffff::2"),
            ),
            dns_servers=(Address(AddressType.IPV6, "2001:db8:ffff::53"),),
            keepalive=Keepalive(30, Address(AddressType.IPV6, "2001:db8:ffff::1")),
            router=router,
        ),
    )


def events(c: ClientSession) -> list[Event]:
    out = []
    while (e := c.next_event()) is not None:
        out.append(e)
    return out


def make_client(
    transport: str = "tcp",
    mechanism: str = "ANONYMOUS",
    request: Tunnel | None = None,
    version: str = "2.0.0",
    **kw: object,
) -> ClientSession:
    if request is None:
        request = build_request("v6anyv4", client_ipv4="127.0.0.1")
    creds: dict[str, object] = {}
    if mechanism != "ANONYMOUS":
        creds = {"username": "alice", "password": "secret"}
    return ClientSession(
        transport=transport,
        request=request,
        version=version,
        mechanism=mechanism,
        cnonce="1795323394",
        server_host="127.0.0.1",
        **creds,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


class Pair:
    """A client machine and a server machine back to back (h11's ConnectionPair idea).

    ``split`` decides how bytes travel on TCP: ``"whole"`` (one chunk per write),
    ``"bytes"`` (one byte at a time) or ``"joined"`` (all of a turn's writes in one read,
    e.g. rspauth and ``200 Success`` together).
    """

    def __init__(
        self,
        client: ClientSession,
        *,
        settings: ServerSettings | None = None,
        split: str = "whole",
        offer: Callable[[Tunnel], Tunnel] | None = None,
    ) -> None:
        self.client = client
        self.udp = client.transport is Transport.UDP
        self.server = ServerSession(
            settings or ServerSettings(realm=REALM),
            transport=Transport.UDP if self.udp else Transport.TCP,
            ipv6_session=client.request.type is TunnelType.V4V6,
            nonce="1234567890",
            now=0.0,
        )
        self.split = split
        self.offer = offer or (lambda r: offer_for(r, udp=self.udp))
        self.reliable_client = ReliableUdpClient(base_time=0.0)
        self.reliable_server = ReliableUdpServer()
        self.client_events: list[Event] = []
        self.server_events: list[ServerEvent] = []
        #: Every client datagram (UDP) or write (TCP), in order.
        self.client_wire: list[bytes] = []
        self.now = 0.0

    def _decide(self) -> None:
        s = self.server
        while (ev := s.next_event()) is not None:
            self.server_events.append(ev)
            if isinstance(ev, PlainAuthRequested):
                ok = USERS.get(ev.username) == ev.password
                s.complete_plain(ev.username if ok else None)
            elif isinstance(ev, DigestAuthRequested):
                pw = USERS.get(ev.username)
                s.complete_digest(
                    None if pw is None else digest_md5.digest_ha1(ev.username, ev.realm, pw)
                )
            elif isinstance(ev, TunnelRequested):
                s.offer(self.offer(ev.request))

    def _to_client(self, chunks: list[bytes]) -> None:
        if self.split == "joined":
            chunks = [b"".join(chunks)] if chunks else []
        elif self.split == "bytes":
            chunks = [bytes([b]) for c in chunks for b in c]
        for chunk in chunks:
            self.client.receive_data(chunk, self.now)

    def _to_server(self, msg: bytes) -> None:
        chunks = [bytes([b]) for b in msg] if self.split == "bytes" else [msg]
        for chunk in chunks:
            self.server.receive_data(chunk, self.now)
            self._decide()

    def run(self, max_turns: int = 50) -> list[Event]:
        """Run until the client reaches a terminal state and has nothing left to send."""
        if self.client.state is ClientState.IDLE:
            self.client.initiate(self.now)
        for _ in range(max_turns):
            self.now += 0.01
            out = self.client.data_to_send()
            self.client_events += events(self.client)
            if not out:
                if self.client.done:
                    return self.client_events
                if not self.udp:
                    raise AssertionError(f"client stuck in {self.client.state}")
            for msg in out:
                if self.udp:
                    self._udp_roundtrip(msg)
                else:
                    self.client_wire.append(msg)
                    self._to_server(msg)
                    self._to_client(self.server.data_to_send())
            self.client_events += events(self.client)
        raise AssertionError("no end in sight")

    def _udp_roundtrip(self, msg: bytes) -> None:
        datagram = self.reliable_client.wrap(msg, self.now)
        self.client_wire.append(datagram)
        received = self.reliable_server.receive(datagram)
        assert received.disposition is Disposition.NEW
        self.server.receive_data(received.payload, self.now)
        self._decide()
        reply = self.reliable_server.reply(b"".join(self.server.data_to_send()))
        payload = self.reliable_client.receive(reply, self.now + 0.001)
        assert payload is not None
        self.client.receive_data(payload, self.now)


MECHS = ["ANONYMOUS", "PLAIN", "DIGEST-MD5"]


# --------------------------------------------------------------------------------------------
# Against the real server machine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHS)
@pytest.mark.parametrize(
    ("transport", "split"),
    [("tcp", "whole"), ("tcp", "bytes"), ("tcp", "joined"), ("udp", "whole")],
)
def test_negotiation_against_the_server_machine(mechanism: str, transport: str, split: str) -> None:
    pair = Pair(make_client(transport, mechanism), split=split)
    evs = pair.run()
    assert isinstance(evs[0], CapabilityReceived)
    assert Authenticated(mechanism) in evs
    (est,) = [e for e in evs if isinstance(e, Established)]
    assert est.tunnel_type is TunnelType.V6V4
    assert est.offer == offer_for(make_client().request)
    assert isinstance(pair.server_events[-1], TunnelAccepted)
    assert pair.server.state.name == "ESTABLISHED"
    assert pair.client.mechanism == mechanism


@pytest.mark.parametrize("mechanism", ["PLAIN", "DIGEST-MD5"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_wrong_password_is_failed_300(mechanism: str, transport: str) -> None:
    client = ClientSession(
        transport=transport,
        request=build_request("v6v4", client_ipv4="127.0.0.1"),
        mechanism=mechanism,
        username="alice",
        password="wrong",
        cnonce="1",
        server_host="h",
    )
    evs = Pair(client).run()
    assert evs[-1] == Failed(300, "Authentication failed", True)


def test_any_picks_digest_then_plain_and_never_anonymous() -> None:
    pair = Pair(make_client("tcp", "ANY"))
    pair.run()
    assert pair.client.mechanism == "DIGEST-MD5"
    plain_only = ServerSettings(realm=REALM, mechanisms=("PLAIN", "ANONYMOUS"))
    pair = Pair(make_client("tcp", "ANY"), settings=plain_only)
    pair.run()
    assert pair.client.mechanism == "PLAIN"
    anon_only = ServerSettings(realm=REALM, mechanisms=("ANONYMOUS",))
    evs = Pair(make_client("tcp", "ANY"), settings=anon_only).run()
    assert evs[-1] == Failed(
        300, "the server does not offer DIGEST-MD5 or PLAIN (it offers: ANONYMOUS)", False
    )


def test_named_mechanism_not_offered_fails_before_authenticating() -> None:
    settings = ServerSettings(realm=REALM, mechanisms=("DIGEST-MD5",))
    pair = Pair(make_client("tcp", "ANONYMOUS"), settings=settings)
    evs = pair.run()
    assert isinstance(evs[-1], Failed) and evs[-1].code == 300 and not evs[-1].from_server
    assert pair.client_wire == [b"VERSION=2.0.0\r\n"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_router_mode_gets_its_prefix(transport: str) -> None:
    request = build_request(
        "v6v4", client_ipv4="127.0.0.1", prefix_length=56, dns_servers=("ns1.example.net",)
    )
    pair = Pair(make_client(transport, "PLAIN", request=request))
    est = pair.run()[-1]
    assert isinstance(est, Established)
    assert est.offer.client is not None and est.offer.client.router is not None
    assert est.offer.client.router.prefix == Prefix(56, PREFIX)
    (req,) = [e for e in pair.server_events if isinstance(e, TunnelRequested)]
    assert req.request == request


def test_nat_discovery_v6anyv4_over_udp_becomes_v6udpv4() -> None:
    request = build_request("v6anyv4", client_ipv4="10.1.1.1")
    est = Pair(make_client("udp", request=request)).run()[-1]
    assert isinstance(est, Established) and est.tunnel_type is TunnelType.V6UDPV4


def test_v4v6_over_an_ipv6_session() -> None:
    request = build_request("v4v6", client_ipv6="2001:db8::99")

    def offer(r: Tunnel) -> Tunnel:
        return Tunnel(
            action=Action.INFO,
            type=TunnelType.V4V6,
            server=Endpoint(
                addresses=(
                    Address(AddressType.IPV4, "100.64.0.6", 30),
                    Address(AddressType.IPV6, "2001:db8::1"),
                )
            ),
            client=Endpoint(
                addresses=(
                    Address(AddressType.IPV4, "100.64.0.5", 30),
                    Address(AddressType.IPV6, "2001:db8::99"),
                ),
                keepalive=Keepalive(30, Address(AddressType.IPV4, "100.64.0.6")),
            ),
        )

    for transport in ("tcp", "udp"):
        est = Pair(make_client(transport, request=request), offer=offer).run()[-1]
        assert isinstance(est, Established) and est.tunnel_type is TunnelType.V4V6


def test_tsp_1_0_sends_no_accept_and_the_server_establishes_anyway() -> None:
    pair = Pair(make_client("tcp", version="1.0.1"))
    evs = pair.run()
    assert isinstance(evs[-1], Established)
    assert isinstance(pair.server_events[-1], TunnelAccepted)
    assert not any(b'action="accept"' in w for w in pair.client_wire)


# --------------------------------------------------------------------------------------------
# gogoc's bytes (tsp.md §2.4, §2.5, §2.9) as golden output
# --------------------------------------------------------------------------------------------


def test_golden_create_document_is_gogocs() -> None:
    request = build_request("v6udpv4", client_ipv4="127.0.0.1", keepalive=5)
    assert framing.encode_request(codec.tunnel_to_xml(request)) == GOGOC_CREATE
    # v6v4 and v6anyv4 change only the type.
    for kind in ("v6v4", "v6anyv4"):
        other = build_request(kind, client_ipv4="127.0.0.1", keepalive=5)
        assert framing.encode_request(codec.tunnel_to_xml(other)) == GOGOC_CREATE.replace(
            b'"v6udpv4"', f'"{kind}"'.encode()
        ).replace(b"213", b"%d" % (213 - 7 + len(kind)))


def test_golden_router_block_is_gogocs() -> None:
    request = build_request(
        "v6udpv4",
        client_ipv4="127.0.0.1",
        keepalive=5,
        prefix_length=56,
        dns_servers=("ns1.example.net", "ns2.example.net"),
    )
    body = codec.tunnel_to_xml(request) + b"\r\n"
    expected = GOGOC_CREATE.split(b"\r\n", 1)[1].replace(
        b"  </keepalive>\r\n", b"  </keepalive>\r\n" + GOGOC_ROUTER_BLOCK
    )
    assert body == expected


def test_golden_version_and_anonymous_lines() -> None:
    c = make_client("tcp", request=build_request("v6udpv4", client_ipv4="127.0.0.1"))
    c.initiate()
    # gogoc's VERSION line carries no NUL; we send the RFC's version (gogoc: 2.0.2).
    assert c.data_to_send() == [b"VERSION=2.0.0\r\n"]
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=ANONYMOUS\r\n", 0.0)
    assert c.data_to_send() == [b"AUTHENTICATE ANONYMOUS\r\n\0"]


def test_golden_plain_bytes() -> None:
    c = make_client("tcp", "PLAIN")
    c.initiate()
    c.data_to_send()
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=PLAIN\r\n", 0.0)
    # Raw, not base64, as a separate message sent without waiting (tsp.md §2.4).
    assert c.data_to_send() == [b"AUTHENTICATE PLAIN\r\n\0", b"\0alice\0secret\r\n"]


def test_golden_digest_vector_and_udp_trace() -> None:
    """tsp.md §2.4's vector and §2.9's trace: seq f00000f0.., a header-only probe at f3."""
    request = build_request("v6udpv4", client_ipv4="127.0.0.1", keepalive=5)
    c = make_client("udp", "DIGEST-MD5", request=request)
    rc = ReliableUdpClient(base_time=0.0)
    wire: list[bytes] = []

    def send_all(now: float) -> list[bytes]:
        out = c.data_to_send()
        assert len(out) == 1
        wire.append(rc.wrap(out[0], now))
        return out

    def reply(payload: bytes, now: float) -> None:
        got = rc.receive(wire[-1][:8] + payload, now)
        assert got == payload
        c.receive_data(payload, now)

    c.initiate(0.0)
    assert send_all(0.1) == [b"VERSION=2.0.0\r\n"]
    reply(b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5\r\n", 0.2)
    assert send_all(0.3) == [b"AUTHENTICATE DIGEST-MD5\r\n\0"]
    challenge = b'realm="testrealm",nonce="1234567890",qop="auth",algorithm=md5-sess,charset=utf-8'
    reply(base64.b64encode(challenge) + b"\r\n", 0.4)
    (response,) = send_all(0.5)
    decoded = base64.b64decode(response.strip())
    assert b'digest-uri="tsp/127.0.0.1"' in decoded
    assert b"response=4410ed864907f7f318d43c5637cee923" in decoded
    reply(base64.b64encode(b"rspauth=bec75817c5f139f2f892846a1e9a9629") + b"\r\n", 0.6)
    assert send_all(0.7) == [b""]  # the header-only "read" probe
    reply(b"200 Success\r\n", 0.8)
    assert send_all(0.9) == [GOGOC_CREATE]
    assert [w[:4].hex() for w in wire] == [
        "f00000f0",
        "f00000f1",
        "f00000f2",
        "f00000f3",
        "f00000f4",
    ]
    assert len(wire[3]) == 8


def test_rspauth_and_200_in_one_datagram_needs_no_probe() -> None:
    """ddtb packs both into one datagram (tsp.md §2.4); the request follows directly."""
    c = make_client("udp", "DIGEST-MD5")
    c.initiate()
    c.data_to_send()
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=DIGEST-MD5\r\n", 0.0)
    c.data_to_send()
    challenge = b'realm="testrealm",nonce="1234567890",qop="auth",algorithm=md5-sess,charset=utf-8'
    c.receive_data(base64.b64encode(challenge), 0.0)
    c.data_to_send()
    rspauth = base64.b64encode(b"rspauth=bec75817c5f139f2f892846a1e9a9629")
    c.receive_data(rspauth + b"\r\n200 Success\r\n", 0.0)
    (out,) = c.data_to_send()
    assert out.startswith(b"Content-length: ")
    assert Authenticated("DIGEST-MD5") in events(c)


# --------------------------------------------------------------------------------------------
# DIGEST-MD5 mutual authentication
# --------------------------------------------------------------------------------------------


def _digest_client_at_rspauth(transport: str) -> ClientSession:
    c = make_client(transport, "DIGEST-MD5")
    c.initiate()
    c.data_to_send()
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=DIGEST-MD5\r\n", 0.0)
    c.data_to_send()
    c.receive_data(base64.b64encode(b'realm="r",nonce="n",qop="auth"') + b"\r\n", 0.0)
    c.data_to_send()
    return c


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_missing_rspauth_is_a_failure(transport: str) -> None:
    c = _digest_client_at_rspauth(transport)
    c.receive_data(b"200 Success\r\n", 0.0)
    (ev,) = [e for e in events(c) if isinstance(e, Failed)]
    assert "no rspauth" in ev.text and not ev.from_server
    assert c.data_to_send() == []


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_wrong_rspauth_is_a_failure(transport: str) -> None:
    c = _digest_client_at_rspauth(transport)
    c.receive_data(base64.b64encode(b"rspauth=00000000000000000000000000000000") + b"\r\n", 0.0)
    (ev,) = [e for e in events(c) if isinstance(e, Failed)]
    assert "mutual authentication" in ev.text
    assert c.data_to_send() == []


def test_garbage_challenge_is_a_failure() -> None:
    c = make_client("tcp", "DIGEST-MD5")
    c.initiate()
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=DIGEST-MD5\r\n", 0.0)
    c.receive_data(b"!!!not base64!!!\r\n", 0.0)
    assert isinstance(events(c)[-1], Failed)


# --------------------------------------------------------------------------------------------
# Status codes, referrals, capability checks
# --------------------------------------------------------------------------------------------


def _started(transport: str = "tcp", **kw: object) -> ClientSession:
    c = make_client(transport, **kw)  # type: ignore[arg-type]
    c.initiate()
    c.data_to_send()
    return c


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_302_at_version_is_version_rejected(transport: str) -> None:
    c = _started(transport)
    c.receive_data(b"302 Unsupported client version\r\n", 0.0)
    assert events(c) == [VersionRejected("2.0.0", 302, "Unsupported client version")]
    assert c.done and c.data_to_send() == []


# RFC 5572 Fig. 9, with the figure's indentation.
FIG9 = (
    b"1302 Unsupported client version\r\n"
    b'  <tunnel action="list" type="broker">\r\n'
    b"     <broker>\r\n"
    b'        <address type="ipv4">1.2.3.4</address>\r\n'
    b"     </broker>\r\n"
    b"     <broker>\r\n"
    b'        <address type="dn">ts1.isp1.com</address>\r\n'
    b"     </broker>\r\n"
    b"  </tunnel>\r\n"
)
FIG9_BROKERS = (Address(AddressType.IPV4, "1.2.3.4"), Address(AddressType.DN, "ts1.isp1.com"))


@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_referral_at_version_over_tcp(split: str) -> None:
    c = _started("tcp")
    chunks = [FIG9] if split == "whole" else [bytes([b]) for b in FIG9]
    for chunk in chunks:
        c.receive_data(chunk, 0.0)
    assert events(c) == [Redirected(1302, FIG9_BROKERS, "Unsupported client version")]


def test_referral_over_udp_and_ended_by_eof() -> None:
    c = _started("udp")
    c.receive_data(FIG9, 0.0)
    assert events(c) == [Redirected(1302, FIG9_BROKERS, "Unsupported client version")]
    # A TCP server that closes without a closing tag: what arrived is parsed.
    c = _started("tcp")
    c.receive_data(FIG9.replace(b"  </tunnel>\r\n", b""), 0.0)
    assert events(c) == []
    c.receive_data(b"", 0.0)
    c.receive_eof(0.0)
    (ev,) = events(c)
    assert isinstance(ev, Failed)  # unclosed XML is unreadable, and says so
    assert ev.code == 1302 and "broker list" in ev.text


def test_referral_at_authentication() -> None:
    c = _started("tcp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n", 0.0)
    c.receive_data(FIG9.replace(b"1302 Unsupported client version", b"1300 Go away"), 0.0)
    assert events(c)[-1] == Redirected(1300, FIG9_BROKERS, "Go away")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_framed_referral_from_the_server_machine(transport: str) -> None:
    referrals = (Address(AddressType.IPV4, "192.0.2.77"),)
    settings = ServerSettings(realm=REALM, referrals=referrals)
    pair = Pair(make_client(transport), settings=settings)

    # Let the broker refuse with a referral, as the listener does for 301.
    def decide() -> None:
        s = pair.server
        while (ev := s.next_event()) is not None:
            pair.server_events.append(ev)
            if isinstance(ev, TunnelRequested):
                s.refuse(StatusCode.NO_MORE_TUNNELS, referral=True)

    pair._decide = decide  # type: ignore[method-assign]
    evs = pair.run()
    assert evs[-1] == Redirected(1301, referrals, "No more tunnels available")


def test_referral_without_brokers_is_a_failure() -> None:
    c = _started("tcp")
    c.receive_data(b'1302 Moved\r\n<tunnel action="list" type="broker"></tunnel>\r\n', 0.0)
    (ev,) = events(c)
    assert isinstance(ev, Failed) and ev.code == 1302


@pytest.mark.parametrize(
    ("line", "code"),
    [(b"300 Authentication failed", 300), (b"530 Server too busy", 530), (b"310", 310)],
)
def test_other_status_at_version_is_failed(line: bytes, code: int) -> None:
    c = _started("tcp")
    c.receive_data(line + b"\r\n", 0.0)
    (ev,) = events(c)
    assert isinstance(ev, Failed) and ev.code == code and ev.from_server
    assert ev.text  # 310 alone gets the RFC's text
    assert c.done


def test_error_reply_to_the_request_is_failed_with_code_and_text() -> None:
    c = _started("tcp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n200 Success\r\n", 0.0)
    c.data_to_send()
    framed = framing.encode_reply(StatusCode.PREFIX_LENGTH_UNAVAILABLE.to_line())
    c.receive_data(framed[:-5], 0.0)
    assert [e for e in events(c) if isinstance(e, Failed)] == []
    c.receive_data(framed[-5:], 0.0)
    (ev,) = [e for e in events(c) if isinstance(e, Failed)]
    assert ev == Failed(507, "Requested prefix length cannot be assigned", True)


def test_unframed_error_in_the_command_phase_is_understood() -> None:
    c = _started("tcp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n200 Success\r\n", 0.0)
    c.receive_data(b"310 Server side error\r\n", 0.0)
    assert events(c)[-1] == Failed(310, "Server side error", True)


@pytest.mark.parametrize(
    ("wanted", "offered", "ok"),
    [
        ("v6anyv4", b"TUNNEL=V6UDPV4", True),
        ("v6anyv4", b"TUNNEL=V6V4", True),
        ("v6anyv4", b"TUNNEL=V4V6", False),
        ("v6v4", b"TUNNEL=V6UDPV4", False),
        ("v6udpv4", b"TUNNEL=V6V4", False),
        ("v4v6", b"TUNNEL=V4V6", True),
    ],
)
def test_requested_type_must_be_advertised(wanted: str, offered: bytes, ok: bool) -> None:
    kw = {"client_ipv6": "::1"} if wanted == "v4v6" else {"client_ipv4": "127.0.0.1"}
    c = _started("udp", request=build_request(wanted, **kw))  # type: ignore[arg-type]
    c.receive_data(b"CAPABILITY " + offered + b" AUTH=ANONYMOUS\r\n", 0.0)
    evs = events(c)
    if ok:
        assert c.data_to_send() == [b"AUTHENTICATE ANONYMOUS\r\n\0"]
    else:
        assert isinstance(evs[-1], Failed) and evs[-1].code == 303 and not evs[-1].from_server
        assert c.data_to_send() == []


# --------------------------------------------------------------------------------------------
# Offer validation
# --------------------------------------------------------------------------------------------


def _bad(offer: Callable[[Tunnel], Tunnel], transport: str = "tcp", **kw: object) -> Failed:
    pair = Pair(make_client(transport, **kw), offer=offer)  # type: ignore[arg-type]
    evs = pair.run()
    assert isinstance(evs[-1], Failed), evs
    # The broker is told at once, so it can free the offer.
    assert any(b'<tunnel action="reject"></tunnel>' in w for w in pair.client_wire)
    assert pair.server.state.name == "COMMAND"
    return evs[-1]


def _with_endpoint(side: str, addresses: tuple[Address, ...]) -> Callable[[Tunnel], Tunnel]:
    def offer(r: Tunnel) -> Tunnel:
        good = offer_for(r)
        old = good.client if side == "client" else good.server
        assert old is not None
        ep = Endpoint(addresses, old.keepalive, old.router, old.dns_servers)
        if side == "client":
            return Tunnel(good.action, good.type, good.lifetime, client=ep, server=good.server)
        return Tunnel(good.action, good.type, good.lifetime, client=good.client, server=ep)

    return offer


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("missing", [AddressType.IPV4, AddressType.IPV6])
def test_offer_without_a_required_address_is_rejected(side: str, missing: AddressType) -> None:
    def offer(r: Tunnel) -> Tunnel:
        good = offer_for(r)
        ep = good.client if side == "client" else good.server
        assert ep is not None
        return _with_endpoint(side, tuple(a for a in ep.addresses if a.type is not missing))(r)

    ev = _bad(offer)
    assert f"no {side} {missing.value} address" in ev.text and not ev.from_server


def test_offer_with_an_invalid_address_is_rejected() -> None:
    bad = (Address(AddressType.IPV4, "1.2.3"), Address(AddressType.IPV6, "2001:db8::2"))
    ev = _bad(_with_endpoint("client", bad))
    assert "'1.2.3' is invalid" in ev.text


def test_offer_of_v6udpv4_on_tcp_is_rejected() -> None:
    request = build_request("v6anyv4", client_ipv4="10.1.1.1")
    ev = _bad(lambda r: offer_for(r, udp=True), request=request)
    assert "v6udpv4 offered on a TCP session" in ev.text


def test_offer_of_another_type_is_rejected() -> None:
    def offer(r: Tunnel) -> Tunnel:
        good = offer_for(r)
        return Tunnel(good.action, TunnelType.V6UDPV4, client=good.client, server=good.server)

    ev = _bad(offer, "udp", request=build_request("v6v4", client_ipv4="127.0.0.1"))
    assert "asked for v6v4, offered v6udpv4" in ev.text


def test_router_request_without_a_prefix_in_the_offer_is_rejected() -> None:
    request = build_request("v6v4", client_ipv4="127.0.0.1", prefix_length=48)

    def offer(r: Tunnel) -> Tunnel:
        good = offer_for(r)
        assert good.client is not None
        ep = Endpoint(good.client.addresses, good.client.keepalive, None, good.client.dns_servers)
        return Tunnel(good.action, good.type, client=ep, server=good.server)

    ev = _bad(offer, "tcp", request=request)
    assert "no prefix" in ev.text


def test_reply_that_is_not_xml_is_rejected() -> None:
    c = _started("tcp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n200 Success\r\n", 0.0)
    c.data_to_send()
    body = b"200 Success\r\n<tunnel action=info>\r\n"
    c.receive_data(b"Content-length: %d\r\n" % len(body) + body, 0.0)
    ev = events(c)[-1]
    assert isinstance(ev, Failed) and "not a valid tunnel document" in ev.text
    assert c.data_to_send() == [b'Content-length: 35\r\n<tunnel action="reject"></tunnel>\r\n']


# --------------------------------------------------------------------------------------------
# UDP details, EOF, timers, misuse
# --------------------------------------------------------------------------------------------


def test_split_reply_over_datagrams_is_read_with_probes() -> None:
    c = _started("udp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n", 0.0)
    c.data_to_send()
    c.receive_data(b"200 Success\r\n", 0.0)
    c.data_to_send()
    offer = codec.tunnel_to_xml(offer_for(make_client().request))
    framed = framing.encode_reply("200 Success", offer)
    c.receive_data(framed[:100], 0.0)
    assert c.data_to_send() == [b""]  # "go on"
    c.receive_data(framed[100:], 0.0)
    assert isinstance(events(c)[-1], Established)
    assert c.data_to_send() == [GOGOC_ACCEPT]


def test_plain_over_udp_waits_for_both_replies() -> None:
    c = make_client("udp", "PLAIN")
    c.initiate()
    c.data_to_send()
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=PLAIN\r\n", 0.0)
    assert len(c.data_to_send()) == 2
    c.receive_data(b"", 0.0)  # the empty ack of AUTHENTICATE PLAIN: the credentials are out
    assert c.data_to_send() == []
    c.receive_data(b"200 Success", 0.0)  # no CRLF: one datagram is one line
    assert c.data_to_send()[0].startswith(b"Content-length:")


def test_eof_before_the_end_is_a_failure() -> None:
    c = _started("tcp")
    c.receive_eof(0.0)
    (ev,) = events(c)
    assert isinstance(ev, Failed) and "closed the connection" in ev.text and ev.code is None


def test_idle_timer() -> None:
    c = make_client("tcp", idle_timeout=5.0)
    assert c.get_timer() is None
    c.initiate(10.0)
    assert c.get_timer() == 15.0
    c.handle_timer(14.0)
    assert not c.done
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n", 12.0)
    c.handle_timer(17.0)
    assert events(c)[-1] == Failed(None, "no answer from the server (during authentication)", False)
    assert c.get_timer() is None


def test_misuse_is_a_local_error() -> None:
    request = build_request("v6v4", client_ipv4="127.0.0.1")
    with pytest.raises(LocalProtocolError):
        ClientSession(transport="sctp", request=request)
    with pytest.raises(LocalProtocolError):
        ClientSession(transport="tcp", request=request, mechanism="PLAIN")
    with pytest.raises(LocalProtocolError):
        ClientSession(transport="tcp", request=request, mechanism="KERBEROS")
    with pytest.raises(LocalProtocolError):
        ClientSession(transport="tcp", request=Tunnel(Action.ACCEPT))
    with pytest.raises(LocalProtocolError):
        ClientSession(
            transport="tcp", request=request, mechanism="DIGEST-MD5", username="a", password="b"
        )
    c = ClientSession(transport=Transport.TCP, request=request)
    c.initiate()
    with pytest.raises(LocalProtocolError):
        c.initiate()
    with pytest.raises(ValueError):
        build_request("v6v4", dns_servers=("ns1.example.net",))
    with pytest.raises(ValueError):
        build_request("v6v4", prefix_length=129)


def test_input_after_the_end_is_ignored() -> None:
    pair = Pair(make_client("tcp"))
    pair.run()
    pair.client.receive_data(b"garbage\r\n", 1.0)
    pair.client.receive_eof(1.0)
    assert events(pair.client) == [] and pair.client.data_to_send() == []


# --------------------------------------------------------------------------------------------
# Robustness: peer input never raises
# --------------------------------------------------------------------------------------------

_TOKENS = [
    b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=ANONYMOUS AUTH=PLAIN AUTH=DIGEST-MD5\r\n",
    b"200 Success\r\n",
    b"302 Unsupported client version\r\n",
    b"1302 x\r\n",
    b'<tunnel action="list"><broker><address type="dn">a</address></broker></tunnel>',
    base64.b64encode(b'realm="r",nonce="n",qop="auth"') + b"\r\n",
    base64.b64encode(b"rspauth=0") + b"\r\n",
    b"Content-length: 20\r\n",
    b"Content-length: 99999999\r\n",
    b"\0\r\n",
    b"",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=64)), max_size=10),
    st.sampled_from(["tcp", "udp"]),
    st.sampled_from(MECHS + ["ANY"]),
)
def test_arbitrary_server_input_never_raises(
    chunks: list[bytes], transport: str, mech: str
) -> None:
    c = make_client(transport, mech)
    c.initiate()
    for chunk in chunks:
        c.data_to_send()
        c.receive_data(chunk, 0.0)
    c.receive_eof(0.0)
    evs = events(c)
    # Exactly one terminal event at most, and it is the last one.
    terminal = [
        e for e in evs if isinstance(e, Established | Failed | Redirected | VersionRejected)
    ]
    assert len(terminal) <= 1
    if terminal:
        assert evs[-1] is terminal[0]


def test_unframed_error_datagram_without_crlf_in_the_command_phase() -> None:
    c = _started("udp")
    c.receive_data(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS", 0.0)
    c.data_to_send()
    c.receive_data(b"200 Success", 0.0)
    c.data_to_send()
    c.receive_data(b"310 Server side error", 0.0)
    assert events(c)[-1] == Failed(310, "Server side error", True)
