"""``fetch``: our TIC client against our TIC listener over loopback, with and without TLS."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from tests.listeners.test_tic import TUNNEL, make_certificate, memory_backend, tic_server

from tunnelbroker.client.tic import TicClientError, fetch
from tunnelbroker.protocols.tic import TicListEntry, TicTunnel

pytestmark = pytest.mark.timeout(60)

OTHER = TicTunnel("T2", "6in4-heartbeat", "2001:db8:2::2", "2001:db8:2::1", 64, "mock01",
                  "heartbeat", "127.0.0.1", password="hb")  # fmt: skip


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_fetch_plain(host: str) -> None:
    async with tic_server() as (service, port):
        result = await fetch(host, "TEST-SIXXS", "secretpass", port=port)
        assert result.tunnel == TUNNEL and not result.tls
        assert result.entries == (TicListEntry("T1", "2001:db8:1:1::2", "ayiya", "mock01"),)
        assert result.clock_offset is not None and abs(result.clock_offset) < 5
        assert service.logins == 1
        for _ in range(100):  # our QUIT ends the session on the server
            if not service.active:
                break
            await asyncio.sleep(0.02)
        assert not service.active


async def test_fetch_named_tunnel_and_list() -> None:
    async with tic_server(memory_backend(TUNNEL, OTHER)) as (_, port):
        named = await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, tunnel_id="T2")
        assert named.tunnel == OTHER and named.entries == ()
        listing = await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, list_only=True)
        assert listing.tunnel is None and [e.tunnel_id for e in listing.entries] == ["T1", "T2"]
        with pytest.raises(TicClientError, match="several tunnels"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port)
        with pytest.raises(TicClientError, match="no such tunnel: T7"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, tunnel_id="T7")


async def test_wrong_password() -> None:
    async with tic_server() as (service, port):
        with pytest.raises(TicClientError) as e:
            await fetch("127.0.0.1", "TEST-SIXXS", "wrong", port=port)
        assert e.value.reason == "login failed"
        assert e.value.server_text == "400 Authentication failed"
        assert service.login_failures == 1


async def test_tls_verified_with_the_ca(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with tic_server(certificate=cert) as (service, port):
        result = await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port,
                             require_tls=True, cafile=cert[0])  # fmt: skip
        assert result.tls and result.tunnel == TUNNEL
        result6 = await fetch("::1", "TEST-SIXXS", "secretpass", port=port, starttls=True,
                              cafile=cert[0])  # fmt: skip
        assert result6.tls
        assert service.tls_sessions == 2


async def test_tls_unverified_only_when_asked(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with tic_server(certificate=cert) as (_, port):
        with pytest.raises(TicClientError, match="TLS"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, starttls=True)
        result = await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port,
                             starttls=True, verify=False)  # fmt: skip
        assert result.tls and result.tunnel == TUNNEL


async def test_tls_refused_by_a_plain_server() -> None:
    async with tic_server() as (_, port):
        with pytest.raises(TicClientError, match="TLS is required"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, require_tls=True)
        result = await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, starttls=True)
        assert not result.tls and result.tunnel == TUNNEL


async def test_clock_off() -> None:
    async with tic_server() as (_, port):
        with pytest.raises(TicClientError, match="clock is off by 1000 seconds"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port,
                        clock=lambda: time.time() + 1000)  # fmt: skip


async def test_nothing_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TicClientError, match="cannot talk to"):
        await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port)


async def test_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TicClientError, match="no answer"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port, timeout=0.3)
    finally:
        server.close()
        await server.wait_closed()


async def test_server_hangs_up() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"200 hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(rude, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TicClientError, match="connection closed by the server"):
            await fetch("127.0.0.1", "TEST-SIXXS", "secretpass", port=port)
    finally:
        server.close()
        await server.wait_closed()


async def test_bad_arguments() -> None:
    with pytest.raises(TicClientError, match="one word"):
        await fetch("127.0.0.1", "two words", "pw", port=1)
