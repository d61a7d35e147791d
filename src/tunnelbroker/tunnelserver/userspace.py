"""The userspace data plane: one TUN device, raw sockets, and the forwarding core, on a thread.

Forwarding runs on its own thread with its own epoll loop, so it never waits on the asyncio
loop that serves TSP sign-ups, the database or the web. The control plane talks to it only
through :meth:`UserspaceDataPlane.submit` (tunnel changes, applied between packet batches) and
gets expiries back through a callback it schedules on its own loop.

Sockets:

* a raw IPv4 socket for protocol 41 (v6v4): the kernel hands us the whole IPv4 packet; the
  inner IPv6 packet follows the IPv4 header, and we send bare IPv6 payloads that the kernel
  wraps in an IPv4 header from ``server_ipv4``;
* a raw IPv6 socket for next header 4 (v4v6): payloads only, the outer source from recvfrom;
* the TSP UDP socket(s) for v6udpv4: we send on the same socket so the client's NAT mapping
  and connected socket see the flow they signalled on.

With the C fast path (``_fastpath.c``, see docs/dataplane.md) a C thread without the GIL owns
the TUN, the protocol-41 socket and the IPv4 TSP sockets (:meth:`adopt_udp`): it forwards the
common case itself and punts the rest to this module's thread, which runs it through the
:class:`ForwardingCore` exactly as without the fast path, and hands TSP signalling back to the
listener. Without the extension everything runs here in Python (one warning says so), and the
TSP listener hands v6udpv4 data in through :meth:`from_udp`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunnelbroker.tunnelserver import fastpath
from tunnelbroker.tunnelserver.engine import Expired, ForwardingCore, Out, Output, TunnelState
from tunnelbroker.tunnelserver.tun import TunDevice

log = logging.getLogger(__name__)

_BATCH = 64
_EXPIRY_EVERY = 1.0
#: Punts taken per call, and calls per wake-up before other work gets a turn.
_PUNT_BATCH = 256
_PUNT_ROUNDS = 8

#: Signalling datagrams handed back to a listener: (data, source, our address or None).
Datagram = tuple[bytes, tuple[str, int], str | None]


@dataclass(frozen=True, slots=True)
class DataPlaneConfig:
    """What the userspace data plane needs to start."""

    tun_name: str = "tb0"
    #: The TUN's own MTU: the largest packet the kernel hands us (per-tunnel MTUs are smaller).
    tun_mtu: int = 1500
    #: The tunnel server's IPv4 endpoint (source of protocol 41); None: no v6v4.
    server_ipv4: str | None = None
    #: The tunnel server's IPv6 endpoint (source of 4in6); None: no v4v6.
    server_ipv6: str | None = None
    #: Prefixes routed into the TUN (the link and delegated pools, the IPv4 pool for v4v6).
    routes: tuple[str, ...] = ()
    #: AYIYA (SixXS) on this UDP port of ``server_ipv4``; None: no AYIYA. 0 picks a port.
    ayiya_port: int | None = None
    #: Forward the common case in C when the extension is built (False: always Python).
    fast_path: bool = True


def _raw_socket(family: int, proto: int, address: str) -> socket.socket:
    """A raw socket sending from ``address`` when it is ours (else the route's choice)."""
    s = socket.socket(family, socket.SOCK_RAW, proto)
    try:
        s.bind((address, 0))
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:
            s.close()
            raise
        log.warning(
            "tunnel endpoint %s is not an address of this host: tunnelled packets will leave "
            "from whatever address the route picks, and clients will not accept them. Set "
            "broker.server_ipv4/server_ipv6 to this host's addresses.",
            address,
        )
    s.setblocking(False)
    return s


def _ayiya_socket(address: str, port: int) -> socket.socket:
    """The AYIYA UDP socket, on the tunnel server's IPv4 address (replies leave from it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            s.bind((address, port))
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                raise
            log.warning("AYIYA: %s is not an address of this host; listening on all", address)
            s.bind(("0.0.0.0", port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class UserspaceDataPlane:
    """Owns the TUN, the raw sockets and the forwarding thread."""

    def __init__(
        self,
        config: DataPlaneConfig,
        on_expired: Callable[[list[Expired]], None] | None = None,
        on_learned: Callable[[list[tuple[int, str, int]]], None] | None = None,
    ) -> None:
        self.config = config
        self.core = ForwardingCore()
        self._on_expired = on_expired
        #: Told the AYIYA endpoints the data plane learnt (from its thread).
        self._on_learned = on_learned
        self._ayiya: socket.socket | None = None
        #: The AYIYA port bound (the configured one, or the one picked for 0).
        self.ayiya_port = 0
        self._tun: TunDevice | None = None
        self._raw41: socket.socket | None = None
        self._raw4in6: socket.socket | None = None
        self._udp_send: Callable[[bytes, tuple[str, int]], None] | None = None
        self._commands: queue.SimpleQueue[Callable[[ForwardingCore, float], object]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self.send_errors = 0
        #: The C fast path while it runs; None: every packet goes through Python.
        self.fast: fastpath.FastPath | None = None
        #: Where signalling read by the fast path goes, by its socket index.
        self._udp_deliver: dict[int, Callable[[list[Datagram]], None]] = {}
        self._udp_index: dict[int, int] = {}
        self._punts_pending = False
        self._fast_dead = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        cfg = self.config
        self._tun = TunDevice.open(cfg.tun_name)
        self._tun.configure(mtu=cfg.tun_mtu, addresses=[], up=True)
        for prefix in cfg.routes:
            self._tun.add_route(prefix)
        if cfg.server_ipv4:
            self._raw41 = _raw_socket(socket.AF_INET, 41, cfg.server_ipv4)
        if cfg.server_ipv6:
            self._raw4in6 = _raw_socket(socket.AF_INET6, 4, cfg.server_ipv6)
        if cfg.ayiya_port is not None:
            self._ayiya = _ayiya_socket(cfg.server_ipv4 or "0.0.0.0", cfg.ayiya_port)
            self.ayiya_port = self._ayiya.getsockname()[1]
        self.core.wall_offset = time.time() - time.monotonic()
        module = fastpath.load() if cfg.fast_path else None
        if module is not None:
            self.fast = fastpath.FastPath(
                module, self._tun.fds[0], self._raw41.fileno() if self._raw41 else -1
            )
            if self._ayiya is not None:
                # Forwards of IPv6 from known endpoints in C; the rest comes back as punts.
                self.fast.add_ayiya(self._ayiya)
            self.fast.start()
        self._thread = threading.Thread(target=self._run, name="tb-dataplane", daemon=True)
        self._thread.start()
        log.info(
            "userspace data plane up: TUN %s, routes %s, %s",
            self._tun.name,
            ", ".join(cfg.routes) or "-",
            "C fast path" if self.fast is not None else "pure Python forwarding",
        )

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self.fast is not None:
            # First: the C thread reads descriptors that are closed below.
            self.fast.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for s in (self._raw41, self._raw4in6, self._ayiya):
            if s is not None:
                s.close()
        if self._tun is not None:
            self._tun.close()
            self._tun = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ control plane side

    def set_udp_sender(self, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        """How v6udpv4 packets leave: on the TSP socket the client signalled to."""
        self._udp_send = send

    def submit(self, command: Callable[[ForwardingCore, float], object]) -> None:
        """Run ``command(core, now)`` on the forwarding thread, between batches."""
        self._commands.put(command)
        self._wake()

    def add_tunnel(self, state: TunnelState) -> None:
        """Install a tunnel now: the client's first packet follows its accept at once."""
        with self._lock:
            if self.fast is not None:
                self.fast.fold(self.core)
            self.core.add(state, time.monotonic())
            if self.fast is not None:
                self.fast.install(state)

    def remove_tunnel(self, tunnel_id: int) -> None:
        with self._lock:
            if self.fast is not None:
                self.fast.remove(tunnel_id, self.core)
            self.core.remove(tunnel_id)

    def silence(self, down_after: float) -> list[int]:
        """Mark AYIYA tunnels silent for ``down_after`` seconds down (ForwardingCore.silence),
        in the fast path too; their ids."""
        with self._lock:
            if self.fast is not None:
                self.fast.fold(self.core)  # the last-seen times of what C forwarded
            down = self.core.silence(time.monotonic(), down_after)
            if self.fast is not None:
                for tunnel_id in down:
                    self.fast.set_endpoint(tunnel_id, "", 0)
        return down

    def fold_counters(self) -> None:
        """Bring the core's counters, last-seen times and drops up to date with the fast path
        (call before reading them under :attr:`_lock`)."""
        if self.fast is not None:
            with self._lock:
                self.fast.fold(self.core)

    def adopt_udp(self, sock: socket.socket, deliver: Callable[[list[Datagram]], None]) -> bool:
        """Let the fast path read this TSP socket: v6udpv4 data is forwarded in C, signalling
        goes to ``deliver`` (from the data plane's thread, in batches). False: not taken (no
        fast path, or not IPv4); the listener reads it itself."""
        if self.fast is None or sock.family != socket.AF_INET:
            return False
        with self._lock:
            index = self.fast.add_udp(sock)
            self._udp_deliver[index] = deliver
            self._udp_index[sock.fileno()] = index
        return True

    def release_udp(self, sock: socket.socket) -> None:
        """The fast path stops reading ``sock``; the caller may close it on return."""
        if self.fast is None:
            return
        with self._lock:
            index = self._udp_index.pop(sock.fileno(), None)
            if index is not None:
                self.fast.remove_udp(index)
                self._udp_deliver.pop(index, None)

    def from_udp(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A v6udpv4 data datagram from the TSP listener (any thread)."""
        with self._lock:
            outputs = self.core.from_udp(datagram, addr, time.monotonic())
        self._emit(outputs)

    # ------------------------------------------------------------------ the thread

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _run(self) -> None:
        assert self._tun is not None
        ep = select.epoll()
        tun_fd = self._tun.fds[0]
        raw41_fd = self._raw41.fileno() if self._raw41 is not None else -1
        punt_fd = -1
        ayiya_fd = self._ayiya.fileno() if self._ayiya is not None else -1
        if self.fast is not None:
            # The C thread reads the TUN, protocol 41 and AYIYA; we get what it punts.
            punt_fd = self.fast.punt_fd
            tun_fd = raw41_fd = ayiya_fd = -1
        ep.register(self._wake_r, select.EPOLLIN)
        raw6_fd = self._raw4in6.fileno() if self._raw4in6 is not None else -1
        for fd in (tun_fd, raw41_fd, punt_fd, raw6_fd, ayiya_fd):
            if fd >= 0:
                ep.register(fd, select.EPOLLIN)
        next_expiry = time.monotonic() + _EXPIRY_EVERY
        try:
            while not self._stopping:
                timeout = 0.0 if self._punts_pending else next_expiry - time.monotonic()
                events = ep.poll(max(0.0, timeout))
                if self._punts_pending:
                    self._drain_punts()
                for fd, _ in events:
                    if fd == punt_fd:
                        self._drain_punts()
                    elif fd == tun_fd:
                        self._drain_tun()
                    elif fd == raw41_fd:
                        self._drain_raw41()
                    elif fd == raw6_fd:
                        self._drain_raw4in6()
                    elif fd == ayiya_fd:
                        self._drain_ayiya()
                    elif fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                self._run_commands()
                now = time.monotonic()
                if now >= next_expiry:
                    next_expiry = now + _EXPIRY_EVERY
                    with self._lock:
                        # The wall clock may be stepped: AYIYA's epochs follow it.
                        self.core.wall_offset = time.time() - now
                        if self.fast is not None:
                            self.fast.fold(self.core)
                            self._check_fast()
                        expired = self.core.expire(now)
                        if self.fast is not None:
                            for item in expired:
                                self.fast.remove(item.tunnel_id)
                    if expired and self._on_expired is not None:
                        self._on_expired(expired)
        except Exception:
            log.exception("data plane thread failed")
        finally:
            ep.close()

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if self.fast is not None:
                    self.fast.fold(self.core)
                try:
                    command(self.core, time.monotonic())
                except Exception:
                    log.exception("data plane command failed")
                if self.fast is not None:
                    # A command may change any tunnel: mirror them all again.
                    for t in self.core.tunnels():
                        self.fast.install(t)

    def _check_fast(self) -> None:
        """Say so, once, if the C thread has died (it then forwards nothing more)."""
        fast = self.fast
        if fast is not None and not fast.engine.running and not self._fast_dead:
            self._fast_dead = True
            log.error(
                "the C forwarding thread stopped (errno %s): v6v4 and v6udpv4 are not forwarded "
                "until the daemon restarts",
                fast.stats().get("thread_errno"),
            )

    def _drain_punts(self) -> None:
        """What the fast path left to us: through the core, and signalling to its listener."""
        fast = self.fast
        assert fast is not None
        try:
            os.read(fast.punt_fd, 8)
        except (BlockingIOError, InterruptedError):
            pass
        engine, m = fast.engine, fast.module
        self._punts_pending = False
        for _ in range(_PUNT_ROUNDS):
            punts = engine.take_punts(_PUNT_BATCH)
            outputs: list[Output] = []
            signalling: dict[int, list[Datagram]] = {}
            now = time.monotonic()
            with self._lock:
                for kind, sock, data, src, port, local in punts:
                    if kind == m.PUNT_TUN:
                        outputs.extend(self.core.from_tun(data, now))
                    elif kind == m.PUNT_PROTO41:
                        outputs.extend(self.core.from_proto41(data, src, now))
                    elif kind == m.PUNT_AYIYA:
                        addr = (socket.inet_ntoa(src), port)
                        outputs.extend(self.core.from_ayiya(data, addr, now))
                    elif data[0] >> 4 == 6:
                        addr = (socket.inet_ntoa(src), port)
                        outputs.extend(self.core.from_udp(data, addr, now))
                    else:
                        ours = socket.inet_ntoa(local) if local != b"\0\0\0\0" else None
                        batch = signalling.setdefault(sock, [])
                        batch.append((data, (socket.inet_ntoa(src), port), ours))
                # The core moved AYIYA tunnels: C forwards from the new endpoints from now on.
                learned, self.core.learned = self.core.learned, []
                for tunnel_id, address, moved_to in learned:
                    fast.set_endpoint(tunnel_id, address, moved_to)
            # The move is told before the packet that made it goes on, so whoever sees the
            # packet can already see the move.
            if learned and self._on_learned is not None:
                self._on_learned(learned)
            self._emit(outputs)
            for sock, batch in signalling.items():
                deliver = self._udp_deliver.get(sock)
                if deliver is not None:
                    try:
                        deliver(batch)
                    except Exception:
                        log.exception("handing TSP signalling to the listener failed")
            if len(punts) < _PUNT_BATCH:
                return
        # More is waiting: the next poll does not sleep, but other work gets its turn first.
        self._punts_pending = True

    def _drain_tun(self) -> None:
        assert self._tun is not None
        packets = self._tun.read_batch(_BATCH)
        now = time.monotonic()
        with self._lock:
            outputs = [o for p in packets for o in self.core.from_tun(p, now)]
        self._emit(outputs)

    def _drain_raw41(self) -> None:
        assert self._raw41 is not None
        now = time.monotonic()
        outputs: list[Output] = []
        with self._lock:
            for _ in range(_BATCH):
                try:
                    data = self._raw41.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                ihl = (data[0] & 0x0F) * 4
                outputs.extend(self.core.from_proto41(data[ihl:], data[12:16], now))
        self._emit(outputs)

    def _drain_raw4in6(self) -> None:
        assert self._raw4in6 is not None
        now = time.monotonic()
        outputs: list[Output] = []
        with self._lock:
            for _ in range(_BATCH):
                try:
                    data, addr = self._raw4in6.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                src = ipaddress.IPv6Address(addr[0].split("%")[0]).packed
                outputs.extend(self.core.from_4in6(data, src, now))
        self._emit(outputs)

    def _drain_ayiya(self) -> None:
        assert self._ayiya is not None
        now = time.monotonic()
        outputs: list[Output] = []
        with self._lock:
            for _ in range(_BATCH):
                try:
                    data, addr = self._ayiya.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log.debug("ayiya receive: %s", e)
                    continue
                outputs.extend(self.core.from_ayiya(data, (addr[0], addr[1]), now))
            learned, self.core.learned = self.core.learned, []
        if learned and self._on_learned is not None:
            self._on_learned(learned)
        self._emit(outputs)

    def _emit(self, outputs: list[Output]) -> None:
        for where, pkt, dest in outputs:
            try:
                if where is Out.TUN:
                    assert self._tun is not None
                    self._tun.write(pkt)
                elif where is Out.UDP:
                    if self._udp_send is not None:
                        self._udp_send(pkt, dest)  # type: ignore[arg-type]
                elif where is Out.AYIYA:
                    if self._ayiya is not None:
                        self._ayiya.sendto(pkt, dest)  # type: ignore[call-overload]
                elif where is Out.PROTO41:
                    if self._raw41 is not None:
                        self._raw41.sendto(pkt, (socket.inet_ntoa(dest), 0))  # type: ignore[arg-type]
                elif self._raw4in6 is not None:
                    addr = socket.inet_ntop(socket.AF_INET6, dest)  # type: ignore[arg-type]
                    self._raw4in6.sendto(pkt, (addr, 0))
            except OSError as e:
                # A full socket buffer or an unreachable endpoint drops one packet, as a
                # router would; it is counted, never fatal.
                self.send_errors += 1
                if e.errno not in (
                    errno.EAGAIN,
                    errno.ENOBUFS,
                    errno.EHOSTUNREACH,
                    errno.ENETUNREACH,
                    errno.EMSGSIZE,
                ):
                    log.debug("data plane send failed: %s", e)
