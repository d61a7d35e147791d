"""asyncio TCP listener for TIC (SixXS, port 3874) around the sans-IO server machine.

Per connection it feeds bytes to :class:`~tunnelbroker.protocols.tic.TicServer`, writes the
machine's replies (the writes of one multi-line reply :data:`WRITE_GAP` apart, because AICCU
gives up when more than ~1,014 bytes wait in its buffer), wraps the socket in TLS after
``starttls``, arms the idle timer and closes when the machine is done.

Across connections it limits failed logins per client address (SixXS disabled accounts that
hammered TIC from restart loops) and concurrent connections per address.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from tunnelbroker.listeners.tsp import bind_socket
from tunnelbroker.protocols.tic import (
    Closed,
    ErrorSent,
    LoginFailed,
    LoginSucceeded,
    ServerSettings,
    StartTls,
    TicBackend,
    TicServer,
)

log = logging.getLogger(__name__)

#: Pause between the writes of one paced reply, seconds.
WRITE_GAP = 0.05
#: How long a TLS handshake after ``starttls`` may take, seconds.
TLS_HANDSHAKE_TIMEOUT = 30.0


class TlsSetupError(OSError):
    """The STARTTLS certificate or key cannot be used. Raised when the daemon starts (an
    :class:`OSError`, so ``tunnelbroker serve`` reports it as ``cannot start: ...``), not at the
    first ``starttls``."""


def _encrypted_key() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal and the daemon would hang.
    raise TlsSetupError("the private key is encrypted: give tls_key an unencrypted PEM key")


def tls_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server context for STARTTLS: TLS 1.2 or 1.3, no session tickets.

    AICCU's GnuTLS build breaks on a TLS 1.3 NewSessionTicket right after the handshake
    (sixxs.md §2.8): ``num_tickets = 0`` avoids it; ``OP_NO_TICKET`` does the same for 1.2.

    Raises:
        TlsSetupError: a file is missing or unreadable, is not PEM, is an encrypted key, or
            the key does not belong to the certificate. The message names the file and the
            ``[sixxs]`` option.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    where = f"TIC STARTTLS: [sixxs] tls_certificate {certificate!r}, tls_key {key!r}"
    # OpenSSL's own errors name neither the file nor the option ("PEM lib", or a bare
    # "No such file or directory"): look at the files first.
    for option, path, marker, what in (
        ("tls_certificate", certificate, b"-----BEGIN CERTIFICATE-----", "PEM certificate"),
        ("tls_key", key, b"PRIVATE KEY-----", "PEM private key"),
    ):
        try:
            with open(path, "rb") as f:
                text = f.read(1 << 20)
        except OSError as e:
            raise TlsSetupError(
                f"TIC STARTTLS: cannot read [sixxs] {option} {path!r}: {e.strerror}"
            ) from e
        if marker not in text:
            raise TlsSetupError(f"TIC STARTTLS: [sixxs] {option} {path!r} holds no {what}")
    try:
        ctx.load_cert_chain(certificate, key, password=_encrypted_key)
    except TlsSetupError as e:
        raise TlsSetupError(f"{where}: {e}") from e
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsSetupError(f"{where}: the key does not belong to the certificate") from e
        raise TlsSetupError(f"{where}: unusable ({e.reason or e})") from e
    return ctx


@dataclass
class LoginLimit:
    """At most ``failures`` failed logins per address in ``window`` seconds."""

    failures: int = 5
    window: float = 300.0


class TicService:
    """What all TIC connections share: settings, backend, TLS, limits and counters."""

    def __init__(
        self,
        backend: TicBackend,
        settings: ServerSettings,
        tls: ssl.SSLContext | None = None,
        *,
        login_limit: LoginLimit | None = None,
        max_per_address: int = 8,
        max_connections: int = 1024,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if (tls is not None) != settings.tls_available:
            raise ValueError("settings.tls_available must say whether a TLS context is given")
        self.backend = backend
        self.settings = settings
        self.tls = tls
        self.login_limit = login_limit or LoginLimit()
        self.max_per_address = max_per_address
        self.max_connections = max_connections
        self.clock = clock
        self.random_bytes = random_bytes
        self.connections: Counter[str] = Counter()
        #: Open connections, for :meth:`close_all`.
        self.active: set[TicProtocol] = set()
        self._failures: dict[str, deque[float]] = {}
        #: Counters for metrics and tests.
        self.sessions_started = 0
        self.sessions_refused = 0
        self.logins = 0
        self.login_failures = 0
        self.tls_sessions = 0
        self.tls_failures = 0
        self.errors_sent: Counter[str] = Counter()

    def blocked(self, address: str, now: float) -> bool:
        """True while ``address`` has too many recent failed logins."""
        times = self._failures.get(address)
        if times is None:
            return False
        while times and times[0] <= now - self.login_limit.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return False
        return len(times) >= self.login_limit.failures

    def record_failure(self, address: str, now: float) -> None:
        self.login_failures += 1
        times = self._failures.setdefault(address, deque())
        times.append(now)
        # Bounded: only the newest ``failures`` times matter.
        while len(times) > self.login_limit.failures:
            times.popleft()
        if len(self._failures) > 65536:
            # A flood from many addresses: forget the quietest rather than grow without bound.
            for stale in [a for a, t in self._failures.items() if t[-1] <= now - 60][:4096]:
                del self._failures[stale]

    def close_all(self) -> None:
        """Drop every open connection (shutdown; closing the servers leaves them open)."""
        for protocol in list(self.active):
            protocol.abort()

    def refusal(self, address: str, now: float) -> str | None:
        """Why a new connection from ``address`` is refused, or None."""
        if self.blocked(address, now):
            return "Too many failed logins, try again later"
        if self.connections[address] >= self.max_per_address:
            return "Too many connections from your address"
        if sum(self.connections.values()) >= self.max_connections:
            return "Server too busy, try again later"
        return None


class TicProtocol(asyncio.Protocol):
    """One TIC connection."""

    def __init__(self, service: TicService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.session: TicServer | None = None
        self.address = ""
        self._peer = ""
        self._queue: deque[bytes] = deque()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._tls_wanted = False
        self._early = b""
        self._counted = False

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.address = str(peername[0])
        self._peer = f"[{self.address}]:{peername[1]}" if ":" in self.address else (
            f"{self.address}:{peername[1]}"
        )  # fmt: skip
        now = self.service.clock()
        refusal = self.service.refusal(self.address, now)
        if refusal is not None:
            self.service.sessions_refused += 1
            log.info("tic %s: refused: %s", self._peer, refusal)
            self.transport.write(f"400 {refusal}\n".encode())
            self.transport.close()
            return
        self.service.sessions_started += 1
        self.service.connections[self.address] += 1
        self.service.active.add(self)
        self._counted = True
        self.session = TicServer(
            self.service.settings,
            self.service.backend,
            peer=self.address,
            now=now,
            random_bytes=self.service.random_bytes,
        )
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            return
        if self._tls_task is not None and not self._tls_task.done():
            # Decrypted bytes delivered by the TLS layer before start_tls() has returned the
            # new transport: hold them until the machine knows TLS is up.
            self._early += data
            return
        self.session.receive_data(data, self.service.clock())
        self._pump()

    def eof_received(self) -> bool | None:
        if self.session is not None and not self.session.closed:
            self.session.close("client closed its side")
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.transport = None

    def _release(self) -> None:
        """Undo what the connection holds; safe to call more than once."""
        for handle in (self._timer, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush_handle = None
        if self._tls_task is not None and self._tls_task is not asyncio.current_task():
            self._tls_task.cancel()
        if self._counted:
            self._counted = False
            self.service.connections[self.address] -= 1
            if self.service.connections[self.address] <= 0:
                del self.service.connections[self.address]
            self.service.active.discard(self)
        if self.session is not None and not self.session.closed:
            self.session.close("connection lost")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._release()

    # ---------------------------------------------------------------- machine plumbing

    def _pump(self) -> None:
        session = self.session
        assert session is not None
        while (ev := session.next_event()) is not None:
            if isinstance(ev, StartTls):
                # Read nothing more in plaintext: the next bytes are the ClientHello and belong
                # to the TLS layer that start_tls() puts in place.
                self._tls_wanted = True
                if self.transport is not None:
                    self.transport.pause_reading()
            elif isinstance(ev, LoginSucceeded):
                self.service.logins += 1
                log.info("tic %s: %s logged in", self._peer, ev.username)
            elif isinstance(ev, LoginFailed):
                now = self.service.clock()
                self.service.record_failure(self.address, now)
                log.info("tic %s: login as %r failed: %s", self._peer, ev.username, ev.reason)
                if self.service.blocked(self.address, now):
                    session.close("too many failed logins", "Too many failed logins")
            elif isinstance(ev, ErrorSent):
                self.service.errors_sent[ev.command or "-"] += 1
                log.debug("tic %s: 400 %s", self._peer, ev.text)
            elif isinstance(ev, Closed):
                log.debug("tic %s: session closed: %s", self._peer, ev.reason)
        self._queue.extend(w for w in session.data_to_send() if w)
        if self._queue and self._flush_handle is None:
            self._flush()
        elif not self._queue:
            self._after_flush()
        self._arm()

    def _flush(self) -> None:
        self._flush_handle = None
        if self.transport is None or self.transport.is_closing():
            self._queue.clear()
            return
        if self._queue:
            self.transport.write(self._queue.popleft())
        if self._queue:
            # Hold further input until the reply is out: AICCU never pipelines, and a client
            # that does cannot make us buffer without bound.
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(WRITE_GAP, self._flush)
            return
        self._after_flush()

    def _after_flush(self) -> None:
        if self.transport is None or self.session is None:
            return
        if self.session.closed:
            self.transport.close()
        elif self._tls_wanted:
            self._tls_wanted = False
            self._tls_task = asyncio.ensure_future(self._start_tls())
        elif self.transport.is_reading() is False:
            self.transport.resume_reading()

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.service.tls is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport,
                self,
                self.service.tls,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            self.service.tls_failures += 1
            log.info("tic %s: TLS handshake failed: %s", self._peer, e)
            if self.transport is not None:
                self.transport.abort()
            # The aborted transport may no longer report to us: release here too.
            self._release()
            return
        if transport is None or self.session is None or self.session.closed:
            return
        self.transport = transport
        self.service.tls_sessions += 1
        self.session.tls_started()
        early, self._early = self._early, b""
        if early:
            self.session.receive_data(early, self.service.clock())
        self._pump()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is None:
            return
        at = self.session.get_timer()
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - self.service.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session is None or self.transport is None:
            return
        self.session.handle_timer(self.service.clock())
        self._pump()


async def start_tic(service: TicService, hosts: list[str], port: int) -> list[asyncio.Server]:
    """Listen on every host (IPv4 and IPv6). Port 0 picks one free port for all hosts
    (tests): :func:`bound_port` tells which. On failure nothing stays bound."""
    attempts = 20 if port == 0 else 1
    for attempt in range(attempts):
        try:
            return await _start_once(service, hosts, port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def _start_once(service: TicService, hosts: list[str], port: int) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for host in hosts:
            sock = bind_socket(host, port, socket.SOCK_STREAM)
            port = sock.getsockname()[1]
            try:
                server = await loop.create_server(
                    functools.partial(TicProtocol, service), sock=sock, backlog=256
                )
            except BaseException:
                sock.close()
                raise
            servers.append(server)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


def bound_port(servers: list[asyncio.Server]) -> int:
    """The port the listeners from :func:`start_tic` ended up on."""
    return int(servers[0].sockets[0].getsockname()[1])
