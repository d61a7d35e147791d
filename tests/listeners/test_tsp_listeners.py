"""The TSP listeners on loopback with raw sockets: what gogoc and hostile peers send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tunnelbroker.broker.users import UserService
from tunnelbroker.config import load_config
from tunnelbroker.daemon import Daemon, running
from tunnelbroker.listeners.tsp import TspUdpProtocol
from tunnelbroker.protocols.sasl import digest_md5
from tunnelbroker.protocols.tsp import codec, framing
from tunnelbroker.store.owner import StoreLocked

pytestmark = pytest.mark.timeout(60)

CREATE = (
    '<tunnel action="create" type="{type}" proxy="no">\r\n <client>\r\n'
    '  <address type="{family}">{addr}</address>\r\n'
    '  <keepalive interval="5">\r\n    <address type="ipv6">::</address>\r\n  </keepalive>\r\n'
    "{router} </client>\r\n</tunnel>\r\n"
)
ACCEPT = b'Content-length: 35\r\n<tunnel action="accept"></tunnel>\r\n'


def create(type_: str = "v6udpv4", addr: str = "127.0.0.1", router: str = "") -> bytes:
    family = "ipv6" if ":" in addr else "ipv4"
    return framing.encode_content(
        CREATE.format(type=type_, family=family, addr=addr, router=router).encode()
    )


def config(tmp: Path, **over: Any) -> Any:
    base: dict[str, Any] = {
        "data_dir": str(tmp),
        "tsp": {"listen": ["127.0.0.1", "::1"], "port": 0},
        "tunnelserver": {"backend": "none"},
        "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
        "web": {"port": 0},
    }
    for k, v in over.items():
        base.setdefault(k, {}).update(v) if isinstance(v, dict) else base.__setitem__(k, v)
    return load_config(None, base)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(config(tmp_path)) as d:
        yield d


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Any:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Udp:
    """A gogoc-like reliable-UDP peer (blocking; run in a thread)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.s = socket.socket(fam, socket.SOCK_DGRAM)
        _OPEN.append(self.s)
        self.s.settimeout(2)
        self.s.connect((host, port))
        self.seq = 240

    def send(self, payload: bytes, seq: int | None = None) -> None:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        self.s.send(framing.UdpHeader(seq, 1000).to_wire() + payload)

    def recv(self) -> tuple[int, bytes]:
        data = self.s.recv(65536)
        header, payload = framing.split_datagram(data)
        return header.seq, payload

    def call(self, payload: bytes) -> bytes:
        seq = self.seq
        self.send(payload)
        got, reply = self.recv()
        assert got == seq
        return reply

    def silent(self, wait: float = 0.3) -> bool:
        self.s.settimeout(wait)
        try:
            self.s.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.s.settimeout(2)
        return False


def anonymous_udp(
    port: int, type_: str = "v6udpv4", addr: str = "127.0.0.1", host: str = "127.0.0.1"
) -> tuple[Udp, bytes]:
    c = Udp(port, host)
    assert c.call(b"VERSION=2.0.2\r\n").startswith(b"CAPABILITY ")
    assert c.call(b"AUTHENTICATE ANONYMOUS\r\n\0") == b"200 Success\r\n"
    offer = c.call(create(type_, addr))
    assert c.call(ACCEPT) == b""
    return c, offer


def reply_of(framed: bytes) -> framing.Reply:
    return framing.parse_reply(framed.split(b"\r\n", 1)[1])


async def test_udp_session_duplicates_are_answered_from_cache(broker: Daemon) -> None:
    def run() -> None:
        c = Udp(broker.tsp_port)
        c.call(b"VERSION=2.0.2\r\n")
        c.call(b"AUTHENTICATE ANONYMOUS\r\n\0")
        first = c.call(create())
        c.send(create(), seq=c.seq - 1)  # a retransmission of the create
        seq, again = c.recv()
        assert seq == c.seq - 1 and again == first
        assert c.call(ACCEPT) == b""

    await asyncio.to_thread(run)
    assert broker.broker is not None and len(broker.broker.tunnels) == 1


async def test_udp_junk_creates_no_state_and_gets_no_answer(broker: Daemon) -> None:
    def run() -> None:
        c = Udp(broker.tsp_port)
        c.s.send(b"\x00\x01junk")  # not signalling
        c.s.send(b"\xf0\x00")  # a truncated header
        c.send(b"AUTHENTICATE ANONYMOUS\r\n")  # no VERSION first
        c.s.send(b"\x60" + b"\0" * 39)  # IPv6 data with no tunnel
        assert c.silent()

    await asyncio.to_thread(run)
    udp = broker._udp[0].get_protocol()
    assert isinstance(udp, TspUdpProtocol)
    assert udp.peers == {}
    assert udp.dropped >= 3


async def test_udp_malformed_request_gets_500_and_the_session_goes_on(broker: Daemon) -> None:
    def run() -> None:
        c = Udp(broker.tsp_port)
        c.call(b"VERSION=2.0.2\r\n")
        c.call(b"AUTHENTICATE ANONYMOUS\r\n\0")
        assert reply_of(c.call(b"Content-length: 11\r\n<tunnel/>\r\n")).code == 500
        assert reply_of(c.call(b"Content-length: 99\r\n<tunnel/>\r\n")).code == 500
        body = b"<tunnel action='create' type='v6udpv4'><client><address type='ipv4'>1.2.3"
        assert reply_of(c.call(framing.encode_content(body + b"</tunnel>\r\n"))).code == 500
        assert reply_of(c.call(create())).code == 200

    await asyncio.to_thread(run)


async def test_udp_offer_is_what_gogoc_needs(broker: Daemon) -> None:
    _, offer = await asyncio.to_thread(anonymous_udp, broker.tsp_port, "v6anyv4", "10.1.1.1")
    reply = reply_of(offer)
    doc = codec.tunnel_from_xml(reply.xml)
    assert reply.code == 200 and doc.type is not None and doc.type.value == "v6udpv4"
    assert doc.client is not None and doc.server is not None
    for ep in (doc.client, doc.server):
        assert {a.type.value for a in ep.addresses} >= {"ipv4", "ipv6"}
    assert doc.client.dns_servers and doc.client.keepalive is not None
    assert doc.client.keepalive.address is not None


async def test_tcp_digest_md5_sends_rspauth_and_status_separately(broker: Daemon) -> None:
    assert broker.store is not None
    UserService(broker.store, "tunnelbroker").add("alice", "secret-password")

    def run() -> bytes:
        s = socket.create_connection(("127.0.0.1", broker.tsp_port), timeout=2)
        with s:
            s.sendall(b"VERSION=2.0.2\r\n")
            assert s.recv(4096).startswith(b"CAPABILITY TUNNEL=V6V4 AUTH=")
            s.sendall(b"AUTHENTICATE DIGEST-MD5\r\n\0")
            challenge = digest_md5.decode_b64_line(s.recv(4096))
            client = digest_md5.DigestClient("alice", "secret-password", "42", host="x")
            s.sendall(digest_md5.encode_b64_line(client.respond(challenge)))
            first = s.recv(4096)  # gogoc's single recv(): must hold rspauth alone
            client.check_rspauth(digest_md5.decode_b64_line(first))
            assert s.recv(4096) == b"200 Success\r\n"
            body = (
                b'<tunnel action="create" type="v6v4"><client><address type="ipv4">'
                b'127.0.0.1</address><router><prefix length="48"/></router></client>'
                b"</tunnel>\r\n"
            )
            s.sendall(framing.encode_content(body))
            offer = s.recv(8192)
            s.sendall(ACCEPT)
            return offer

    offer = await asyncio.to_thread(run)
    doc = codec.tunnel_from_xml(reply_of(offer).xml)
    assert doc.client is not None and doc.client.router is not None
    prefix = doc.client.router.prefix
    assert prefix is not None and prefix.length == 48
    assert prefix.value is not None and len(prefix.value) == 39  # fully expanded for gogoc


async def test_tcp_plain_in_one_write_and_wrong_password(broker: Daemon) -> None:
    assert broker.store is not None
    UserService(broker.store, "tunnelbroker").add("bob", "secret-password")

    def run(password: bytes) -> bytes:
        s = socket.create_connection(("127.0.0.1", broker.tsp_port), timeout=3)
        with s:
            s.sendall(b"VERSION=2.0.2\r\n")
            s.recv(4096)
            s.sendall(b"AUTHENTICATE PLAIN\r\n\0\0bob\0" + password + b"\r\n")
            return s.recv(4096)

    assert await asyncio.to_thread(run, b"secret-password") == b"200 Success\r\n"
    assert await asyncio.to_thread(run, b"wrong-password") == b"300 Authentication failed\r\n"


async def test_v4v6_over_ipv6(broker: Daemon) -> None:
    _, offer = await asyncio.to_thread(anonymous_udp, broker.tsp_port, "v4v6", "::1", "::1")
    doc = codec.tunnel_from_xml(reply_of(offer).xml)
    assert doc.type is not None and doc.type.value == "v4v6"
    assert doc.client is not None
    v4 = doc.client.addresses[0]
    assert v4.type.value == "ipv4" and v4.length == 30


async def test_sessions_are_rate_limited_per_source(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, limits={"sessions_per_second_per_ipv4": 0.5, "session_burst_per_ipv4": 2}
    )
    async with running(cfg) as d:

        def run() -> list[bytes]:
            out = []
            for _ in range(3):
                c = Udp(d.tsp_port)
                out.append(c.call(b"VERSION=2.0.2\r\n"))
            s = socket.create_connection(("127.0.0.1", d.tsp_port), timeout=2)
            with s:
                out.append(s.recv(100))
            return out

        out = await asyncio.to_thread(run)
    assert out[0].startswith(b"CAPABILITY") and out[1].startswith(b"CAPABILITY")
    assert out[2] == b"530\r\n"
    assert out[3] == b"530 Server too busy\r\n"


async def test_tcp_idle_session_is_closed(tmp_path: Path) -> None:
    async with running(config(tmp_path, tsp={"idle_timeout": 0.5})) as d:

        def run() -> bytes:
            s = socket.create_connection(("127.0.0.1", d.tsp_port), timeout=5)
            with s:
                s.sendall(b"VERSION=2.0.2\r\n")
                s.recv(4096)
                return s.recv(4096)  # b"" once the server closes

        assert await asyncio.to_thread(run) == b""


async def test_tunnels_survive_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    async with running(cfg) as d:
        assert d.store is not None
        UserService(d.store, "tunnelbroker").add("carol", "secret-password")

        def session(port: int) -> bytes:
            c = Udp(port)
            c.call(b"VERSION=2.0.2\r\n")
            c.call(b"AUTHENTICATE PLAIN\r\n\0")
            assert c.call(b"\0carol\0secret-password\r\n") == b"200 Success\r\n"
            offer = c.call(create("v6udpv4", router='  <router><prefix length="56"/></router>\r\n'))
            c.call(ACCEPT)
            return offer

        first = await asyncio.to_thread(session, d.tsp_port)
    async with running(cfg) as d2:
        assert d2.broker is not None and len(d2.broker.tunnels) == 1
        second = await asyncio.to_thread(session, d2.tsp_port)
    a = codec.tunnel_from_xml(reply_of(first).xml)
    b = codec.tunnel_from_xml(reply_of(second).xml)
    assert a.client is not None and b.client is not None
    assert a.client.addresses == b.client.addresses  # same IPv6 after a restart
    assert a.client.router == b.client.router  # and the same prefix


async def test_wildcard_listener_answers_from_the_targeted_address(tmp_path: Path) -> None:
    # 127.0.0.2 is ours too, but the route back to 127.0.0.1 would pick 127.0.0.1 as source;
    # a connected socket (as gogoc uses) drops a reply from anything but 127.0.0.2.
    cfg = config(tmp_path, tsp={"listen": ["0.0.0.0"]})
    async with running(cfg) as d:
        reply = await asyncio.to_thread(
            lambda: Udp(d.tsp_port, "127.0.0.2").call(b"VERSION=2.0.2\r\n")
        )
    assert reply.startswith(b"CAPABILITY ")


def _bound_udp(port: int, local_port: int) -> Udp:
    c = Udp.__new__(Udp)
    c.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _OPEN.append(c.s)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.s.bind(("127.0.0.1", local_port))
    c.s.settimeout(2)
    c.s.connect(("127.0.0.1", port))
    c.seq = 240
    return c


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_new_client_socket_on_the_same_port_starts_a_new_session(broker: Daemon) -> None:
    # gogoc restarts its sequence at 240 on every socket; a NAT may reuse the port.
    local = _free_port()

    def run() -> None:
        for _ in range(2):
            c = _bound_udp(broker.tsp_port, local)
            assert c.call(b"VERSION=2.0.2\r\n").startswith(b"CAPABILITY ")
            assert c.call(b"AUTHENTICATE ANONYMOUS\r\n\0") == b"200 Success\r\n"
            assert reply_of(c.call(create())).code == 200
            assert c.call(ACCEPT) == b""
            c.s.close()

    await asyncio.to_thread(run)
    assert broker.broker is not None and len(broker.broker.tunnels) == 1


async def test_re_signalling_from_new_ports_does_not_pile_up_peers(tmp_path: Path) -> None:
    async with running(config(tmp_path, tsp={"idle_timeout": 0.2})) as d:
        for _ in range(5):
            await asyncio.to_thread(anonymous_udp, d.tsp_port, "v6udpv4", "10.1.1.1")
        await asyncio.sleep(1.2)  # two sweeps
        udp = d._udp[0].get_protocol()
        assert isinstance(udp, TspUdpProtocol)
        assert d.broker is not None and len(d.broker.tunnels) == 1
        (tunnel,) = d.broker.tunnels.values()
        # Only the flow the tunnel now uses is kept.
        assert list(udp.peers) == [(tunnel.client_ipv4, tunnel.client_port)]


async def test_two_racing_re_signals_are_both_answered(broker: Daemon) -> None:
    def run() -> None:
        anonymous_udp(broker.tsp_port, "v6udpv4", "10.2.2.2")
        a, b = Udp(broker.tsp_port), Udp(broker.tsp_port)
        for c in (a, b):
            c.call(b"VERSION=2.0.2\r\n")
            c.call(b"AUTHENTICATE ANONYMOUS\r\n\0")
        assert reply_of(a.call(create(addr="10.2.2.2"))).code == 200
        assert reply_of(b.call(create(addr="10.2.2.2"))).code == 200
        assert a.call(ACCEPT) == b""
        assert b.call(ACCEPT) == b""

    await asyncio.to_thread(run)
    assert broker.broker is not None and len(broker.broker.tunnels) == 1


def test_the_udp_receive_buffer_is_raised() -> None:
    from tunnelbroker.listeners.tsp import set_receive_buffer

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert set_receive_buffer(s, 4 << 20) >= 4 << 20  # CI runs as root: FORCE works


@pytest.mark.postgres
async def test_the_broker_runs_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, database={"url": postgres_url})
    async with running(cfg) as d:
        _, first = await asyncio.to_thread(anonymous_udp, d.tsp_port, "v6udpv4", "10.3.3.3")
    async with running(cfg) as d2:
        assert d2.broker is not None and len(d2.broker.tunnels) == 1
        _, second = await asyncio.to_thread(anonymous_udp, d2.tsp_port, "v6udpv4", "10.3.3.3")
    a = codec.tunnel_from_xml(reply_of(first).xml)
    b = codec.tunnel_from_xml(reply_of(second).xml)
    assert a.client is not None and b.client is not None
    assert a.client.addresses == b.client.addresses


async def test_a_port_in_use_is_a_clear_error_and_nothing_stays_bound(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, tsp={"listen": ["127.0.0.1"], "port": port})
        with pytest.raises(OSError):
            async with running(cfg):
                pass
    # The UDP socket bound before TCP failed was released.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


async def test_a_second_broker_cannot_share_the_udp_port(broker: Daemon) -> None:
    from tunnelbroker.listeners.tsp import bind_socket

    with pytest.raises(OSError):
        bind_socket("127.0.0.1", broker.tsp_port, socket.SOCK_DGRAM).close()


async def test_a_second_broker_on_the_same_store_refuses_to_start(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as d:
        with pytest.raises(StoreLocked, match=r"in use by another process \(the broker, pid"):
            async with running(config(tmp_path)):
                pass
        assert d.broker is not None  # the first one is untouched
    async with running(config(tmp_path)):  # and once it stopped, the store is free again
        pass
