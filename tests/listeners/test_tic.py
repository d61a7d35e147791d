"""The TIC listener on real loopback sockets: AICCU's exchange, STARTTLS, limits, timeouts."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tunnelbroker.listeners.tic import (
    WRITE_GAP,
    LoginLimit,
    TicService,
    bound_port,
    start_tic,
    tls_context,
)
from tunnelbroker.protocols.tic import MemoryBackend, ServerSettings, TicTunnel

pytestmark = pytest.mark.timeout(60)

TUNNEL = TicTunnel(
    tunnel_id="T1",
    type="ayiya",
    ipv6_endpoint="2001:db8:1:1::2",
    ipv6_pop="2001:db8:1:1::1",
    ipv6_prefix_length=64,
    pop_id="mock01",
    ipv4_endpoint="ayiya",
    ipv4_pop="127.0.0.1",
    password="tunnelpw",
    heartbeat_interval=60,
)
CHALLENGE = "0085d68fcd0dc670304021476a66accd"
RESPONSE = "7c2dc3d2d7fbb045c7e54af154b61fa4"


def make_certificate(directory: Path) -> tuple[str, str]:
    """A throw-away self-signed certificate for localhost, 127.0.0.1 and ::1 (openssl CLI)."""
    cert, key = directory / "tic.crt", directory / "tic.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return str(cert), str(key)


def memory_backend(*tunnels: TicTunnel) -> MemoryBackend:
    backend = MemoryBackend()
    backend.add_user("TEST-SIXXS", "secretpass", tunnels or (TUNNEL,))
    return backend


@asynccontextmanager
async def tic_server(
    backend: MemoryBackend | None = None,
    certificate: tuple[str, str] | None = None,
    hosts: tuple[str, ...] = ("127.0.0.1", "::1"),
    random_bytes: Callable[[int], bytes] | None = None,
    **kw: object,
) -> AsyncIterator[tuple[TicService, int]]:
    idle = kw.pop("idle_timeout", 60.0)
    settings = ServerSettings(host_name="test", tls_available=certificate is not None,
                              idle_timeout=idle)  # type: ignore[arg-type]  # fmt: skip
    ctx = tls_context(*certificate) if certificate else None
    extra = {} if random_bytes is None else {"random_bytes": random_bytes}
    service = TicService(backend or memory_backend(), settings, ctx, **extra, **kw)  # type: ignore[arg-type]
    servers = await start_tic(service, list(hosts), 0)
    try:
        yield service, bound_port(servers)
    finally:
        for server in servers:
            server.close()
        service.close_all()
        for server in servers:
            await server.wait_closed()


class Line:
    """A line-oriented raw client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Line:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def read(self) -> str:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        return line.decode().rstrip("\n")

    async def ask(self, command: str) -> str:
        self.writer.write(command.encode() + b"\n")
        await self.writer.drain()
        return await self.read()

    async def block(self, command: str) -> list[str]:
        lines = [await self.ask(command)]
        while lines[0].startswith("201") and not lines[-1].startswith("202"):
            lines.append(await self.read())
        return lines

    async def login(self, response: str = RESPONSE) -> str:
        await self.ask("username TEST-SIXXS")
        await self.ask("challenge md5")
        return await self.ask(f"authenticate md5 {response}")

    async def eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, ssl.SSLError):
            pass


def fixed(n: int) -> bytes:
    return bytes.fromhex(CHALLENGE)[:n]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_aiccu_exchange(host: str) -> None:
    async with tic_server(random_bytes=fixed) as (service, port):
        c = await Line.open(port, host)
        assert (await c.read()).startswith("200 ")
        assert (await c.ask("client TIC/draft-00 AICCU/2007.01.15-console-linux Linux/6"))[:3] == (
            "200"
        )
        now = int((await c.ask("get unixtime"))[4:])
        assert abs(now - time.time()) < 5
        assert await c.ask("starttls") == "400 This service is not SSL enabled (yet)"
        assert await c.ask("username TEST-SIXXS") == (
            "200 Choose your authentication challenge please"
        )
        assert await c.ask("challenge md5") == f"200 {CHALLENGE}"
        assert (await c.ask(f"authenticate md5 {RESPONSE}")).startswith("200 Succesfully")
        assert await c.block("tunnel list") == [
            "201 Listing tunnels",
            "T1 2001:db8:1:1::2 ayiya mock01",
            "202 <tunnel_list>",
        ]
        show = await c.block("tunnel show T1")
        assert "Password: tunnelpw" in show and show[-1] == "202 Done"
        assert (await c.ask("QUIT My Autumn's Done Come")).startswith("200")
        assert await c.eof()
        await c.close()
        assert service.logins == 1 and service.sessions_started == 1
        await asyncio.sleep(0.05)
        assert not service.connections and not service.active


async def test_wrong_password_is_counted_then_the_address_is_blocked() -> None:
    async with tic_server(random_bytes=fixed, login_limit=LoginLimit(failures=2, window=60)) as (
        service,
        port,
    ):
        c = await Line.open(port)
        await c.read()
        assert await c.login("0" * 32) == "400 Authentication failed"
        assert service.login_failures == 1
        assert await c.login("0" * 32) == "400 Authentication failed"
        assert await c.read() == "400 Too many failed logins"
        assert await c.eof()
        await c.close()
        # A new connection from the same address is turned away at once.
        c2 = await Line.open(port)
        assert await c2.read() == "400 Too many failed logins, try again later"
        assert await c2.eof()
        await c2.close()
        assert service.sessions_refused == 1 and service.errors_sent["authenticate"] == 2
        # Another address (IPv6 loopback) is not affected.
        c3 = await Line.open(port, "::1")
        await c3.read()
        assert (await c3.login()).startswith("200")
        await c3.close()


async def test_out_of_order_commands() -> None:
    async with tic_server() as (service, port):
        c = await Line.open(port)
        await c.read()
        assert await c.ask("tunnel list") == "400 Command not allowed at this stage: tunnel list"
        assert await c.ask("authenticate md5 " + RESPONSE) == (
            "400 Command not allowed at this stage: authenticate"
        )
        assert await c.ask("frobnicate") == "400 Unknown command"
        assert (await c.ask("get unixtime")).startswith("200 ")
        await c.close()
        assert sum(service.errors_sent.values()) == 3


async def test_oversize_line_is_an_error_and_closes() -> None:
    async with tic_server() as (_, port):
        c = await Line.open(port)
        await c.read()
        c.writer.write(b"username " + b"A" * 5000)
        assert await c.read() == "400 Line too long"
        assert await c.eof()
        await c.close()


async def test_idle_timeout_closes() -> None:
    async with tic_server(idle_timeout=0.3) as (service, port):
        c = await Line.open(port)
        await c.read()
        start = time.monotonic()
        assert await c.read() == "400 Idle timeout, closing connection"
        assert await c.eof()
        assert 0.2 < time.monotonic() - start < 5
        await c.close()
        await asyncio.sleep(0.05)
        assert not service.active


async def test_connections_per_address_are_capped() -> None:
    async with tic_server(max_per_address=2) as (service, port):
        a, b = await Line.open(port), await Line.open(port)
        await a.read()
        await b.read()
        c = await Line.open(port)
        assert await c.read() == "400 Too many connections from your address"
        assert await c.eof()
        for x in (a, b, c):
            await x.close()


async def test_long_listing_is_paced() -> None:
    tunnels = [
        TicTunnel(f"T{i}", "ayiya", f"2001:db8:{i}::2", f"2001:db8:{i}::1", 64, "mock01",
                  "ayiya", "127.0.0.1", password="pw")
        for i in range(40)
    ]  # fmt: skip
    async with tic_server(memory_backend(*tunnels), random_bytes=fixed) as (_, port):
        c = await Line.open(port)
        await c.read()
        await c.login()
        c.writer.write(b"tunnel list\n")
        chunks: list[tuple[float, bytes]] = []
        data = b""
        while not data.endswith(b"<tunnel_list>\n"):
            chunk = await asyncio.wait_for(c.reader.read(4096), 10)
            assert chunk
            chunks.append((time.monotonic(), chunk))
            data += chunk
        assert len(data) > 1014 and data.count(b"\n") == 42
        # At least three writes, WRITE_GAP apart: never more than ~1,000 bytes at once.
        assert chunks[-1][0] - chunks[0][0] >= 2 * WRITE_GAP * 0.9
        await c.close()


async def test_starttls_raw(tmp_path: Path) -> None:
    """STARTTLS, then the session inside TLS; TLS 1.2+ and no session tickets (AICCU)."""
    certificate = make_certificate(tmp_path)
    async with tic_server(certificate=certificate, random_bytes=fixed) as (service, port):
        c = await Line.open(port)
        await c.read()
        assert await c.ask("starttls") == "200 Starting TLS"
        ctx = ssl.create_default_context(cafile=certificate[0])
        await c.writer.start_tls(ctx, server_hostname="127.0.0.1")
        # Sent the instant the handshake is done, before the server's start_tls() returns.
        assert (await c.ask("get unixtime")).startswith("200 ")
        assert (await c.login()).startswith("200 ")
        assert await c.ask("starttls") == "400 Command not allowed at this stage: starttls"
        ssl_object = c.writer.get_extra_info("ssl_object")
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        # AICCU+GnuTLS breaks on a TLS 1.3 session ticket (sixxs.md §2.8): none may come.
        session = ssl_object.session
        assert session is None or not session.has_ticket
        await c.close()
        assert service.tls_sessions == 1


async def test_tls_handshake_failure_is_counted_and_released(tmp_path: Path) -> None:
    certificate = make_certificate(tmp_path)
    async with tic_server(certificate=certificate) as (service, port):
        c = await Line.open(port)
        await c.read()
        assert await c.ask("starttls") == "200 Starting TLS"
        c.writer.write(b"this is not a ClientHello\n" * 10)
        assert await c.eof()
        await c.close()
        for _ in range(100):
            if service.tls_failures and not service.active:
                break
            await asyncio.sleep(0.02)
        assert service.tls_failures == 1 and not service.active and not service.connections


def test_tls_context_has_no_tickets(tmp_path: Path) -> None:
    ctx = tls_context(*make_certificate(tmp_path))
    assert ctx.num_tickets == 0 and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_TICKET


def test_service_needs_consistent_tls_settings() -> None:
    with pytest.raises(ValueError):
        TicService(memory_backend(), ServerSettings(tls_available=True), None)
