"""Load benchmark for the TSP broker: session rate, restart time and a reconnect storm.

Run from the repository root (a full ``--scenario all`` takes two to three minutes)::

    .venv/bin/python bench/bench_tsp.py --scenario all
    .venv/bin/python bench/bench_tsp.py --scenario udp-anon --concurrency 500 --duration 10
    .venv/bin/python bench/bench_tsp.py --scenario tcp-digest --concurrency 200 --clients 400
    .venv/bin/python bench/bench_tsp.py --scenario restart --tunnels 10000 --repeat 3
    .venv/bin/python bench/bench_tsp.py --scenario storm --clients 10000
    .venv/bin/python bench/bench_tsp.py --scenario all --json results.json

Each scenario starts the broker as a separate process (``tunnelbroker serve --config
<tmp>/bench.toml``: data in a temporary directory, TSP on 127.0.0.1 and a free port, log level
WARNING), pinned to CPU 1 with ``taskset`` while this load generator pins itself to CPU 0, so
each gets one core of a 2-core machine. The broker is always stopped at the end.

Scenarios (bars from the issue):

* ``udp-anon``: closed-loop anonymous v6udpv4 sessions over UDP (VERSION, AUTHENTICATE
  ANONYMOUS, create, accept: four datagrams with gogoc's reliable-UDP header), ``--concurrency``
  in flight. Bar: >= 1,000 complete sessions/s.
* ``tcp-digest``: closed-loop DIGEST-MD5 sessions over TCP (VERSION, AUTHENTICATE DIGEST-MD5,
  response, rspauth + 200, create v6v4, accept) for ``--clients`` accounts. Bar: >= 300/s.
* ``restart``: ``--tunnels`` active tunnels and their allocations are written to the store,
  then the broker is started ``--repeat`` times; measured from process start to the first
  completed new UDP session. Bar: < 5 s.
* ``storm``: ``--clients`` distinct clients (hosts behind 253 NAT addresses, each claiming its
  own private address) set up tunnels, then all re-signal at once: a new socket each, same
  source address and claimed address, so the broker replaces their tunnels rather than adding.
  Measured until the last completes. Bar: all done in < 20 s.

UDP clients retransmit on gogoc's measured schedule (2, 2, 2, 2, 4, 8, 16, 30 s; ``--rto``
scales it) and give up after the eighth retransmission; retransmissions are counted.

The load generator is a minimal TSP client written for speed (raw non-blocking sockets driven
by the event loop's reader callbacks), not the project's client. Clients are spread over
loopback source addresses 127.0.0.2-254 (then 127.0.1.x and on: all of 127/8 is local on
Linux) so the broker's per-address state looks like many hosts, not one. Because all of that
still comes from one machine, the bench configuration raises the per-IPv4 limits.

Results are printed as a table; ``--json PATH`` (``-`` for stdout) also writes them as JSON.
bench/README.md has the figures measured on the reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import itertools
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunnelbroker.broker.users import UserService, digest_ha1_hex, hash_password
from tunnelbroker.protocols.sasl.digest_md5 import DigestClient
from tunnelbroker.protocols.tsp import framing
from tunnelbroker.store import AllocationRecord, Changes, Store, TunnelRecord

BARS = {
    "udp-anon": ("sessions/s", 1000.0, ">="),
    "tcp-digest": ("sessions/s", 300.0, ">="),
    "restart": ("s to first session", 5.0, "<"),
    "storm": ("s until all done", 20.0, "<"),
}

REALM = "bench"
PASSWORD = "bench-password"
SERVER_HOST = "127.0.0.1"
#: gogoc's first sequence number on every new socket (tsp.md §2.3).
FIRST_SEQ = 240
#: gogoc's measured retransmission gaps in seconds (tsp.md §2.3), scaled by ``--rto`` / 2.
GOGOC_GAPS = (2.0, 2.0, 2.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: Linux's IP_BIND_ADDRESS_NO_PORT: pick the port at connect(), so 4-tuples may share it.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CLK_TCK = os.sysconf("SC_CLK_TCK")

VERSION_LINE = b"VERSION=2.0.0\r\n"
AUTH_ANONYMOUS = b"AUTHENTICATE ANONYMOUS\r\n\0"  # gogoc's bytes, trailing NUL included
AUTH_DIGEST = b"AUTHENTICATE DIGEST-MD5\r\n"
ACCEPT = framing.encode_request(b'<tunnel action="accept"></tunnel>')


def create_request(tunnel_type: str, claim: str) -> bytes:
    """A ``create`` exactly as gogoc frames it (tsp.md §2.5), with ``claim`` as our address."""
    xml = (
        f'<tunnel action="create" type="{tunnel_type}" proxy="no">\r\n'
        " <client>\r\n"
        f'  <address type="ipv4">{claim}</address>\r\n'
        '  <keepalive interval="30">\r\n'
        '    <address type="ipv6">::</address>\r\n'
        "  </keepalive>\r\n"
        " </client>\r\n"
        "</tunnel>\r\n"
    )
    return framing.encode_request(xml.encode("ascii"))


def loopback_address(k: int) -> str:
    """The k-th client source address: 127.0.0.2-254, then 127.0.1.2-254, and so on."""
    return f"127.0.{k // 253}.{2 + k % 253}"


class PortPlan:
    """Hands out a fresh source port per (address) for every UDP session.

    The kernel's ephemeral choice sometimes hands a closed socket's port to the next socket on
    the same address. The broker then still holds the old, established session for that
    (address, port) and drops the new VERSION (sequence 240 again) as a stale retransmission,
    answering nothing (see README, "server-side problems"). Counting ports up per address keeps
    every session on a 4-tuple the broker has not seen, which is what this benchmark measures.
    """

    FIRST, LAST = 10_000, 65_535

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def bind(self, sock: socket.socket, addr: str) -> None:
        port = self._next.get(addr, self.FIRST)
        for _ in range(200):
            candidate = port
            port = port + 1 if port < self.LAST else self.FIRST
            try:
                sock.bind((addr, candidate))
            except OSError:  # in use by someone else: skip it
                continue
            self._next[addr] = port
            return
        raise OSError(f"no free port on {addr}")


PORTS = PortPlan()


def nat_claim(k: int) -> str:
    """A distinct private address a client behind a NAT would claim (10/8, RFC 1918)."""
    return str(ipaddress.IPv4Address(0x0A000001 + k))


# --------------------------------------------------------------------------- measurements


@dataclass
class Outcome:
    """One session, as the client saw it."""

    ok: bool
    latency: float
    retransmits: int = 0
    reason: str = ""


@dataclass
class Tally:
    """Outcomes of a batch of sessions."""

    latencies: list[float] = field(default_factory=list)
    #: When each successful session completed, seconds after ``first``.
    done_at: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    retransmits: int = 0
    retransmitted_sessions: int = 0
    first: float = 0.0
    last: float = 0.0

    def add(self, o: Outcome) -> None:
        self.last = time.monotonic()
        self.retransmits += o.retransmits
        self.retransmitted_sessions += o.retransmits > 0
        if o.ok:
            self.latencies.append(o.latency)
            self.done_at.append(self.last - self.first)
        else:
            self.failures[o.reason] += 1

    def completed_within(self, seconds: float) -> int:
        return sum(1 for t in self.done_at if t < seconds)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        elapsed = max(self.last - self.first, 1e-9)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "completed": len(lat),
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures.most_common(10)),
            "elapsed_s": round(elapsed, 3),
            "sessions_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "retransmits": self.retransmits,
            "sessions_with_retransmits": self.retransmitted_sessions,
            # Completions per second of the run: shows whether the rate holds up over time.
            "per_second": [
                sum(1 for t in self.done_at if s <= t < s + 1) for s in range(int(elapsed) + 1)
            ],
        }


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters; RcvbufErrors counts datagrams dropped on a full socket."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


class CpuMeter:
    """CPU used by the broker and by this generator over a window, as a share of one core."""

    def __init__(self, broker_pid: int) -> None:
        self.pid = broker_pid
        self.t0 = time.monotonic()
        self.b0 = proc_cpu(broker_pid)
        self.g0 = self_cpu()
        self.u0 = udp_counters()
        self.rss0 = proc_rss_mb(broker_pid)

    def result(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        u1 = udp_counters()
        return {
            "broker_cpu_pct": round(100 * (proc_cpu(self.pid) - self.b0) / wall, 1),
            "generator_cpu_pct": round(100 * (self_cpu() - self.g0) / wall, 1),
            "udp_rcvbuf_drops": u1["RcvbufErrors"] - self.u0["RcvbufErrors"],
            "broker_rss_mb_before": self.rss0,
            "broker_rss_mb": proc_rss_mb(self.pid),
        }


# --------------------------------------------------------------------------- the broker


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (checked, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((SERVER_HOST, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((SERVER_HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for TCP and UDP")


def bench_config(data_dir: Path, port: int, log_level: str) -> str:
    """The broker's TOML. All load comes from loopback, so the per-IPv4 limits (RFC 5572 §8
    defaults: 5 sessions/s, burst 20, 16 half-open, 4 tunnels per address) are raised; the
    generator still spreads clients over many source addresses."""
    return f"""\
data_dir = "{data_dir}"

[broker]
realm = "{REALM}"

[tsp]
listen = ["{SERVER_HOST}"]
port = {port}

# The control plane is measured here; the data plane has its own benchmark.
[tunnelserver]
backend = "none"

[limits]
sessions_per_second_per_ipv4 = 100000.0
session_burst_per_ipv4 = 100000
half_open_per_ipv4 = 100000
tunnels_per_ipv4 = 100000
max_sessions = 100000
max_tunnels = 1000000

[logging]
level = "{log_level}"
"""


class Broker:
    """``tunnelbroker serve`` in its own process, on its own core."""

    def __init__(
        self, workdir: Path, log_level: str = "WARNING", pin: bool = True, rcvbuf: int = 0
    ) -> None:
        self.workdir = workdir
        self.rcvbuf = rcvbuf
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.config_path = workdir / "bench.toml"
        self.config_path.write_text(bench_config(self.data_dir, self.port, log_level))
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pin = pin and shutil.which("taskset") is not None and os.cpu_count() != 1
        self.started_at = 0.0

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'tunnelbroker.db'}"

    @property
    def address(self) -> tuple[str, int]:
        return (SERVER_HOST, self.port)

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "tunnelbroker"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tunnelbroker"]
        if self.rcvbuf:
            cmd = [sys.executable, "-c", RCVBUF_PATCH % self.rcvbuf]
        cmd += ["serve", "--config", str(self.config_path)]
        # The last CPU for the broker; the generator takes the first (see pin_self).
        return ["taskset", "-c", str(max(os.sched_getaffinity(0))), *cmd] if self.pin else cmd

    def start(self) -> None:
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll until the TCP port accepts; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(self.address) == 0:
                    return time.monotonic() - self.started_at
            time.sleep(0.02)
        raise RuntimeError(f"broker not answering on port {self.port} after {timeout}s")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> float | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns how long a clean stop took."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
        finally:
            self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """ERROR/CRITICAL log lines and exception lines (what the report needs to quote)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        keep = (" ERROR ", " CRITICAL ", "Error:", "Exception:", "Traceback")
        return [line for line in text.splitlines() if any(k in line for k in keep)]


#: ``--broker-rcvbuf`` (a diagnostic, not the shipped broker): the same CLI, with SO_RCVBUF set
#: on the broker's UDP sockets by wrapping its socket factory in the broker process.
RCVBUF_PATCH = """\
import socket, sys
import tunnelbroker.listeners.tsp as tsp
_bind = tsp.bind_socket
def bind_socket(host, port, kind):
    sock = _bind(host, port, kind)
    if kind == socket.SOCK_DGRAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, %d)
    return sock
tsp.bind_socket = bind_socket
from tunnelbroker.cli import main
sys.argv[0] = "tunnelbroker"
main()
"""


@contextlib.contextmanager
def running_broker(workdir: Path, log_level: str, pin: bool, rcvbuf: int = 0) -> Iterator[Broker]:
    broker = Broker(workdir, log_level, pin, rcvbuf)
    try:
        broker.start()
        broker.wait_ready()
        yield broker
    finally:
        broker.stop()


def pin_self() -> None:
    """Keep the generator on the first CPU, away from the broker's."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, {min(cpus)})


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def new_store(url: str) -> Store:
    store = Store(url)
    store.migrate()
    return store


def count_active(url: str) -> int:
    """Active tunnels in the store (read after the broker stopped and flushed)."""
    with Store(url) as store:
        return store.count_tunnels("active")


def add_users(store: Store, count: int) -> list[int]:
    """``count`` accounts ``bench00000``...; returns their ids.

    The first goes through UserService.add (the real path, one argon2 hash). The rest reuse
    that argon2 hash, which only PLAIN would check, to save ~15 ms each; their HA1, which
    DIGEST-MD5 uses, is computed per user as UserService would.
    """
    ids = [UserService(store, REALM).add("bench00000", PASSWORD).id]
    shared_hash = hash_password(PASSWORD)
    for u in range(1, count):
        name = f"bench{u:05d}"
        ha1 = digest_ha1_hex(name, REALM, PASSWORD)
        ids.append(store.add_user(name, shared_hash, ha1, REALM).id)
    return ids


# --------------------------------------------------------------------------- UDP client


class UdpSession:
    """One anonymous v6udpv4 session over reliable UDP, driven by reader callbacks.

    Four messages (VERSION, AUTHENTICATE ANONYMOUS, create, accept), each waiting for the reply
    that echoes its header, retransmitted with the same sequence number on gogoc's schedule.
    """

    __slots__ = (
        "loop",
        "src",
        "server",
        "messages",
        "on_done",
        "gaps",
        "deadline",
        "sock",
        "step",
        "tries",
        "retransmits",
        "t0",
        "timer",
        "sent_ts",
        "done",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: str,
        server: tuple[str, int],
        claim: str,
        on_done: Callable[[Outcome], None],
        gaps: tuple[float, ...],
        deadline: float,
    ) -> None:
        self.loop = loop
        self.src = src
        self.server = server
        self.messages = (VERSION_LINE, AUTH_ANONYMOUS, create_request("v6udpv4", claim), ACCEPT)
        self.on_done = on_done
        self.gaps = gaps
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.step = 0
        self.tries = 0
        self.retransmits = 0
        self.t0 = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.sent_ts: list[int] = []
        self.done = False

    def start(self) -> None:
        self.t0 = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            PORTS.bind(sock, self.src)
            # Connected, as gogoc's is: replies from any other address are not ours.
            sock.connect(self.server)
        except OSError as e:
            sock.close()
            self.finish(False, f"socket: {e}")
            return
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self.readable)
        self.send()

    def send(self) -> None:
        assert self.sock is not None
        # The timestamp is opaque to the server; gogoc uses ms since the socket was opened.
        ts = int((time.monotonic() - self.t0) * 1000) & 0xFFFFFFFF
        self.sent_ts.append(ts)
        header = struct.pack(">II", 0xF0000000 | (FIRST_SEQ + self.step), ts)
        with contextlib.suppress(OSError):  # refused before the broker binds: retransmit
            self.sock.send(header + self.messages[self.step])
        gap = self.gaps[min(self.tries, len(self.gaps) - 1)]
        self.timer = self.loop.call_later(gap, self.timeout)

    def timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.tries >= len(self.gaps) or time.monotonic() >= self.deadline:
            self.finish(False, f"no answer to message {self.step + 1}")
            return
        self.tries += 1
        self.retransmits += 1
        self.send()

    def readable(self) -> None:
        assert self.sock is not None
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # ICMP port unreachable, broker not up yet: the timer retries
                return
            if len(data) < 8:
                continue
            word, ts = struct.unpack_from(">II", data)
            # The echo rule: only the reply carrying our seq (and a timestamp we sent) counts.
            if word != 0xF0000000 | (FIRST_SEQ + self.step) or ts not in self.sent_ts:
                continue
            self.answered(data[8:])

    def answered(self, payload: bytes) -> None:
        step = self.step
        problem = ""
        if step == 0:
            if not payload.startswith(b"CAPABILITY ") or b"TUNNEL=V6UDPV4" not in payload:
                problem = "VERSION"
        elif step == 1:
            if not framing.strip_nuls(payload).startswith(b"200"):
                problem = "AUTHENTICATE"
        elif step == 2:
            problem = check_offer(payload, "v6udpv4")
        elif payload:
            problem = "accept"
        if problem:
            self.finish(False, f"{problem}: {payload[:40]!r}")
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.step += 1
        if self.step == len(self.messages):
            self.finish(True)
            return
        self.tries = 0
        self.sent_ts = []
        self.send()

    def finish(self, ok: bool, reason: str = "") -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.on_done(Outcome(ok, time.monotonic() - self.t0, self.retransmits, reason))


def check_offer(payload: bytes, tunnel_type: str) -> str:
    """'' if ``payload`` is a complete framed ``200`` offer of ``tunnel_type``, else why not."""
    nl = payload.find(b"\n")
    head = framing.strip_nuls(payload[:nl]) if nl >= 0 else b""
    if not head.lower().startswith(b"content-length:"):
        return "create: not framed"
    body = payload[nl + 1 :]
    if int(head.split(b":", 1)[1]) != len(body):
        return "create: Content-length mismatch"
    reply = framing.parse_reply(body)
    if reply.code != 200:
        return f"create: {reply.code} {reply.text}"
    if f'type="{tunnel_type}"'.encode() not in reply.xml:
        return "create: wrong type"
    return ""


class Budget:
    """Closed-loop budget: keep starting sessions until a deadline or a count is reached."""

    def __init__(self, duration: float | None, sessions: int | None) -> None:
        self.until = None if duration is None else time.monotonic() + duration
        self.left = sessions

    def take(self) -> bool:
        if self.until is not None and time.monotonic() >= self.until:
            return False
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        return True


async def udp_closed_loop(
    server: tuple[str, int],
    concurrency: int,
    budget: Budget,
    client: Callable[[int, int], tuple[str, str]],
    gaps: tuple[float, ...],
    session_timeout: float,
) -> Tally:
    """``concurrency`` slots, each starting a new session when its last one ends.

    ``client(slot, n)`` gives the n-th session's (source address, claimed address).
    """
    loop = asyncio.get_running_loop()
    tally = Tally(first=time.monotonic())
    all_done = loop.create_future()
    active = 0
    counter = itertools.count()

    def launch(slot: int) -> None:
        nonlocal active
        if not budget.take():
            if active == 0 and not all_done.done():
                all_done.set_result(None)
            return
        active += 1
        src, claim = client(slot, next(counter))

        def done(o: Outcome) -> None:
            nonlocal active
            active -= 1
            tally.add(o)
            # Not from inside the finishing session's callback chain: keep stacks flat.
            loop.call_soon(launch, slot)

        UdpSession(loop, src, server, claim, done, gaps, time.monotonic() + session_timeout).start()

    for slot in range(concurrency):
        launch(slot)
    if active == 0 and not all_done.done():
        all_done.set_result(None)
    await all_done
    return tally


async def udp_all_at_once(
    server: tuple[str, int],
    clients: list[tuple[str, str]],
    gaps: tuple[float, ...],
    session_timeout: float,
) -> Tally:
    """Start one session per client in a single burst; wait for all of them."""
    loop = asyncio.get_running_loop()
    tally = Tally(first=time.monotonic())
    all_done = loop.create_future()
    remaining = len(clients)

    def done(o: Outcome) -> None:
        nonlocal remaining
        tally.add(o)
        remaining -= 1
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)

    deadline = time.monotonic() + session_timeout
    for src, claim in clients:
        UdpSession(loop, src, server, claim, done, gaps, deadline).start()
    await all_done
    return tally


# --------------------------------------------------------------------------- TCP client


class StreamReader:
    """Lines and counted bytes from a non-blocking socket, whatever the read boundaries."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.buf = bytearray()

    async def fill(self) -> None:
        data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            raise EOFError(f"closed by broker after {bytes(self.buf[:60])!r}")
        self.buf += data

    async def line(self) -> bytes:
        while (nl := self.buf.find(b"\n")) < 0:
            await self.fill()
        out = bytes(self.buf[: nl + 1])
        del self.buf[: nl + 1]
        return out

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class SessionFailed(Exception):
    pass


async def tcp_digest_session(
    server: tuple[str, int], src: str, user: str, cnonce: str, timeout: float
) -> Outcome:
    """One DIGEST-MD5 v6v4 session over TCP, from VERSION to accept."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, server)
            r = StreamReader(loop, sock)
            await loop.sock_sendall(sock, VERSION_LINE)
            cap = await r.line()
            if not cap.startswith(b"CAPABILITY ") or b"AUTH=DIGEST-MD5" not in cap:
                raise SessionFailed(f"VERSION: {cap[:40]!r}")
            await loop.sock_sendall(sock, AUTH_DIGEST)
            challenge = base64.b64decode(framing.strip_nuls(await r.line()))
            digest = DigestClient(user, PASSWORD, cnonce, host=SERVER_HOST)
            await loop.sock_sendall(sock, base64.b64encode(digest.respond(challenge)) + b"\r\n")
            # rspauth and "200 Success" are separate writes, read here in one or two recv()s.
            rspauth = await r.line()
            try:
                digest.check_rspauth(base64.b64decode(framing.strip_nuls(rspauth)))
            except Exception as e:
                raise SessionFailed(f"rspauth: {rspauth[:40]!r}") from e
            status = await r.line()
            if not status.startswith(b"200"):
                raise SessionFailed(f"AUTHENTICATE: {status[:40]!r}")
            await loop.sock_sendall(sock, create_request("v6v4", src))
            head = await r.line()
            if not head.lower().startswith(b"content-length:"):
                raise SessionFailed(f"create: {head[:40]!r}")
            body = await r.exactly(int(head.split(b":", 1)[1]))
            problem = check_offer(head + body, "v6v4")
            if problem:
                raise SessionFailed(problem)
            # The broker answers nothing to accept on TCP: sending it completes the session.
            await loop.sock_sendall(sock, ACCEPT)
        return Outcome(True, time.monotonic() - t0)
    except SessionFailed as e:
        return Outcome(False, time.monotonic() - t0, reason=str(e))
    except TimeoutError:
        return Outcome(False, time.monotonic() - t0, reason="timeout")
    except (OSError, EOFError, ValueError) as e:
        return Outcome(False, time.monotonic() - t0, reason=f"{type(e).__name__}: {e}"[:80])
    finally:
        sock.close()


async def tcp_closed_loop(
    server: tuple[str, int], concurrency: int, users: int, budget: Budget, timeout: float
) -> Tally:
    """Slot j signals as users j, j+C, j+2C... in turn, each from its own source address:
    a v6v4 endpoint (protocol 41) can carry only one tunnel, and one user's sessions never
    overlap."""
    tally = Tally(first=time.monotonic())
    cnonces = itertools.count(int(time.time()))

    async def slot(j: int) -> None:
        for u in itertools.cycle(range(j, users, concurrency)):
            if not budget.take():
                return
            src = loopback_address(u)
            tally.add(
                await tcp_digest_session(server, src, f"bench{u:05d}", str(next(cnonces)), timeout)
            )

    await asyncio.gather(*(slot(j) for j in range(min(concurrency, users))))
    return tally


# --------------------------------------------------------------------------- scenarios


@dataclass
class Options:
    scenario: str
    concurrency: int | None
    clients: int | None
    duration: float
    sessions: int | None
    warmup: float
    tunnels: int
    repeat: int
    rto: float
    anon_claims: str
    pin: bool
    keep: bool
    broker_rcvbuf: int

    @property
    def gaps(self) -> tuple[float, ...]:
        return tuple(g * self.rto / 2.0 for g in GOGOC_GAPS)


def verdict(scenario: str, value: float | None) -> str:
    if value is None:
        return "not met"
    _, bar, op = BARS[scenario]
    return "met" if (value >= bar if op == ">=" else value < bar) else "not met"


async def scenario_udp_anon(opts: Options, workdir: Path) -> dict[str, Any]:
    concurrency = opts.concurrency or 200
    with running_broker(workdir, "WARNING", opts.pin, opts.broker_rcvbuf) as broker:
        if opts.anon_claims == "source":
            # Slot j always signals from its own address and claims it: each session replaces
            # that client's previous tunnel (gogoc re-signalling from a new port).
            def client(slot: int, n: int) -> tuple[str, str]:
                return loopback_address(slot), loopback_address(slot)
        else:
            # Every session is a new client behind a NAT: a new tunnel and a new /64 each.
            def client(slot: int, n: int) -> tuple[str, str]:
                return loopback_address(slot % 253), nat_claim(n)

        if opts.warmup > 0:
            await udp_closed_loop(
                broker.address, concurrency, Budget(opts.warmup, None), client, opts.gaps, 30
            )
        budget = Budget(None if opts.sessions else opts.duration, opts.sessions)
        meter = CpuMeter(broker.pid)
        tally = await udp_closed_loop(broker.address, concurrency, budget, client, opts.gaps, 30)
        result: dict[str, Any] = {"concurrency": concurrency, "claims": opts.anon_claims}
        result |= tally.summary() | meter.result()
        broker.stop()
        result["tunnels_in_store"] = count_active(broker.db_url)
        result["broker_log_problems"] = broker.log_problems()[:10]
    result["value"] = result["sessions_per_s"]
    result["verdict"] = verdict("udp-anon", result["value"])
    return result


async def scenario_tcp_digest(opts: Options, workdir: Path) -> dict[str, Any]:
    concurrency = opts.concurrency or 200
    users = max(opts.clients or 2 * concurrency, concurrency)
    data_dir = workdir / "data"
    t0 = time.monotonic()
    store = new_store(f"sqlite:///{data_dir / 'tunnelbroker.db'}")
    add_users(store, users)
    store.close()
    users_s = time.monotonic() - t0
    with running_broker(workdir, "WARNING", opts.pin, opts.broker_rcvbuf) as broker:
        if opts.warmup > 0:
            await tcp_closed_loop(broker.address, concurrency, users, Budget(opts.warmup, None), 30)
        budget = Budget(None if opts.sessions else opts.duration, opts.sessions)
        meter = CpuMeter(broker.pid)
        tally = await tcp_closed_loop(broker.address, concurrency, users, budget, 30)
        result: dict[str, Any] = {"concurrency": concurrency, "users": users}
        result |= tally.summary() | meter.result()
        broker.stop()
        result["tunnels_in_store"] = count_active(broker.db_url)
        result["users_created_s"] = round(users_s, 2)
        result["broker_log_problems"] = broker.log_problems()[:10]
    result["value"] = result["sessions_per_s"]
    result["verdict"] = verdict("tcp-digest", result["value"])
    return result


def populate_tunnels(store: Store, count: int, now: float) -> dict[str, int]:
    """``count`` active tunnels with their allocations, as the broker would have written them.

    70% anonymous v6udpv4 behind NATs (own link /64), 30% accounts on v6v4 (the account's
    /64; every other one also a delegated /56 for a router), one account per tunnel.
    Endpoints come from 198.18.0.0/15 (RFC 2544), distinct per tunnel.
    """
    rng = random.Random(1)
    link = ipaddress.IPv6Network("2001:db8:8000::/40")  # the default pools (bench.toml)
    delegated = ipaddress.IPv6Network("2001:db8:c000::/34")
    endpoints = ipaddress.IPv4Network("198.18.0.0/15")
    n_users = sum(1 for i in range(count) if i % 10 >= 7)
    user_ids = add_users(store, n_users) if n_users else []
    changes = Changes()
    aid = itertools.count(1)
    users = iter(user_ids)
    n_delegated = 0
    for i in range(count):
        tid = i + 1
        anonymous = i % 10 < 7
        user_id = None if anonymous else next(users)
        lifetime = 86400 if anonymous else 7 * 86400
        created = now - rng.uniform(60, lifetime / 2)
        endpoint = str(endpoints[i + 1])
        prefix = str(ipaddress.IPv6Network((int(link.network_address) + (tid << 64), 64)))
        router = not anonymous and i % 2 == 0
        dprefix = None
        if router:
            n_delegated += 1
            dnet = (int(delegated.network_address) + (n_delegated << 72), 56)
            dprefix = str(ipaddress.IPv6Network(dnet))
        changes.tunnels.append(
            TunnelRecord(
                id=tid,
                user_id=user_id,
                kind="tsp",
                type="v6udpv4" if anonymous else "v6v4",
                state="active",
                transport="udp" if anonymous else "tcp",
                client_ipv4=endpoint,
                client_port=rng.randrange(1024, 65536) if anonymous else None,
                client_ipv6=None,
                server_ipv4="192.0.2.1",
                server_ipv6="2001:db8::1",
                link_prefix=prefix,
                delegated_prefix=dprefix,
                dns_servers=["ns1.example.net", "ns2.example.net"] if router else [],
                keepalive_interval=30,
                mtu=1280,
                created_at=created,
                updated_at=created,
                expires_at=created + lifetime,
                last_seen=now - rng.uniform(0, 30),
                claimed_ipv4=f"192.168.{(i >> 8) & 255}.{i & 255}" if anonymous else endpoint,
            )
        )
        changes.allocations.append(
            AllocationRecord(next(aid), user_id, tid, "link", prefix, created)
        )
        if dprefix is not None:
            changes.allocations.append(
                AllocationRecord(next(aid), user_id, tid, "delegated", dprefix, created)
            )
    store.apply(changes)
    return {"tunnels": count, "users": n_users, "delegated": n_delegated}


async def first_session_after_start(broker: Broker, timeout: float) -> float:
    """Start the broker, then retry one anonymous UDP session (50 ms retransmits) until it
    completes; seconds from process start to the accept's answer."""
    loop = asyncio.get_running_loop()
    broker.start()
    deadline = broker.started_at + timeout
    while time.monotonic() < deadline:
        broker.check_alive()
        fut: asyncio.Future[Outcome] = loop.create_future()
        # Until the port is bound each try meets ICMP port-unreachable; 50 ms retransmits
        # (40 of them: 2 s) keep the probe's own delay out of the figure.
        UdpSession(
            loop,
            loopback_address(0),
            broker.address,
            loopback_address(0),
            fut.set_result,
            (0.05,) * 40,
            deadline,
        ).start()
        outcome = await fut
        if outcome.ok:
            return time.monotonic() - broker.started_at
    raise RuntimeError(f"no session completed within {timeout}s of start")


async def scenario_restart(opts: Options, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / "data"
    t0 = time.monotonic()
    store = new_store(f"sqlite:///{data_dir / 'tunnelbroker.db'}")
    populated = populate_tunnels(store, opts.tunnels, time.time())
    store.close()
    populate_s = time.monotonic() - t0
    times: list[float] = []
    ready: list[float] = []
    stops: list[float | None] = []
    live: list[int] = []
    # INFO, for the daemon's own "ready in X s: N live tunnels" line; one session logs little.
    broker = Broker(workdir, "INFO", opts.pin, opts.broker_rcvbuf)
    try:
        for _ in range(opts.repeat):
            mark = broker.log_path.stat().st_size if broker.log_path.exists() else 0
            times.append(await first_session_after_start(broker, 60))
            stops.append(broker.stop())
            text = broker.log_path.read_text(errors="replace")[mark:]
            for line in text.splitlines():
                if "tunnelbroker ready in " in line:
                    ready.append(float(line.split("ready in ", 1)[1].split("s", 1)[0]))
                    live.append(int(line.split(": ", 2)[2].split(" live", 1)[0]))
    finally:
        broker.stop()
    result: dict[str, Any] = {
        "stored": populated,
        "populate_s": round(populate_s, 2),
        "start_to_session_s": [round(t, 3) for t in times],
        "min_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "daemon_ready_s": ready,
        "live_tunnels_loaded": live,
        "stop_s": [None if s is None else round(s, 3) for s in stops],
        "broker_log_problems": broker.log_problems()[:10],
    }
    result["value"] = result["median_s"]
    result["verdict"] = verdict("restart", max(times))
    return result


async def scenario_storm(opts: Options, workdir: Path) -> dict[str, Any]:
    n = opts.clients or 10_000
    raise_fd_limit(n + 1024)
    # Client i: one of the 253 source addresses, and a private address of its own that it
    # claims (10,000 hosts behind 253 NAT addresses): distinct clients, distinct tunnels.
    clients = [(loopback_address(i % 253), nat_claim(i)) for i in range(n)]
    with running_broker(workdir, "WARNING", opts.pin, opts.broker_rcvbuf) as broker:
        # Phase 1: everyone gets a tunnel, at whatever rate (closed loop).
        def setup_client(slot: int, k: int) -> tuple[str, str]:
            return clients[k]

        setup = await udp_closed_loop(
            broker.address,
            opts.concurrency or 100,
            Budget(None, n),
            setup_client,
            opts.gaps,
            60,
        )
        await asyncio.sleep(1.0)  # let the broker's write-behind settle
        # Phase 2: all re-signal at once, each from a new socket (gogoc reconnects that way).
        meter = CpuMeter(broker.pid)
        storm = await udp_all_at_once(broker.address, clients, opts.gaps, 120)
        result: dict[str, Any] = {"clients": n, "setup": setup.summary()}
        result |= storm.summary() | meter.result()
        bar = BARS["storm"][1]
        result["completed_within_bar"] = storm.completed_within(bar)
        result["last_ok_s"] = round(max(storm.done_at, default=0.0), 3)
        broker.stop()
        result["tunnels_in_store"] = count_active(broker.db_url)
        result["broker_log_problems"] = broker.log_problems()[:10]
    result["value"] = result["elapsed_s"]
    all_done = result["failed"] == 0
    result["verdict"] = verdict("storm", result["elapsed_s"] if all_done else None)
    return result


SCENARIOS = {
    "udp-anon": scenario_udp_anon,
    "tcp-digest": scenario_tcp_digest,
    "restart": scenario_restart,
    "storm": scenario_storm,
}


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_gb = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    sqlite = __import__("sqlite3").sqlite_version
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return {
        "commit": commit,
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite,
    }


def headline(name: str, r: dict[str, Any]) -> tuple[str, str, str]:
    unit, bar, op = BARS[name]
    if name in ("udp-anon", "tcp-digest"):
        measured = (
            f"{r['sessions_per_s']:.0f}/s at {r['concurrency']} in flight; "
            f"p50 {r['p50_ms'] or 0:.0f} ms, p99 {r['p99_ms'] or 0:.0f} ms; "
            f"{r['failed']} failed, {r['retransmits']} retx"
        )
    elif name == "restart":
        times = r["start_to_session_s"]
        measured = f"min {r['min_s']:.2f} s, median {r['median_s']:.2f} s, max {max(times):.2f} s"
    else:
        measured = (
            f"{r['elapsed_s']:.1f} s; {r['completed']} ok, {r['failed']} failed, "
            f"{r['completed_within_bar']} done within {bar:g} s; {r['retransmits']} retx"
        )
    return measured, f"{op} {bar:g} {unit}", r["verdict"]


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="TSP broker benchmark")
    for col in ("scenario", "measured", "bar", "verdict", "broker CPU", "generator CPU"):
        table.add_column(col)
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, f"error: {r['error']}", "", "not run", "", "")
            continue
        measured, bar, met = headline(name, r)
        table.add_row(
            name,
            measured,
            bar,
            met,
            f"{r['broker_cpu_pct']}%" if "broker_cpu_pct" in r else "",
            f"{r['generator_cpu_pct']}%" if "generator_cpu_pct" in r else "",
        )
    # Wide enough for one line per scenario even when stdout is not a terminal.
    Console(width=max(shutil.get_terminal_size().columns, 150)).print(table)


def parse_args(argv: list[str] | None) -> tuple[Options, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument(
        "--concurrency",
        type=int,
        help="sessions in flight (udp-anon 200, tcp-digest 200, storm set-up 100)",
    )
    p.add_argument(
        "--clients",
        type=int,
        help="distinct clients: storm clients (10000), tcp-digest accounts (2 x concurrency)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--sessions", type=int, help="a session count instead of --duration")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--tunnels", type=int, default=10_000, help="stored tunnels for restart")
    p.add_argument("--repeat", type=int, default=3, help="restarts to time")
    p.add_argument("--rto", type=float, default=2.0, help="first retransmit timeout, s (gogoc: 2)")
    p.add_argument(
        "--anon-claims",
        choices=["source", "nat"],
        default="source",
        help="udp-anon: claim the source address (re-signalling clients replace their "
        "tunnel) or a fresh private address per session (every session a new tunnel)",
    )
    p.add_argument(
        "--broker-rcvbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="diagnostic: run the broker with this SO_RCVBUF on its UDP sockets (patched in "
        "at start; capped by net.core.rmem_max). Not the shipped broker: label such results",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin broker/generator CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--json", metavar="PATH", help="also write results as JSON ('-': stdout)")
    a = p.parse_args(argv)
    opts = Options(
        scenario=a.scenario,
        concurrency=a.concurrency,
        clients=a.clients,
        duration=a.duration,
        sessions=a.sessions,
        warmup=a.warmup,
        tunnels=a.tunnels,
        repeat=a.repeat,
        rto=a.rto,
        anon_claims=a.anon_claims,
        pin=not a.no_pin,
        keep=a.keep,
        broker_rcvbuf=a.broker_rcvbuf,
    )
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    opts, json_path = parse_args(argv)
    if opts.pin:
        pin_self()
    raise_fd_limit(4096)
    names = list(SCENARIOS) if opts.scenario == "all" else [opts.scenario]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"tb-bench-{name}-"))
        print(f"running {name} in {workdir} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            results[name] = asyncio.run(SCENARIOS[name](opts, workdir))
        except Exception as e:  # report and go on with the other scenarios
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            if not opts.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        results[name]["scenario_wall_s"] = round(time.monotonic() - started, 1)
    print_table(results)
    report = {"machine": machine_info(), "options": asdict(opts), "results": results}
    if json_path == "-":
        print(json.dumps(report, indent=2))
    elif json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r.get("verdict") == "met" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
