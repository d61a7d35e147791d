"""The client data plane's pure parts and its reconnect loop (negotiate and the tunnel faked).

The TUN and sockets themselves run in the lab: tests/e2e/test_client_lab.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.listeners.test_tic import memory_backend, tic_server

from tunnelbroker.client import dataplane
from tunnelbroker.client.dataplane import (
    FLOW_CLOSED,
    KEEPALIVE_LOST,
    SOURCE_CHANGED,
    STOPPED,
    ayiya_delivered,
    backoff_delay,
    decapsulate_6in4,
    local_ipv4_towards,
    run_client,
    run_tunnel,
)
from tunnelbroker.client.sixxs import tic_negotiate
from tunnelbroker.client.tic import TicClientError
from tunnelbroker.client.tsp import Negotiated, TspClientError
from tunnelbroker.protocols.ayiya import AyiyaDrop, AyiyaPacket, OpCode
from tunnelbroker.tunnelserver.packet import build_ipv4, build_ipv6

SERVER4 = ipaddress.IPv4Address("198.51.100.1").packed
CLIENT4 = ipaddress.IPv4Address("198.51.100.10").packed
INNER = build_ipv6(b"\x20" + b"\0" * 15, b"\x20" + b"\0" * 14 + b"\1", 59, b"")


def negotiated(**kw: Any) -> Negotiated:
    base: dict[str, Any] = dict(
        server="198.51.100.1",
        server_address="198.51.100.1",
        port=3653,
        transport="udp",
        version="2.0.0",
        mechanism="ANONYMOUS",
        requested_type="v6anyv4",
        tunnel_type="v6udpv4",
        server_ipv4="198.51.100.1",
        server_ipv6="2001:db8:8000:1::1",
        client_ipv4="198.51.100.10",
        client_ipv6="2001:db8:8000:1::2",
        local_address="198.51.100.10",
    )
    return Negotiated(**{**base, **kw})


# ------------------------------------------------------------------------------ 6in4 ingress


def test_decapsulate_takes_the_inner_packet_from_our_server() -> None:
    outer = build_ipv4(SERVER4, CLIENT4, 41, INNER)
    assert decapsulate_6in4(outer, SERVER4) == INNER


def test_decapsulate_skips_ipv4_options() -> None:
    outer = bytearray(build_ipv4(SERVER4, CLIENT4, 41, b"\1\1\1\0" + INNER))
    outer[0] = 0x46  # IHL 6: the four bytes above are options (NOPs, EOL)
    assert decapsulate_6in4(bytes(outer), SERVER4) == INNER


@pytest.mark.parametrize(
    "outer",
    [
        build_ipv4(CLIENT4, CLIENT4, 41, INNER),  # another source: the ingress check
        build_ipv4(SERVER4, CLIENT4, 4, INNER),  # not protocol 41
        build_ipv4(SERVER4, CLIENT4, 41, b"\x45" + INNER[1:]),  # inner is not IPv6
        build_ipv4(SERVER4, CLIENT4, 41, INNER[:39]),  # no room for an IPv6 header
        INNER,  # not IPv4 at all
        b"",
        b"\x4f" + b"\0" * 30,  # IHL longer than the packet
        b"\x44" + b"\0" * 60,  # IHL below 5
    ],
)
def test_decapsulate_drops_the_rest(outer: bytes) -> None:
    assert decapsulate_6in4(outer, SERVER4) is None


# ------------------------------------------------------------------------------ AYIYA from the PoP


@pytest.mark.parametrize(
    ("opcode", "delivered"),
    [
        (OpCode.FORWARD, True),
        (OpCode.ECHO_REQUEST, True),  # AICCU writes it to the TUN too (sixxs.md §3.3)
        (OpCode.ECHO_REQUEST_FORWARD, True),
        (OpCode.NOOP, False),
        (OpCode.ECHO_RESPONSE, False),
        (OpCode.MOTD, False),
    ],
)
def test_which_ayiya_datagrams_reach_the_tun(opcode: OpCode, delivered: bool) -> None:
    packet = AyiyaPacket(opcode, 41, 0, bytes(16), bytes(20), INNER, b"")
    assert ayiya_delivered(packet) == (INNER if delivered else None)
    ipv4 = build_ipv4(SERVER4, CLIENT4, 59, b"")
    assert ayiya_delivered(AyiyaPacket(opcode, 4, 0, bytes(16), bytes(20), ipv4, b"")) is None
    assert ayiya_delivered(AyiyaDrop.BAD_SIGNATURE) is None


# ------------------------------------------------------------------------------ helpers


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    assert [backoff_delay(f, 1.0) for f in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(f, 0.0) for f in range(1, 4)] == [0.5, 1, 2]
    assert backoff_delay(10_000, 1.0) == 60
    assert backoff_delay(3, 1.0, cap=3.0) == 3


def test_local_ipv4_towards_a_local_address() -> None:
    assert local_ipv4_towards("127.0.0.1", 9) == "127.0.0.1"


@pytest.mark.parametrize(
    ("prefix", "length", "expected"),
    [
        ("2001:db8:c000:100::", 56, "2001:db8:c000:100::1/64"),
        ("2001:db8:c000:1::", 64, "2001:db8:c000:1::1/64"),
        ("2001:db8:c000:1:8000::", 80, "2001:db8:c000:1:8000::1/80"),
    ],
)
def test_lan_address_is_the_first_address_of_the_first_64(
    prefix: str, length: int, expected: str
) -> None:
    assert str(dataplane._lan_address(prefix, length)) == expected


async def test_run_tunnel_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="gre"):
        await run_tunnel(negotiated(tunnel_type="gre"), stop=asyncio.Event())
    with pytest.raises(ValueError, match="UDP flow"):
        await run_tunnel(negotiated(), stop=asyncio.Event())  # v6udpv4 without its flow


# ------------------------------------------------------------------------------ reconnect loop


Outcome = str | BaseException


class Fakes:
    """Scripted negotiations and tunnel endings, and the backoff sleeps asked for."""

    def __init__(self, negotiations: list[Outcome], tunnels: list[Outcome]) -> None:
        self.negotiations = negotiations
        self.tunnels = tunnels
        self.sleeps: list[float] = []
        self.up: list[Negotiated] = []
        self.calls: list[dict[str, Any]] = []

    async def negotiate(self, server: str, **kw: Any) -> Negotiated:
        self.calls.append(kw)
        step = self.negotiations.pop(0)
        if isinstance(step, BaseException):
            raise step
        return negotiated(client_ipv6=step)

    async def run_tunnel(
        self,
        n: Negotiated,
        *,
        stop: asyncio.Event,
        on_up: Callable[[Negotiated], None] | None = None,
        **kw: Any,
    ) -> str:
        step = self.tunnels.pop(0)
        if isinstance(step, BaseException):
            raise step
        if on_up is not None:
            on_up(n)
        if step == STOPPED:
            stop.set()
        return step

    async def sleep(self, stop: asyncio.Event, delay: float) -> None:
        self.sleeps.append(delay)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Fakes]]:
    def make(negotiations: list[Outcome], tunnels: list[Outcome]) -> Fakes:
        f = Fakes(negotiations, tunnels)
        monkeypatch.setattr(dataplane, "negotiate", f.negotiate)
        monkeypatch.setattr(dataplane, "run_tunnel", f.run_tunnel)
        monkeypatch.setattr(dataplane, "_sleep_or_stop", f.sleep)
        return f

    yield make


async def client(f: Fakes) -> None:
    await run_client(
        "broker",
        stop=asyncio.Event(),
        on_up=f.up.append,
        rand=lambda: 1.0,
        transport="udp",
        username="carol",
    )


async def test_keepalive_loss_renegotiates_after_a_second(fakes: Callable[..., Fakes]) -> None:
    f = fakes(["2001:db8::2", "2001:db8::2"], [KEEPALIVE_LOST, STOPPED])
    await client(f)
    assert [n.client_ipv6 for n in f.up] == ["2001:db8::2", "2001:db8::2"]
    assert f.sleeps == [1.0]
    assert f.calls == [{"transport": "udp", "username": "carol"}] * 2


async def test_failures_back_off_exponentially(fakes: Callable[..., Fakes]) -> None:
    busy = TspClientError("Server too busy", 530)
    unreachable = TspClientError("no answer")
    f = fakes(["a", busy, unreachable, busy, "b"], [FLOW_CLOSED, STOPPED])
    await client(f)
    assert f.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert len(f.up) == 2


async def test_a_new_source_address_reconnects_at_once(fakes: Callable[..., Fakes]) -> None:
    f = fakes(["a", "b", "c"], [SOURCE_CHANGED, SOURCE_CHANGED, STOPPED])
    await client(f)
    assert f.sleeps == [] and len(f.up) == 3


async def test_a_long_lived_tunnel_resets_the_backoff(fakes: Callable[..., Fakes]) -> None:
    # Start and end times of each tunnel: 5 s, 5 s, 990 s, then stopped.
    clock = iter([0.0, 5.0, 10.0, 15.0, 20.0, 1010.0, 2000.0])
    f = fakes(["a", "b", "c", "d"], [KEEPALIVE_LOST, KEEPALIVE_LOST, KEEPALIVE_LOST, STOPPED])
    await run_client("broker", stop=asyncio.Event(), rand=lambda: 1.0, clock=lambda: next(clock))
    assert f.sleeps == [1.0, 2.0, 1.0]


async def test_a_permanent_refusal_ends_the_loop(fakes: Callable[..., Fakes]) -> None:
    f = fakes(["a", TspClientError("Authentication failed", 300)], [KEEPALIVE_LOST])
    with pytest.raises(TspClientError) as e:
        await client(f)
    assert e.value.code == 300


async def test_the_first_tunnel_failing_to_come_up_is_fatal(fakes: Callable[..., Fakes]) -> None:
    f = fakes(["a"], [PermissionError(1, "no /dev/net/tun for you")])
    with pytest.raises(PermissionError):
        await client(f)


async def test_later_tunnel_failures_are_retried(fakes: Callable[..., Fakes]) -> None:
    f = fakes(["a", "b", "c"], [KEEPALIVE_LOST, OSError(16, "busy"), STOPPED])
    await client(f)
    assert f.sleeps == [1.0, 2.0] and len(f.up) == 2


async def test_stop_during_the_backoff_ends_the_loop(
    fakes: Callable[..., Fakes], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = fakes(["a"], [KEEPALIVE_LOST])

    async def interrupted(stop: asyncio.Event, delay: float) -> None:
        stop.set()  # SIGTERM while waiting to reconnect

    monkeypatch.setattr(dataplane, "_sleep_or_stop", interrupted)
    await client(f)
    assert len(f.calls) == 1


async def test_stopped_before_starting_does_nothing(fakes: Callable[..., Fakes]) -> None:
    f = fakes([], [])
    stop = asyncio.Event()
    stop.set()
    await run_client("broker", stop=stop)
    assert f.calls == []


# ------------------------------------------------------------------------------ TIC in the loop
# The negotiator is a real TIC login (client.sixxs.tic_negotiate) against a TIC server started
# here, a closed port or a server that resets; only the backoff sleeps are recorded, not slept.

TIC_USER, TIC_PASSWORD = "TEST-SIXXS", "secretpass"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def sleep(stop: asyncio.Event, delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(dataplane, "_sleep_or_stop", sleep)
    return recorded


class TicLogins:
    """A TIC negotiator for ``run_client`` that counts its calls; from call ``stop_at`` on it
    sets ``stop`` first (the loop then ends after that attempt)."""

    def __init__(self, port: int, stop: asyncio.Event, stop_at: int = 0, **kw: Any) -> None:
        self.port, self.stop, self.stop_at, self.kw = port, stop, stop_at, kw
        self.calls = 0

    async def __call__(self) -> Negotiated:
        self.calls += 1
        if self.stop_at and self.calls >= self.stop_at:
            self.stop.set()
        kw = {"username": TIC_USER, "password": TIC_PASSWORD, "timeout": 5.0, **self.kw}
        return await tic_negotiate("127.0.0.1", port=self.port, **kw)


async def loop(logins: TicLogins) -> None:
    await asyncio.wait_for(
        run_client("127.0.0.1", stop=logins.stop, negotiator=logins, rand=lambda: 1.0), 30
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"password": "wrong"}, "login failed: 400 Authentication failed"),
        ({"tunnel_id": "T9"}, "no such tunnel: T9: 400 Unknown tunnel"),
        ({"require_tls": True}, "the server refused starttls and TLS is required: 400 "),
    ],
    ids=["wrong-password", "unknown-tunnel", "tls-required"],
)
async def test_a_permanent_tic_refusal_stops_without_retrying(
    sleeps: list[float], kw: dict[str, Any], reason: str
) -> None:
    async with tic_server() as (service, port):
        logins = TicLogins(port, asyncio.Event(), **kw)
        with pytest.raises(TicClientError) as e:
            await loop(logins)
    assert str(e.value).startswith(reason) and e.value.permanent
    assert logins.calls == 1 and sleeps == []
    assert service.login_failures == (1 if "password" in kw else 0)


@pytest.mark.timeout(60)
async def test_tic_server_unreachable_is_retried_with_backoff(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    logins = TicLogins(closed_port(), asyncio.Event(), stop_at=4)
    with caplog.at_level(logging.WARNING, logger="tunnelbroker.client.dataplane"):
        await loop(logins)
    assert logins.calls == 4 and sleeps == [1.0, 2.0, 4.0]
    assert caplog.text.count("TIC failed: cannot talk to 127.0.0.1 port") == 4


@pytest.mark.timeout(60)
async def test_a_tic_connection_reset_is_retried(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    resets = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        resets += 1
        # SO_LINGER 0: close() sends an RST instead of a FIN.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        logins = TicLogins(port, asyncio.Event(), stop_at=3)
        with caplog.at_level(logging.WARNING, logger="tunnelbroker.client.dataplane"):
            await loop(logins)
    finally:
        server.close()
        await server.wait_closed()
    assert logins.calls == 3 and resets == 3 and sleeps == [1.0, 2.0]
    assert caplog.text.count("TIC failed: cannot talk to 127.0.0.1") == 3
    assert "Connection reset by peer" in caplog.text


@pytest.mark.timeout(60)
async def test_a_busy_tic_server_is_retried(sleeps: list[float]) -> None:
    async with tic_server(max_connections=0) as (service, port):
        logins = TicLogins(port, asyncio.Event(), stop_at=2)
        await loop(logins)
    assert logins.calls == 2 and sleeps == [1.0] and service.sessions_refused == 2


@pytest.mark.timeout(60)
async def test_tic_retries_until_the_server_is_back_then_a_refusal_ends_it(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tunnel itself is not what is tested: it "runs" and loses its keepalive at once.
    ran: list[Negotiated] = []

    async def tunnel(n: Negotiated, **kw: Any) -> str:
        ran.append(n)
        return KEEPALIVE_LOST

    monkeypatch.setattr(dataplane, "run_tunnel", tunnel)
    backend = memory_backend()
    async with tic_server(backend) as (_, port):
        down = closed_port()
        stop = asyncio.Event()
        logins = TicLogins(down, stop)

        async def negotiator() -> Negotiated:
            # Two attempts find nothing listening; then the server is there, and after the
            # first tunnel the account's password changes.
            if logins.calls == 2:
                logins.port = port
            if len(ran) == 1:
                backend.add_user(TIC_USER, "changed", backend.users[TIC_USER].tunnels)
            return await logins()

        with pytest.raises(TicClientError, match="login failed") as e:
            await asyncio.wait_for(
                run_client("127.0.0.1", stop=stop, negotiator=negotiator, rand=lambda: 1.0), 30
            )
    assert e.value.permanent and logins.calls == 4 and len(ran) == 1
    assert ran[0].tunnel_type == "ayiya"
    # 1 and 2 s after the two failures, 4 s after the tunnel's end (one that did not stay up
    # STABLE_AFTER seconds counts as a failure too).
    assert sleeps == [1.0, 2.0, 4.0]
