"""The asyncio TSP client against the real broker on loopback (and a few fake brokers).

Every test starts its own broker on 127.0.0.1 and ::1, port 0, UDP and TCP; every
negotiation is bounded by a timeout well under the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tunnelbroker.broker.users import UserService
from tunnelbroker.client import tsp as client_tsp
from tunnelbroker.client.tsp import Negotiated, TcpFlow, TspClientError, UdpFlow, negotiate
from tunnelbroker.config import load_config
from tunnelbroker.daemon import Daemon, running
from tunnelbroker.protocols.tsp.framing import UdpHeader
from tunnelbroker.protocols.tsp.reliable_client import ReliableUdpClient

PASSWORD = "correct horse battery"
TIMEOUT = 10.0
MECHS = ["ANONYMOUS", "PLAIN", "DIGEST-MD5"]
TYPES = ["v6anyv4", "v6v4", "v6udpv4", "v4v6"]


def _config(tmp_path: Path, listen: list[str], port: int = 0, **sections: Any) -> Any:
    return load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "tsp": {"listen": listen, "port": port},
            "tunnelserver": {"backend": "none"},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
            "web": {"port": 0},
            **sections,
        },
    )


@contextlib.asynccontextmanager
async def broker_at(
    tmp_path: Path, listen: list[str], port: int = 0, **sections: Any
) -> AsyncIterator[Daemon]:
    config = _config(tmp_path, listen, port, **sections)
    async with running(config) as daemon:
        assert daemon.store is not None
        users = UserService(daemon.store, config.broker.realm)
        users.add("alice", PASSWORD)
        users.add("bob", PASSWORD)
        yield daemon


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with broker_at(tmp_path, ["127.0.0.1", "::1"]) as daemon:
        yield daemon


@contextlib.asynccontextmanager
async def tunnel(daemon: Daemon, host: str = "127.0.0.1", **kw: Any) -> AsyncIterator[Negotiated]:
    kw.setdefault("timeout", TIMEOUT)
    n = await negotiate(host, port=daemon.tsp_port, **kw)
    try:
        yield n
    finally:
        n.close()
        await asyncio.sleep(0)


def creds(mechanism: str, user: str = "alice") -> dict[str, Any]:
    if mechanism == "ANONYMOUS":
        return {"mechanism": "ANONYMOUS"}
    return {"mechanism": mechanism, "username": user, "password": PASSWORD}


def active(daemon: Daemon) -> list[Any]:
    assert daemon.broker is not None
    return [t for t in daemon.broker.tunnels.values() if t.state == "active"]


async def wait_active(daemon: Daemon, count: int = 1) -> list[Any]:
    """The broker's live tunnels once there are ``count``: over TCP nothing acknowledges our
    accept, so the broker may commit the tunnel a moment after negotiate() returns."""
    for _ in range(200):
        found = active(daemon)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    return active(daemon)


# --------------------------------------------------------------------------------------------
# Every valid type x transport x mechanism
# --------------------------------------------------------------------------------------------

CASES = [
    (transport, mech, kind)
    for transport in ("udp", "tcp")
    for mech in MECHS
    for kind in TYPES
    if not (kind == "v6udpv4" and transport == "tcp")
]


@pytest.mark.parametrize(("transport", "mechanism", "kind"), CASES)
async def test_negotiate_every_type_transport_and_mechanism(
    broker: Daemon, transport: str, mechanism: str, kind: str
) -> None:
    host = "::1" if kind == "v4v6" else "127.0.0.1"
    async with tunnel(broker, host, transport=transport, tunnel_type=kind, **creds(mechanism)) as n:
        expected = "v6v4" if kind == "v6anyv4" else kind
        assert (n.transport, n.mechanism, n.tunnel_type, n.version) == (
            transport,
            mechanism,
            expected,
            "2.0.0",
        )
        assert n.requested_type == kind and n.redirects == ()
        for value in (n.server_ipv4, n.client_ipv4):
            ipaddress.IPv4Address(value)
        for value in (n.server_ipv6, n.client_ipv6):
            ipaddress.IPv6Address(value)
        if kind == "v4v6":
            # Outer endpoints are IPv6, the tunnelled addresses IPv4.
            assert n.client_ipv6 == "::1" and n.keepalive_address is not None
            ipaddress.IPv4Address(n.keepalive_address)
        else:
            assert n.client_ipv4 == "127.0.0.1" == n.local_address
            assert n.keepalive_interval == 30 and n.keepalive_address == n.server_ipv6
        assert n.dns_servers and n.lifetime and n.prefix is None
        assert isinstance(n.flow, UdpFlow if transport == "udp" else TcpFlow)
        (record,) = await wait_active(broker)
        assert record.type == expected and record.transport == transport
        assert (record.user_id is None) == (mechanism == "ANONYMOUS")


async def test_auto_transport_uses_udp_first(broker: Daemon) -> None:
    async with tunnel(broker) as n:
        assert n.transport == "udp" and n.mechanism == "ANONYMOUS"


async def test_any_mechanism_prefers_digest_md5(broker: Daemon) -> None:
    async with tunnel(broker, username="alice", password=PASSWORD) as n:
        assert n.mechanism == "DIGEST-MD5"


async def test_v6udpv4_keeps_the_signalling_flow_open_for_data(broker: Daemon) -> None:
    async with tunnel(broker, tunnel_type="v6udpv4") as n:
        assert n.tunnel_type == "v6udpv4"
        flow = n.flow
        assert isinstance(flow, UdpFlow)
        assert flow.remote == ("127.0.0.1", broker.tsp_port)
        assert not flow.transport.is_closing()
        # The broker knows the tunnel by this very 5-tuple.
        (record,) = await wait_active(broker)
        assert record.client_port == flow.local[1]
        flow.send(bytes([0x60]) + bytes(39))  # a bare IPv6 header: data, not signalling
    assert n.flow is None and flow.transport.is_closing()


# --------------------------------------------------------------------------------------------
# NAT discovery, router mode, stable addresses
# --------------------------------------------------------------------------------------------


async def test_nat_discovery_gives_v6udpv4_over_udp(broker: Daemon) -> None:
    async with tunnel(broker, client_ipv4="10.1.1.1") as n:
        assert n.transport == "udp" and n.tunnel_type == "v6udpv4"
        assert n.local_address == "127.0.0.1"


async def test_nat_over_tcp_is_refused_with_303(broker: Daemon) -> None:
    with pytest.raises(TspClientError) as e:
        await negotiate(
            "127.0.0.1",
            port=broker.tsp_port,
            transport="tcp",
            client_ipv4="10.1.1.1",
            timeout=TIMEOUT,
        )
    assert e.value.code == 303


@pytest.mark.parametrize("length", [56, 48])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_router_mode_gets_a_prefix_of_that_length(
    broker: Daemon, length: int, transport: str
) -> None:
    async with tunnel(
        broker,
        transport=transport,
        router=length,
        dns_servers=("ns1.example.net",),
        **creds("DIGEST-MD5"),
    ) as n:
        assert n.prefix is not None and n.prefix_length == length
        net = ipaddress.IPv6Network(f"{n.prefix}/{n.prefix_length}")  # strict: a network
        assert net in ipaddress.IPv6Network("2001:db8:c000::/34").subnets(new_prefix=length)
        assert n.delegation_servers == ("ns1.example.net",)
        (record,) = await wait_active(broker)
        assert record.delegated_prefix == str(net)


async def test_router_mode_default_length(broker: Daemon) -> None:
    async with tunnel(broker, router=0, **creds("PLAIN")) as n:
        assert n.prefix_length == 56  # pools.default_prefix_length


async def test_anonymous_router_is_refused_with_522(broker: Daemon) -> None:
    with pytest.raises(TspClientError) as e:
        await negotiate("127.0.0.1", port=broker.tsp_port, router=56, timeout=TIMEOUT)
    assert e.value.code == 522 and "anonymous" in e.value.text.lower()


async def test_same_user_reconnecting_keeps_address_and_prefix(broker: Daemon) -> None:
    async with tunnel(broker, transport="udp", router=56, **creds("DIGEST-MD5")) as first:
        pass
    async with tunnel(broker, transport="tcp", router=56, **creds("PLAIN")) as second:
        pass
    assert (second.client_ipv6, second.prefix) == (first.client_ipv6, first.prefix)
    assert len(await wait_active(broker)) == 1
    # Another user gets other addresses.
    async with tunnel(
        broker, transport="udp", router=56, bind="127.0.0.2", **creds("PLAIN", "bob")
    ) as other:
        assert other.client_ipv4 == "127.0.0.2"
        assert other.client_ipv6 != first.client_ipv6 and other.prefix != first.prefix


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "DIGEST-MD5"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_wrong_password_is_300(broker: Daemon, mechanism: str, transport: str) -> None:
    for user in ("alice", "mallory"):
        with pytest.raises(TspClientError) as e:
            await negotiate(
                "127.0.0.1",
                port=broker.tsp_port,
                transport=transport,
                mechanism=mechanism,
                username=user,
                password="not the password",
                timeout=TIMEOUT,
            )
        assert e.value.code == 300
        assert str(e.value) == "127.0.0.1: 300 Authentication failed"


async def test_unsupported_type_is_303(tmp_path: Path) -> None:
    async with broker_at(
        tmp_path,
        ["127.0.0.1"],
        tsp={"listen": ["127.0.0.1"], "port": 0, "tunnel_types": ["v6v4", "v6anyv4"]},
    ) as daemon:
        with pytest.raises(TspClientError) as e:
            await negotiate(
                "127.0.0.1", port=daemon.tsp_port, tunnel_type="v6udpv4", timeout=TIMEOUT
            )
        assert e.value.code == 303 and "v6udpv4" in e.value.text


async def test_v4v6_needs_an_ipv6_broker_address(broker: Daemon) -> None:
    with pytest.raises(TspClientError) as e:
        await negotiate("127.0.0.1", port=broker.tsp_port, tunnel_type="v4v6", timeout=TIMEOUT)
    assert "IPv6" in str(e.value) and e.value.code is None


async def test_bad_arguments_are_value_errors(broker: Daemon) -> None:
    port = broker.tsp_port
    bad: list[dict[str, Any]] = [
        {"tunnel_type": "v6udpv4", "transport": "tcp"},
        {"tunnel_type": "gre"},
        {"transport": "sctp"},
        {"mechanism": "PLAIN"},
        {"mechanism": "KERBEROS"},
        {"dns_servers": ("ns1.example.net",)},
        {"client_ipv4": "::1"},
        {"client_ipv4": "nonsense"},
        {"router": 129},
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            await negotiate("127.0.0.1", port=port, **kw)


# --------------------------------------------------------------------------------------------
# Transport fallback, timeouts
# --------------------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _proxy_to(
    port: int, first_line: Callable[[bytes], bytes | None] | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A TCP handler that forwards to the broker, or answers the first line itself."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        answer = first_line(line) if first_line is not None else None
        if answer is not None:
            writer.write(answer)
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(line)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[Any]] = set()

    async def tracked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(r, w)
        finally:
            w.close()

    server = await asyncio.start_server(tracked, host, port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


class _Silent(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass


async def test_auto_falls_back_to_tcp_on_icmp_port_unreachable(broker: Daemon) -> None:
    async with tcp_server(_proxy_to(broker.tsp_port)) as port:
        # Nothing listens on UDP at this port: the kernel answers with port unreachable.
        n = await negotiate("127.0.0.1", port=port, timeout=TIMEOUT)
        try:
            assert n.transport == "tcp" and n.tunnel_type == "v6v4"
        finally:
            n.close()
            await asyncio.sleep(0)


async def test_auto_falls_back_to_tcp_when_udp_is_silent(
    broker: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quicker retransmissions than the 1 s default: 0.5 + 1 + 2 s before switching.
    monkeypatch.setattr(
        client_tsp, "ReliableUdpClient", functools.partial(ReliableUdpClient, initial_rto=0.5)
    )
    loop = asyncio.get_running_loop()
    async with tcp_server(_proxy_to(broker.tsp_port)) as port:
        silent, _ = await loop.create_datagram_endpoint(_Silent, local_addr=("127.0.0.1", port))
        try:
            started = loop.time()
            n = await negotiate("127.0.0.1", port=port, timeout=TIMEOUT)
            n.close()
            assert n.transport == "tcp"
            assert 3.0 <= loop.time() - started < 6.0
        finally:
            silent.close()
            await asyncio.sleep(0)


async def test_v6udpv4_never_falls_back_to_tcp(broker: Daemon) -> None:
    async with tcp_server(_proxy_to(broker.tsp_port)) as port:
        with pytest.raises(TspClientError) as e:
            await negotiate("127.0.0.1", port=port, tunnel_type="v6udpv4", timeout=TIMEOUT)
        assert "UDP" in str(e.value) and "unreachable" in str(e.value)


async def test_overall_timeout(broker: Daemon) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with tcp_server(mute) as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TspClientError) as e:
            await negotiate("127.0.0.1", port=port, transport="tcp", timeout=0.5)
        assert "no tunnel within 0.5 s" in str(e.value)
        assert loop.time() - started < 2.0


async def test_nothing_listening_at_all(broker: Daemon) -> None:
    async with tcp_server(_proxy_to(broker.tsp_port)) as port:
        pass  # the port is free again
    with pytest.raises(TspClientError) as e:
        await negotiate("127.0.0.1", port=port, timeout=TIMEOUT)
    assert "TCP" in str(e.value) and e.value.code is None


# --------------------------------------------------------------------------------------------
# Version fallback
# --------------------------------------------------------------------------------------------


async def test_version_falls_back_to_1_0_1_only_on_302(broker: Daemon) -> None:
    seen: list[bytes] = []

    def old_broker(line: bytes) -> bytes | None:
        seen.append(line)
        return b"302 Unsupported client version\r\n" if line == b"VERSION=2.0.0\r\n" else None

    async with tcp_server(_proxy_to(broker.tsp_port, old_broker)) as port:
        n = await negotiate("127.0.0.1", port=port, transport="tcp", timeout=TIMEOUT)
        try:
            assert n.version == "1.0.1" and n.tunnel_type == "v6v4"
        finally:
            n.close()
            await asyncio.sleep(0)
    assert seen == [b"VERSION=2.0.0\r\n", b"VERSION=1.0.1\r\n"]
    # TSP 1.0 has no accept step: the broker made the offer stand.
    (record,) = await wait_active(broker)
    assert record.type == "v6v4"


async def test_302_to_every_version_is_an_error() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"302 Unsupported client version\r\n")

    async with tcp_server(refuse) as port:
        with pytest.raises(TspClientError) as e:
            await negotiate("127.0.0.1", port=port, transport="tcp", timeout=TIMEOUT)
        assert e.value.code == 302 and "2.0.0, 1.0.1" in e.value.text


# --------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------


def _referral(*hosts: str, code: int = 1302) -> bytes:
    brokers = "".join(
        f'<broker><address type="{"ipv6" if ":" in h else "ipv4"}">{h}</address></broker>'
        for h in hosts
    )
    return (
        f"{code} Unsupported client version\r\n"
        f'<tunnel action="list" type="broker">{brokers}</tunnel>\r\n'
    ).encode()


def _redirector(
    *hosts: str,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(_referral(*hosts))
        await writer.drain()

    return handle


class _UdpRedirector(asyncio.DatagramProtocol):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        UdpHeader.from_wire(data)
        assert self.transport is not None
        self.transport.sendto(data[:8] + _referral(*self.hosts), addr)


async def test_redirect_at_version_over_tcp(broker: Daemon) -> None:
    async with tcp_server(_redirector("127.0.0.1"), "127.0.0.2", broker.tsp_port):
        async with tunnel(broker, "127.0.0.2", transport="tcp", **creds("DIGEST-MD5")) as n:
            # DIGEST-MD5 after a redirect uses the broker's address in digest-uri.
            assert n.server == "127.0.0.1" and n.redirects == ("127.0.0.1",)
            assert n.mechanism == "DIGEST-MD5"


async def test_redirect_over_udp_skips_unreachable_brokers(broker: Daemon) -> None:
    loop = asyncio.get_running_loop()
    redirector, _ = await loop.create_datagram_endpoint(
        lambda: _UdpRedirector("127.0.0.3", "127.0.0.1"),
        local_addr=("127.0.0.2", broker.tsp_port),
    )
    try:
        async with tunnel(broker, "127.0.0.2", transport="udp") as n:
            assert n.server == "127.0.0.1" and n.transport == "udp"
            assert n.redirects == ("127.0.0.3, 127.0.0.1",)
    finally:
        redirector.close()
        await asyncio.sleep(0)


async def test_redirect_loop_is_cut_after_5_hops(broker: Daemon) -> None:
    async with tcp_server(_redirector("127.0.0.2"), "127.0.0.2", broker.tsp_port):
        with pytest.raises(TspClientError) as e:
            await negotiate("127.0.0.2", port=broker.tsp_port, transport="tcp", timeout=TIMEOUT)
    assert "more than 5 redirects" in str(e.value) and e.value.code == 1302


async def test_redirect_to_nowhere_is_an_error(broker: Daemon) -> None:
    async with tcp_server(_redirector("127.0.0.3", "127.0.0.4"), "127.0.0.2", broker.tsp_port):
        with pytest.raises(TspClientError) as e:
            await negotiate("127.0.0.2", port=broker.tsp_port, transport="tcp", timeout=TIMEOUT)
    assert "no broker reachable" in str(e.value)


async def test_framed_referral_from_a_full_broker(broker: Daemon, tmp_path: Path) -> None:
    """A broker at capacity answers 1301 with its configured referrals (RFC 5572 App. B)."""
    async with broker_at(
        tmp_path / "full",
        ["127.0.0.2"],
        broker.tsp_port,
        limits={"max_tunnels": 1},
        tsp={"listen": ["127.0.0.2"], "port": broker.tsp_port, "referrals": ["127.0.0.1"]},
    ) as full:
        async with tunnel(full, "127.0.0.2", transport="tcp") as first:
            assert first.server == "127.0.0.2"
        async with tunnel(full, "127.0.0.2", transport="tcp", **creds("PLAIN")) as n:
            assert n.server == "127.0.0.1" and n.redirects == ("127.0.0.1",)
        assert len(await wait_active(broker)) == 1 and len(active(full)) == 1
