"""The broker daemon: explicit startup, main loop and shutdown (STYLE.md pattern 13)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tunnelbroker.broker.persistence import Persister
from tunnelbroker.broker.service import Broker
from tunnelbroker.broker.users import UserService
from tunnelbroker.config import Config
from tunnelbroker.listeners.tsp import TspService, start_tsp
from tunnelbroker.listeners.udp_endpoint import PktinfoEndpoint
from tunnelbroker.protocols.tsp.messages import TunnelType
from tunnelbroker.protocols.tsp.server import ServerSettings, referral_addresses
from tunnelbroker.store.database import Store

log = logging.getLogger(__name__)


def server_settings(config: Config) -> ServerSettings:
    tsp = config.tsp
    return ServerSettings(
        realm=config.broker.realm,
        tunnel_types=tuple(TunnelType(t) for t in tsp.tunnel_types),
        mechanisms=tuple(tsp.auth_mechanisms),
        allow_anonymous=tsp.allow_anonymous,
        max_message_size=tsp.max_message_size,
        idle_timeout=tsp.idle_timeout,
        session_timeout=tsp.session_timeout,
        referrals=referral_addresses(tsp.referrals),
    )


class Daemon:
    """One broker process: store, broker state, listeners and housekeeping."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.persister: Persister | None = None
        self.broker: Broker | None = None
        self.tsp: TspService | None = None
        self.tsp_port: int = config.tsp.port
        self._udp: list[PktinfoEndpoint] = []
        self._tcp: list[asyncio.Server] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def startup(self) -> None:
        started = time.monotonic()
        config = self.config
        if not config.database.url:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store(config.database_url)
        self.store = store
        await asyncio.to_thread(store.migrate)
        tunnels, allocations, highest = await asyncio.to_thread(
            lambda: (store.load_tunnels(), store.load_allocations(), store.highest_ids())
        )
        self.persister = Persister(store)
        self.persister.start()
        self.broker = Broker(config, self.persister)
        self.broker.load(tunnels, allocations, time.time(), highest)
        users = UserService(store, config.broker.realm)
        self.tsp = TspService(self.broker, users, server_settings(config))
        if config.tsp.enabled:
            self._udp, self._tcp, self.tsp_port = await start_tsp(
                self.tsp,
                config.tsp.listen,
                config.tsp.port,
                receive_buffer=config.tsp.udp_receive_buffer,
            )
        self._housekeeping = asyncio.create_task(self._expire_loop())
        log.info(
            "tunnelbroker ready in %.2fs: %d live tunnels; TSP on %s port %d (udp+tcp)",
            time.monotonic() - started,
            len(self.broker.tunnels),
            ", ".join(config.tsp.listen),
            self.tsp_port,
        )

    async def main_loop(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        for t in self._udp:
            t.close()
        for s in self._tcp:
            s.close()
        for s in self._tcp:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 5)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self.persister is not None:
            await asyncio.to_thread(self.persister.stop)
        if self.store is not None:
            self.store.close()
        log.info("tunnelbroker stopped")

    async def _expire_loop(self) -> None:
        assert self.broker is not None
        while True:
            nxt = self.broker.next_expiry()
            delay = 60.0 if nxt is None else min(60.0, max(0.0, nxt - time.time()))
            await asyncio.sleep(delay)
            self.broker.expire(time.time())


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    """A started daemon, shut down on exit (tests and benchmarks use this)."""
    daemon = Daemon(config)
    try:
        await daemon.startup()
    except BaseException:
        await daemon.shutdown()
        raise
    try:
        yield daemon
    finally:
        await daemon.shutdown()


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM; the previous handlers are restored afterwards."""
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    try:
        await daemon.startup()
    except BaseException:
        await daemon.shutdown()
        raise
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.main_loop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await daemon.shutdown()
