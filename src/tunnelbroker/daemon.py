"""The broker daemon: explicit startup, main loop and shutdown (STYLE.md pattern 13)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tunnelbroker.broker.model import BrokerError
from tunnelbroker.broker.persistence import Persister
from tunnelbroker.broker.service import Broker, TunnelEvent
from tunnelbroker.broker.users import UserService
from tunnelbroker.config import Config
from tunnelbroker.dnsnames.publisher import DnsPublisher
from tunnelbroker.listeners.heartbeat import HeartbeatService, start_heartbeat
from tunnelbroker.listeners.tic import TicService, bound_port, start_tic, tls_context
from tunnelbroker.listeners.tic_backend import BrokerTicBackend
from tunnelbroker.listeners.tsp import TspService, TspUdpProtocol, start_tsp
from tunnelbroker.listeners.udp_endpoint import PktinfoEndpoint
from tunnelbroker.metrics import Figures
from tunnelbroker.protocols.tic import ServerSettings as TicServerSettings
from tunnelbroker.protocols.tsp.messages import TunnelType
from tunnelbroker.protocols.tsp.server import ServerSettings, referral_addresses
from tunnelbroker.store.database import Store
from tunnelbroker.store.owner import owner_lock
from tunnelbroker.store.records import TunnelRecord
from tunnelbroker.tunnelserver.bridge import installable, state_from_record
from tunnelbroker.tunnelserver.engine import Encap, Expired
from tunnelbroker.tunnelserver.hostcheck import tunnel_module_warnings
from tunnelbroker.tunnelserver.userspace import DataPlaneConfig, UserspaceDataPlane
from tunnelbroker.web.schemas import TunnelStats

if TYPE_CHECKING:
    from tunnelbroker.web.server import WebServer

log = logging.getLogger(__name__)

#: Seconds between copies of the data plane's counters into the store.
_TRAFFIC_SYNC = 60.0


class DataPlaneError(RuntimeError):
    """The configured data plane cannot run here; the message says why and what to do."""


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
        self.dataplane: UserspaceDataPlane | None = None
        self._stop = asyncio.Event()
        self._owner = contextlib.ExitStack()
        self.web: WebServer | None = None
        self.dns: DnsPublisher | None = None
        self.heartbeat: HeartbeatService | None = None
        self.heartbeat_port = 0
        self.tic: TicService | None = None
        self.tic_port = 0
        self._tic_servers: list[asyncio.Server] = []
        self._synced = time.monotonic()
        self._heartbeat_udp: list[asyncio.DatagramTransport] = []
        #: AYIYA tunnels down for silence: carried without an endpoint until heard again.
        self._silent: set[int] = set()

    async def startup(self) -> None:
        started = time.monotonic()
        config = self.config
        if not config.database.url:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Before anything else: a second broker on the same store would undo this one's work.
        self._owner.enter_context(owner_lock(config.database_url))
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
        if config.sixxs.heartbeat_enabled:
            self.heartbeat = HeartbeatService(self.broker, config.sixxs, self._on_liveness)
        data_handler = None
        if config.tunnelserver.backend == "userspace":
            data_handler = self._start_dataplane()
        if config.tsp.enabled:
            self._udp, self._tcp, self.tsp_port = await start_tsp(
                self.tsp,
                config.tsp.listen,
                config.tsp.port,
                data_handler=data_handler,
                receive_buffer=config.tsp.udp_receive_buffer,
                udp_reader=self.dataplane,
            )
            if self.dataplane is not None:
                self.dataplane.set_udp_sender(self._send_v6udpv4)
        if config.sixxs.tic_enabled:
            await self._start_tic(users)
        if self.heartbeat is not None:
            self._heartbeat_udp, self.heartbeat_port = await start_heartbeat(
                self.heartbeat, config.sixxs.listen, config.sixxs.heartbeat_port
            )
        if config.dns.enabled:
            self._start_dns()
        if config.web.enabled:
            from tunnelbroker.web.app import WebContext
            from tunnelbroker.web.server import WebServer

            ctx = WebContext(config, self.broker, users, store, self._stats)
            ctx.figures = self.figures
            ctx.tsp_port = self.tsp_port
            self.web = WebServer(ctx)
            await self.web.start()
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
        if self.web is not None:
            await self.web.stop()
        if self.dns is not None:
            await self.dns.settled(timeout=5)
            await self.dns.stop()
        for t in self._udp:
            t.close()
        for h in self._heartbeat_udp:
            h.close()
        for srv in self._tic_servers:
            srv.close()
        if self.tic is not None:
            self.tic.close_all()
        for s in self._tcp:
            s.close()
        for s in self._tcp:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 5)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self.dataplane is not None:
            self._sync_traffic()
            await asyncio.to_thread(self.dataplane.stop)
            self.dataplane = None
        if self.persister is not None:
            await asyncio.to_thread(self.persister.stop)
        if self.store is not None:
            self.store.close()
        self._owner.close()
        log.info("tunnelbroker stopped")

    def _start_dataplane(self) -> Callable[[bytes, tuple[str, int]], None]:
        """Bring the userspace data plane up and keep it in step with the broker."""
        assert self.broker is not None
        config = self.config
        pools = config.pools
        loop = asyncio.get_running_loop()
        broker = self.broker

        def expired(items: list[Expired]) -> None:
            loop.call_soon_threadsafe(self._on_expired, items)

        def learned(items: list[tuple[int, str, int]]) -> None:
            loop.call_soon_threadsafe(self._on_learned, items)

        dp = UserspaceDataPlane(
            DataPlaneConfig(
                tun_name=config.tunnelserver.tun_name,
                tun_mtu=config.tunnelserver.tun_mtu,
                server_ipv4=config.broker.server_ipv4,
                server_ipv6=config.broker.server_ipv6,
                routes=(pools.link_prefix, pools.delegated_prefix, pools.ipv4_prefix),
                ayiya_port=config.sixxs.ayiya_port if config.sixxs.ayiya_enabled else None,
            ),
            on_expired=expired,
            on_learned=learned,
        )
        try:
            dp.start()
        except OSError as e:
            dp.stop()
            raise DataPlaneError(
                f"cannot start the userspace data plane: {e}. It needs root (or CAP_NET_ADMIN "
                'and CAP_NET_RAW); set tunnelserver.backend = "none" to run the control plane '
                "alone."
            ) from e
        self.dataplane = dp
        for warning in tunnel_module_warnings():
            log.warning("%s", warning)
        wall, mono = time.time(), time.monotonic()
        for record in broker.tunnels.values():
            if self._carried(record):
                dp.add_tunnel(state_from_record(record, wall, mono, self.config.sixxs.clock_window))
        broker.add_observer(self._on_tunnel_event)
        return dp.from_udp

    def _on_tunnel_event(self, event: TunnelEvent) -> None:
        dp = self.dataplane
        if dp is None or event.tunnel.id is None:
            return
        # Take the counters so far into the record first: a re-install starts from them.
        self._sync_traffic([event.tunnel.id])
        if event.kind == "down" or not self._carried(event.tunnel):
            self._silent.discard(event.tunnel.id)
            dp.remove_tunnel(event.tunnel.id)
        else:
            dp.add_tunnel(
                state_from_record(
                    event.tunnel,
                    time.time(),
                    time.monotonic(),
                    self.config.sixxs.clock_window,
                    silent=event.tunnel.id in self._silent,
                )
            )

    def _sync_traffic(self, ids: list[int] | None = None) -> int:
        """Copy the data plane's counters and last-seen times into the broker's records (and so
        the store); ``ids`` None: every tunnel. Returns how many changed."""
        dp, broker = self.dataplane, self.broker
        if dp is None or broker is None:
            return 0
        wall, mono = time.time(), time.monotonic()
        dp.fold_counters()
        with dp._lock:
            states = (
                [s for s in (dp.core.get(i) for i in ids) if s is not None]
                if ids is not None
                else list(dp.core.tunnels())
            )
            rows = [
                (s.tunnel_id, s.last_seen, (s.packets_in, s.packets_out), (s.bytes_in, s.bytes_out))
                for s in states
            ]
        changed = 0
        for tid, seen, packets, octets in rows:
            # Only a packet from the client counts as seen (installing sets last_seen too).
            heard = wall - (mono - seen) if packets[0] else None
            changed += broker.record_traffic(tid, heard, packets, octets)
        return changed

    async def _start_tic(self, users: UserService) -> None:
        """TIC on TCP (3874), with STARTTLS when a certificate is configured."""
        assert self.broker is not None
        sixxs = self.config.sixxs
        tls = None
        if sixxs.tls_certificate:
            tls = tls_context(sixxs.tls_certificate, sixxs.tls_key or sixxs.tls_certificate)
        settings = TicServerSettings(
            host_name=self.config.broker.pop_name, tls_available=tls is not None
        )
        self.tic = TicService(BrokerTicBackend(self.broker, users, self.config), settings, tls)
        self._tic_servers = await start_tic(self.tic, sixxs.listen, sixxs.tic_port)
        self.tic_port = bound_port(self._tic_servers)

    def _carried(self, record: TunnelRecord) -> bool:
        """Whether the data plane should carry this tunnel now: a heartbeat tunnel only while
        its beats come."""
        if not installable(record):
            return False
        if record.kind == "heartbeat" and self.heartbeat is not None and record.id is not None:
            return self.heartbeat.alive(record.id)
        return True

    def _on_liveness(self, record: TunnelRecord, alive: bool) -> None:
        """A heartbeat tunnel came back or fell silent."""
        self._on_tunnel_event(TunnelEvent("updated" if alive else "down", record))

    def _start_dns(self) -> None:
        """Publish every live tunnel now, and every change from now on."""
        assert self.broker is not None and self.store is not None
        broker, store = self.broker, self.store

        def user_name(user_id: int) -> str | None:
            u = store.get_user_by_id(user_id)
            return u.name if u is not None else None

        def problems(tunnel_id: int, text: str | None) -> None:
            t = broker.tunnels.get(tunnel_id)
            if text is not None:
                broker.record_error(tunnel_id, f"DNS: {text}", time.time())
            elif t is not None and (t.last_error or "").startswith("DNS: "):
                broker.record_error(tunnel_id, None, time.time())

        dns = DnsPublisher(
            self.config.dns, self.config.broker.client_domain, user_name, on_problems=problems
        )
        dns.start()
        for record in broker.tunnels.values():
            dns.changed(record)
        broker.add_observer(lambda event: dns.changed(event.tunnel))
        self.dns = dns

    def figures(self) -> Figures:
        """The daemon's figures for ``/metrics`` (on the event loop)."""
        f = Figures()
        if self.broker is not None:
            counts: Counter[tuple[str, str]] = Counter(
                (t.kind, t.type) for t in self.broker.tunnels.values()
            )
            f.tunnels = counts
            f.pools = {name: used for name, _p, _n, used in self.broker.pool_usage()}
        if self.tsp is not None:
            f.tsp_sessions_started = self.tsp.sessions_started
            f.tsp_sessions_refused = self.tsp.sessions_refused
            f.tsp_tunnels_accepted = self.tsp.tunnels_accepted
        dp = self.dataplane
        if dp is not None:
            dp.fold_counters()
            with dp._lock:
                f.drops = {d.name.lower(): n for d, n in dp.core.drops.items()}
                f.drops.update({f"ayiya_{d.value}": n for d, n in dp.core.ayiya_drops.items()})
                f.icmp_rate_limited = dp.core.icmp_rate_limited
                states = list(dp.core.tunnels())
                f.packets = {
                    "in": sum(t.packets_in for t in states),
                    "out": sum(t.packets_out for t in states),
                }
                f.bytes = {
                    "in": sum(t.bytes_in for t in states),
                    "out": sum(t.bytes_out for t in states),
                }
        if self.heartbeat is not None:
            f.drops = {
                **f.drops,
                **{f"heartbeat_{d.value}": n for d, n in self.heartbeat.drops.items()},
            }
        if self.dns is not None:
            f.dns_errors = len(self.dns.errors)
        return f

    def _stats(self, tunnel_id: int) -> TunnelStats | None:
        """A tunnel's live counters from the data plane (the web shows them)."""
        dp = self.dataplane
        if dp is None:
            return None
        dp.fold_counters()
        with dp._lock:
            t = dp.core.get(tunnel_id)
            if t is None:
                return None
            last, now = t.last_seen, time.monotonic()
            counters = (t.packets_in, t.packets_out, t.bytes_in, t.bytes_out)
            if t.encap is Encap.AYIYA:
                # Up while its client is heard: an endpoint, and a datagram within down_after.
                up = bool(t.remote) and now - last < self.config.sixxs.down_after
            else:
                up = last > 0 and (
                    t.keepalive_interval == 0 or now - last < 3 * t.keepalive_interval
                )
        return TunnelStats(
            up=up,
            idle_seconds=now - last if last > 0 else None,
            packets_in=counters[0],
            packets_out=counters[1],
            bytes_in=counters[2],
            bytes_out=counters[3],
        )

    def _on_learned(self, items: list[tuple[int, str, int]]) -> None:
        """AYIYA clients seen at new addresses: record them (the data plane already moved)."""
        assert self.broker is not None
        now = time.time()
        for tunnel_id, address, port in items:
            if tunnel_id in self._silent:
                self._silent.discard(tunnel_id)
                log.info("tunnel %s: AYIYA from %s:%s, up again", tunnel_id, address, port)
            try:
                self.broker.update_endpoint(tunnel_id, address, port, now, learnt=True)
            except BrokerError as e:
                log.warning(
                    "tunnel %s: learnt endpoint %s:%s refused: %s", tunnel_id, address, port, e
                )

    def _sweep_ayiya(self) -> None:
        """AYIYA tunnels silent for ``[sixxs] down_after`` seconds are down until their next
        datagram (sixxs.md §3.8); the data plane forgets where their clients were."""
        dp = self.dataplane
        if dp is None or not self.config.sixxs.ayiya_enabled:
            return
        for tunnel_id in dp.silence(self.config.sixxs.down_after):
            self._silent.add(tunnel_id)
            log.info(
                "tunnel %s: no AYIYA datagram for %ss, down",
                tunnel_id,
                self.config.sixxs.down_after,
            )

    def _on_expired(self, items: list[Expired]) -> None:
        assert self.broker is not None
        now = time.time()
        for item in items:
            record = self.broker.tunnels.get(item.tunnel_id)
            if record is not None:
                self.broker.end(record, item.reason, now)

    def _send_v6udpv4(self, pkt: bytes, addr: tuple[str, int]) -> None:
        """Send on the TSP socket the client signalled to, from the address it targeted."""
        for endpoint in self._udp:
            protocol = endpoint.get_protocol()
            if isinstance(protocol, TspUdpProtocol) and not protocol.ipv6:
                peer = protocol.peers.get(addr)
                endpoint.sendto(pkt, addr, peer.local if peer is not None else None)
                return

    async def _expire_loop(self) -> None:
        assert self.broker is not None
        while True:
            nxt = self.broker.next_expiry()
            # Heartbeat and AYIYA tunnels are checked every few seconds for silence; lifetimes
            # when they are due.
            sixxs = self.heartbeat is not None or self.config.sixxs.ayiya_enabled
            horizon = 5.0 if sixxs else 60.0
            delay = horizon if nxt is None else min(horizon, max(0.0, nxt - time.time()))
            await asyncio.sleep(delay)
            self.broker.expire(time.time())
            if self.heartbeat is not None:
                self.heartbeat.sweep()
            self._sweep_ayiya()
            if time.monotonic() - self._synced >= _TRAFFIC_SYNC:
                self._synced = time.monotonic()
                self._sync_traffic()


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
