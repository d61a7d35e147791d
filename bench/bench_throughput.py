"""Throughput through real tunnels in the namespace lab, next to the native path (issue 3, 4).

Run as root from the repository root::

    apt-get install iperf3      # the load generator (without it: a slower Python sender)
    .venv/bin/python bench/bench_throughput.py [--seconds 3] [--runs 3] [--json FILE]
    .venv/bin/python bench/bench_throughput.py --quick          # a smoke run, under a minute

It builds the lab (``docs/lab.md``), starts ``tunnelbroker serve`` in ``broker`` (userspace
data plane) and real ``tunnelbroker client --up`` processes, and measures, in one run:

* **End to end, UDP packets/s**, 64-byte and 1,400-byte IPv6 UDP payloads, from a client
  namespace to the IPv6 host ``inet6``: natively (plain IPv6 routed by the broker's kernel over
  the same two veth links), through a v6v4 tunnel (6in4, ``cpub``), a v6udpv4 tunnel (IPv6 in
  UDP, ``cnat`` behind the NAT) and an AYIYA tunnel (SixXS, over TIC, ``cnat``). iperf3 sends;
  an nftables counter in ``inet6`` counts the datagrams that arrive (and drops them, so no
  receiving process competes for the CPU). Native runs unpaced. A tunnel is fed by a pacing
  ladder of offered rates (a flood would starve the client's Python data plane, which shares
  its core with the sender, and measure that livelock instead); the figure is the highest
  delivered rate on the ladder.
* **End to end, TCP Mbit/s**: one iperf3 ``-6`` connection through each path.
* **The tunnel server alone, packets/s per core**: v6udpv4 and v6v4 packets made ready in
  advance (64-byte and 1,400-byte UDP payloads) and sent as fast as a Python loop goes, from
  ``cpub`` straight on a negotiated tunnel's flow (UDP to the TSP port; raw protocol 41), with
  no client data plane in the way, counted at ``inet6``; and the other way (64 and 1,232 bytes,
  the most a 1,280-byte tunnel MTU carries whole), ``inet6`` sending to the negotiated client
  address and an nftables counter in ``cpub`` counting the tunnel packets that arrive. For each
  window: the broker process's CPU time, CPU 1's softirq and other-process time (``/proc``),
  and, where ``perf`` exists, the broker's system calls per packet. "Per core" is packets/s
  divided by (broker CPU + softirq). This is the issue's "packets/s per core" figure.
* **Forwarding under control-plane load**: the server-alone v6udpv4 rate while another client
  signs up anonymous TSP tunnels over TCP as fast as 32 concurrent sessions go.
* **Per-packet cost with 1, 1,000 and 10,000 tunnels configured**: the broker's CPU time per
  packet (and the rate) of server-alone v6udpv4 64-byte forwarding with 0, 999 and 9,999 AYIYA
  tunnels (each with a /128 and a routed /64 in the forwarding table) restored from the store
  when the broker starts. CPU time per packet, unlike the rate, does not move with whatever
  else shares the core.
* **Memory per configured tunnel**: the broker process's RSS with the most tunnels minus with
  the fewest, divided by the difference in live tunnels (the broker's public status).

Pinning: the broker (all its threads) runs on CPU 1 (``taskset``); senders, iperf3 and the
client processes on CPU 0. So "per core" means the broker's core; the kernel work of
delivering the decapsulated packets (routing, the veth to ``inet6``) runs in the broker's
context and counts against that core too. Each figure is the median of ``--runs`` runs. The
exit status is 0 whatever the figures: the bars are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tunnelbroker
from tunnelbroker.lab.topology import Lab

EXE = str(Path(sys.executable).with_name("tunnelbroker"))
USER, PASSWORD = "bench", "bench password 1"
SERVER_CPU, LOAD_CPU = "1", "0"
IPERF3 = shutil.which("iperf3")
PERF = shutil.which("perf")
UDP_PORT = 9000  # the Python senders'; iperf3 uses 5201
#: Offered rates (packets/s) for a tunnel's pacing ladder; it stops once the delivered rate
#: falls behind the offered one (the path is saturated).
LADDER = (20_000, 40_000, 60_000, 80_000, 100_000, 125_000, 150_000, 200_000, 250_000)
QUICK_LADDER = (100_000,)
TICKS = os.sysconf("SC_CLK_TCK")

# Counts, and drops, the UDP datagrams that reach inet6 for the measured ports: arrivals are
# counted without a receiving process. Only datagrams longer than 40 bytes: iperf3's own
# 4-byte "UDP connect" datagram must reach its server. Non-first fragments (a 1,400-byte
# payload through a 1,280-byte tunnel MTU) are dropped uncounted, so the count is datagrams.
_NFT = """
table ip6 tbbench {
  counter rx { }
  chain pre {
    type filter hook prerouting priority -500;
    frag frag-off != 0 drop
    udp dport { 5201, 9000 } udp length > 40 counter name rx drop
  }
}
"""
# In cpub while the encapsulating direction is measured: counts and drops the tunnelled
# packets from the broker (IPv6 in UDP from the TSP port, the first payload nibble 6, which
# leaves TSP signalling alone; protocol 41).
_NFT_ENCAP = """
table ip tbbench {{
  counter rx {{ }}
  chain pre {{
    type filter hook prerouting priority -500;
    ip saddr {broker} udp sport 3653 @th,64,4 6 counter name rx drop
    ip saddr {broker} ip protocol 41 counter name rx drop
  }}
}}
"""
# A paced Python sender, used only when iperf3 is missing: numbered datagrams to argv[1]
# port 9000, argv[2] bytes of payload, argv[4] packets/s (0: unpaced), for argv[3] seconds.
_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 9000))
pad, rate = b"x" * (int(sys.argv[2]) - 8), float(sys.argv[4])
start = time.monotonic(); end = start + float(sys.argv[3])
sent = 0
while (now := time.monotonic()) < end:
    if rate and sent > (now - start) * rate:
        time.sleep(0.0005); continue
    for _ in range(50):
        try:
            s.send(sent.to_bytes(8, "big") + pad); sent += 1
        except OSError:
            pass
"""
# Anonymous TSP sign-ups, as fast as 32 concurrent sessions go, for argv[2] seconds: each one a
# real session (SASL, an offer, an accept, a tunnel written to the store). Prints sessions/s.
_SIGNUPS = """
import asyncio, sys, time
from tunnelbroker.client.tsp import negotiate
async def worker(end, done):
    while time.monotonic() < end:
        try:
            n = await negotiate(sys.argv[1], transport="tcp", tunnel_type="v6v4", timeout=10)
            n.close()
            done.append(1)
        except Exception:
            await asyncio.sleep(0.01)
async def main():
    end, done = time.monotonic() + float(sys.argv[2]), []
    await asyncio.gather(*(worker(end, done) for _ in range(32)))
    print(len(done) / float(sys.argv[2]))
asyncio.run(main())
"""
# The tunnel server alone: negotiate a tunnel of type argv[1] with the library (as the bench
# user), then send 1,024 different ready-made IPv6 UDP packets (argv[4]-byte payloads) to
# argv[3] straight on the tunnel's flow, with no client data plane in the way, until stdin
# closes. v6udpv4: on the negotiated UDP flow; v6v4: a raw protocol-41 socket. Size 0: send
# nothing, only hold the tunnel (the encapsulating direction is measured). Prints the
# client's tunnel address when ready.
_RAW_SENDER = """
import asyncio, os, socket, struct, sys
from tunnelbroker.client.tsp import negotiate
from tunnelbroker.tunnelserver.packet import build_ipv6, internet_checksum
kind, broker, target, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def get():
    n = await negotiate(broker, transport="udp" if kind == "v6udpv4" else "tcp",
                        tunnel_type=kind, username=sys.argv[5],
                        password=os.environ["TUNNELBROKER_PASSWORD"], keepalive=None,
                        timeout=20)
    ends = (n.flow.local, n.flow.remote) if kind == "v6udpv4" else None
    n.close()  # the broker keeps the tunnel
    await asyncio.sleep(0)
    return n, ends
n, ends = asyncio.run(get())
src = socket.inet_pton(socket.AF_INET6, n.client_ipv6)
dst = socket.inet_pton(socket.AF_INET6, target)
pkts = []
for i in range(1024):
    body = i.to_bytes(8, "big") + b"x" * (size - 8)
    udp = struct.pack("!HHHH", 4000 + i, 9000, 8 + len(body), 0) + body
    pseudo = src + dst + struct.pack("!I3xB", len(udp), 17)
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    pkts.append(build_ipv6(src, dst, 17, udp, 64))
if kind == "v6udpv4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(ends[0])
    s.connect(ends[1])
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 41)
    s.bind((n.client_ipv4, 0))
    s.connect((n.server_ipv4, 0))
s.setblocking(False)
os.set_blocking(0, False)
print(n.client_ipv6, flush=True)
if size == 0:  # only hold the tunnel: the other direction is being measured
    pkts = []
    os.set_blocking(0, True)
while True:
    for p in pkts:
        try:
            s.send(p)
        except OSError:
            pass
    try:
        if os.read(0, 1) == b"":
            break
    except BlockingIOError:
        pass
"""
_TCP_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9001)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n, start = 0, None
while data := c.recv(1 << 20):
    if start is None:
        start = time.monotonic()
    n += len(data)
print(n * 8 / max(time.monotonic() - (start or 0), 1e-9) / 1e6, flush=True)
"""
_TCP_SOURCE = """
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], 9001), timeout=30)
data, end = os.urandom(65536), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    c.sendall(data)
c.close()
"""


def _env(**extra: str) -> dict[str, str]:
    """The environment for our clients: the password, and PYTHONPATH if set (to measure
    another tree of the package than the installed one)."""
    env = {"PATH": os.environ.get("PATH", ""), "TUNNELBROKER_PASSWORD": PASSWORD, **extra}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _cpu_busy(cpu: str) -> tuple[int, int, int]:
    """(busy, softirq, total) clock ticks of one CPU so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(x) for x in line.split()[1:]]
            return sum(ticks) - ticks[3] - ticks[4], ticks[6], sum(ticks)
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def _proc_cpu_ticks(pid: int) -> int:
    """User plus system time of all of ``pid``'s threads, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class Bench:
    def __init__(
        self, lab: Lab, tmp: Path, seconds: float, warmup: float, ladder: tuple[int, ...]
    ) -> None:
        self.lab, self.tmp, self.seconds, self.warmup = lab, tmp, seconds, warmup
        self.ladder = ladder
        self.broker: subprocess.Popen[Any] | None = None
        self.config = tmp / "broker.toml"

    # ------------------------------------------------------------------ setup

    def write_config(self) -> None:
        a = self.lab.addr
        self.config.write_text(
            f'data_dir = "{self.tmp / "data"}"\n'
            f'[broker]\nserver_ipv4 = "{a.broker_v4}"\nserver_ipv6 = "{a.broker_client_v6}"\n'
            f'[tsp]\nlisten = ["{a.broker_v4}", "{a.broker_client_v6}"]\n'
            '[tunnelserver]\nbackend = "userspace"\n'
            "[limits]\ntunnels_per_user = 20000\nmax_tunnels = 100000\n"
            "tunnels_per_ipv4 = 1000000\nsessions_per_second_per_ipv4 = 100000\n"
            "session_burst_per_ipv4 = 100000\nhalf_open_per_ipv4 = 10000\n"
            "prefixes_per_user = 0\n"
            f'[sixxs]\nlisten = ["{a.broker_v4}"]\nheartbeat_interval = 10\n'
            '[web]\nlisten = ["127.0.0.1"]\n[logging]\nlevel = "WARNING"\n'
        )
        self.lab.run(
            "broker",
            EXE,
            "user",
            "add",
            USER,
            "--password-stdin",
            "--config",
            str(self.config),
            input=PASSWORD + "\n",
            timeout=60,
        )
        self.lab.run("inet6", "nft", "-f", "-", input=_NFT)

    def add_filler_tunnels(self, count: int) -> None:
        """``count`` AYIYA tunnels in the store, restored into the data plane at start."""
        if count <= 0:
            return
        script = (
            "import sys, time\n"
            "from tunnelbroker.config import load_config\n"
            "from tunnelbroker.store import Store\n"
            "from tunnelbroker.broker.persistence import Persister\n"
            "from tunnelbroker.broker.service import Broker\n"
            "from tunnelbroker.broker.model import ManagedRequest\n"
            "cfg = load_config(sys.argv[1]); st = Store(cfg.database_url); st.migrate()\n"
            "p = Persister(st); b = Broker(cfg, p)\n"
            "b.load(st.load_tunnels(), st.load_allocations(), time.time(), st.highest_ids())\n"
            "p.start(); uid = st.get_user(sys.argv[3]).id\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    b.create_tunnel(uid, ManagedRequest('ayiya'), time.time())\n"
            "assert p.flush(120); p.stop(); st.close()\n"
        )
        self.lab.run(
            "broker", sys.executable, "-c", script, str(self.config), str(count), USER, timeout=600
        )

    def start_broker(self) -> None:
        log = (self.tmp / "broker.log").open("a")
        self.broker = self.lab.popen(
            "broker",
            "taskset",
            "-c",
            SERVER_CPU,
            EXE,
            "serve",
            "--config",
            str(self.config),
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.lab.run(
                    "broker",
                    sys.executable,
                    "-c",
                    "import urllib.request; urllib.request.urlopen("
                    "'http://127.0.0.1:8080/api/v1/status', timeout=1)",
                    timeout=5,
                )
                return
            except subprocess.SubprocessError:
                if time.monotonic() > deadline or self.broker.poll() is not None:
                    raise RuntimeError(
                        "broker did not start: " + (self.tmp / "broker.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.2)

    def stop_broker(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            self.broker.wait(60)
        self.broker = None

    def live_tunnels(self) -> int:
        """How many tunnels the broker holds (its public status)."""
        out = self.lab.run(
            "broker",
            sys.executable,
            "-c",
            "import json, urllib.request; print(json.loads(urllib.request.urlopen("
            "'http://127.0.0.1:8080/api/v1/status', timeout=5).read())['tunnels'])",
            timeout=15,
        )
        return int(out.stdout)

    def broker_rss_kib(self) -> int:
        assert self.broker is not None
        for line in Path(f"/proc/{self.broker.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def client(self, host: str, *args: str) -> subprocess.Popen[Any]:
        out = self.tmp / f"client-{host}.out"
        with out.open("w") as o, (self.tmp / f"client-{host}.err").open("a") as e:
            proc = self.lab.popen(
                host,
                "taskset",
                "-c",
                LOAD_CPU,
                EXE,
                "client",
                self.lab.addr.broker_v4,
                "--up",
                "--json",
                "--user",
                USER,
                *args,
                stdout=o,
                stderr=e,
                env=_env(PATH="/usr/sbin:/usr/bin:/sbin:/bin"),
            )
        deadline = time.monotonic() + 40
        while "{" not in out.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"client in {host} did not come up")
            time.sleep(0.1)
        # Wait until the path really carries traffic.
        for _ in range(50):
            if self.lab.ping(host, self.lab.addr.inet6_v6, timeout=1):
                return proc
        raise RuntimeError(f"no IPv6 from {host} through its tunnel")

    def native_routes(self, on: bool) -> None:
        a, op = self.lab.addr, "replace" if on else "del"
        self.lab.run(
            "cpub", "ip", "-6", "route", op, a.core6_net, "via", a.broker_client_v6, check=on
        )
        self.lab.run("inet6", "ip", "-6", "route", op, a.client6_net, "via", a.broker_v6, check=on)

    # ------------------------------------------------------------------ counting

    def arrivals(self, host: str = "inet6") -> int:
        """Packets counted so far by the nftables counter in ``host``."""
        family = "ip6" if host == "inet6" else "ip"
        out = self.lab.run(host, "nft", "-j", "list", "counter", family, "tbbench", "rx")
        for item in json.loads(out.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError("no nftables counter")

    def window(self, host: str = "inet6") -> dict[str, float]:
        """Arrivals/s at ``host`` over ``self.seconds`` after a warm-up, with the broker's
        process CPU (all threads) and CPU 1's busy share (softirq included) over the same
        window, and, with ``perf``, the broker's system calls per packet."""
        time.sleep(self.warmup)
        assert self.broker is not None
        perf = None
        if PERF:
            perf = subprocess.Popen(
                [PERF, "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(self.broker.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        n0, c0, b0, t0 = (
            self.arrivals(host),
            _proc_cpu_ticks(self.broker.pid),
            _cpu_busy(SERVER_CPU),
            time.monotonic(),
        )
        time.sleep(self.seconds)
        n1, c1, b1, t1 = (
            self.arrivals(host),
            _proc_cpu_ticks(self.broker.pid),
            _cpu_busy(SERVER_CPU),
            time.monotonic(),
        )
        packets, dt = n1 - n0, t1 - t0
        broker_cpu = (c1 - c0) / TICKS
        total = max(b1[2] - b0[2], 1)
        busy, softirq = (b1[0] - b0[0]) / total, (b1[1] - b0[1]) / total
        out = {
            "pps": packets / dt,
            "broker_cpu": broker_cpu / dt,
            "broker_ns_per_packet": broker_cpu / max(packets, 1) * 1e9,
            # The broker's core: busy in all, in softirq (the kernel's side of forwarding:
            # the TUN, routing, the veth to inet6), and in other processes (other load).
            "cpu1_busy": busy,
            "cpu1_softirq": softirq,
            "cpu1_other": max(0.0, busy - softirq - broker_cpu / dt),
        }
        # What one whole core would forward at this cost: the broker's process time plus the
        # softirq time, per packet.
        used = broker_cpu / dt + softirq
        out["pps_per_core"] = out["pps"] / used if used > 0.05 else 0.0
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            err = perf.communicate(timeout=30)[1]
            try:
                calls = float(err.strip().splitlines()[-1].split(",")[0])
                # perf ran a little longer than the window: scale to it.
                out["syscalls_per_packet"] = calls / max(packets, 1) * dt / (time.monotonic() - t0)
            except (ValueError, IndexError):
                pass
        return out

    # ------------------------------------------------------------------ end to end

    def _udp_load(self, host: str, size: int, rate: int, seconds: float) -> subprocess.Popen[Any]:
        """A sender of ``size``-byte UDP payloads from ``host`` to inet6 at ``rate`` packets/s
        (0: as fast as it goes): iperf3, or the Python sender without it."""
        target = self.lab.addr.inet6_v6
        pin = ("taskset", "-c", LOAD_CPU)
        if IPERF3 is None:
            return self.lab.popen(
                host,
                *pin,
                sys.executable,
                "-c",
                _SENDER,
                target,
                str(size),
                str(seconds),
                str(rate),
                stdout=subprocess.DEVNULL,
            )
        bps = str(rate * size * 8) if rate else "0"
        return self.lab.popen(
            host,
            *pin,
            IPERF3,
            "-6",
            "-c",
            target,
            "-u",
            "-l",
            str(size),
            "-b",
            bps,
            "-t",
            str(math.ceil(seconds)),  # whole seconds: iperf3 reads -t as an integer
            "--connect-timeout",
            "5000",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _iperf3_server(self) -> subprocess.Popen[Any] | None:
        if IPERF3 is None:
            return None
        srv = self.lab.popen(
            "inet6",
            "taskset",
            "-c",
            LOAD_CPU,
            IPERF3,
            "-s",
            "-B",
            self.lab.addr.inet6_v6,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while "5201" not in self.lab.run("inet6", "ss", "-ltnH").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)
        return srv

    def udp_pps(self, host: str, size: int, rate: int) -> dict[str, float]:
        """Delivered datagrams/s from ``host`` at an offered ``rate`` (0: unpaced), with the
        broker's CPU meanwhile (see :meth:`window`)."""
        load = self._udp_load(host, size, rate, self.warmup + self.seconds + 1)
        try:
            return self.window()
        finally:
            load.wait(30)

    def udp_ladder(self, host: str, size: int) -> dict[str, float]:
        """The highest delivered rate over the pacing ladder, and the rate offered for it."""
        best, best_offered, broker_cpu, previous = 0.0, 0, 0.0, None
        for rate in self.ladder:
            w = self.udp_pps(host, size, rate)
            got = w["pps"]
            if got > best:
                best, best_offered, broker_cpu = got, rate, w["broker_cpu"]
            if got < 0.9 * rate and previous is not None and got < previous * 1.05:
                break  # saturated: more offered load only adds drops
            previous = got
        return {"pps": best, "offered_pps": best_offered, "broker_cpu": broker_cpu}

    def tcp_mbps(self, host: str) -> float:
        target = self.lab.addr.inet6_v6
        pin = ("taskset", "-c", LOAD_CPU)
        if IPERF3 is not None:
            out = self.lab.run(
                host,
                *pin,
                IPERF3,
                "-6",
                "-c",
                target,
                "-t",
                str(max(1, math.ceil(self.seconds))),
                "-J",
                "--connect-timeout",
                "5000",
                timeout=self.seconds + 30,
            )
            return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6
        rx = self.lab.popen(
            "inet6",
            *pin,
            sys.executable,
            "-c",
            _TCP_SINK,
            target,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        self.lab.run(
            host, *pin, sys.executable, "-c", _TCP_SOURCE, target, str(self.seconds), timeout=60
        )
        got, _ = rx.communicate(timeout=30)
        return float(got.strip() or 0)

    # ------------------------------------------------------------------ the server alone

    def _raw_sender(self, kind: str, size: int) -> tuple[subprocess.Popen[Any], str]:
        """The ready-made-packet sender in ``cpub`` (size 0: it only holds the tunnel), once
        its tunnel is negotiated; one retry, as a signalling datagram can be lost under load."""
        for attempt in (1, 2):
            tx = self.lab.popen(
                "cpub",
                "taskset",
                "-c",
                LOAD_CPU,
                sys.executable,
                "-c",
                _RAW_SENDER,
                kind,
                self.lab.addr.broker_v4,
                self.lab.addr.inet6_v6,
                str(size),
                USER,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            assert tx.stdout is not None and tx.stdin is not None and tx.stderr is not None
            address = tx.stdout.readline().strip()
            if ":" in address:
                return tx, address
            tx.stdin.close()
            err = tx.stderr.read().strip().splitlines()
            tx.wait(30)
            if attempt == 2:
                log = (self.tmp / "broker.log").read_text()[-1500:]
                raise RuntimeError(
                    f"the {kind} sender did not start: {err[-1:] or '?'}; broker log: {log}"
                )
            time.sleep(1.0)
        raise AssertionError("unreachable")

    def server_only(self, kind: str, size: int, encap: bool = False) -> dict[str, float]:
        """Forwarding by the tunnel server alone, with ready-made ``kind`` packets.

        Decapsulation: ``cpub`` sends them on a negotiated tunnel's flow to ``inet6``, which
        counts. Encapsulation (``encap``): ``inet6`` sends ``size``-byte UDP payloads to a
        negotiated client's address, and ``cpub`` counts (and drops) what arrives on the
        tunnel's flow, so no client data plane takes part either way."""
        tx, address = self._raw_sender(kind, 0 if encap else size)
        assert tx.stdin is not None
        load: subprocess.Popen[Any] | None = None
        try:
            if not encap:
                return self.window()
            nft = _NFT_ENCAP.format(broker=self.lab.addr.broker_v4)
            self.lab.run("cpub", "nft", "-f", "-", input=nft)
            try:
                load = self.lab.popen(
                    "inet6",
                    "taskset",
                    "-c",
                    LOAD_CPU,
                    sys.executable,
                    "-c",
                    _SENDER,
                    address,
                    str(size),
                    str(self.warmup + self.seconds + 1),
                    "0",
                    stdout=subprocess.DEVNULL,
                )
                return self.window("cpub")
            finally:
                self.lab.run("cpub", "nft", "delete", "table", "ip", "tbbench", check=False)
        finally:
            tx.stdin.close()
            tx.wait(30)
            if load is not None:
                load.wait(30)


def _code_state() -> dict[str, Any]:
    """The commit measured, whether the tree had changes, and which forwarding path ran."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True)
    package = Path(tunnelbroker.__file__).parent
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; logging.disable(logging.CRITICAL)\n"
            "try:\n from tunnelbroker.tunnelserver import fastpath\n"
            " print('C' if fastpath.load() is not None else 'python')\n"
            "except ImportError:\n print('python')\n",
        ],
        capture_output=True,
        text=True,
    )
    return {
        "package": str(package),
        "commit": head.stdout.strip() or "?",
        # Only meaningful when the package measured is this tree's (not one on PYTHONPATH).
        "src_changed": bool(dirty.stdout.strip()) if package.is_relative_to(root) else None,
        "forwarding": probe.stdout.strip() or "?",
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([r[k] for r in runs if k in r]) for k in runs[0]}


def measure_path(b: Bench, host: str, runs: int, native: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    for size, key in ((64, "udp64"), (1400, "udp1400")):
        if native:
            r = median_of([b.udp_pps(host, size, 0) for _ in range(runs)]) | {"offered_pps": 0}
        else:
            r = median_of([b.udp_ladder(host, size) for _ in range(runs)])
        out[f"{key}_pps"] = r["pps"]
        out[f"{key}_offered_pps"] = r["offered_pps"]
        # The broker's share of its core meanwhile: low means the limit is elsewhere.
        out[f"{key}_broker_cpu"] = r["broker_cpu"]
    out["udp1400_mbps"] = out["udp1400_pps"] * 1400 * 8 / 1e6
    out["tcp_mbps"] = median([b.tcp_mbps(host) for _ in range(runs)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="each measurement window")
    ap.add_argument("--warmup", type=float, default=1.0, help="before each window")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, nargs="*", default=[1, 1000, 10000])
    ap.add_argument("--quick", action="store_true", help="short windows, 1 run, 1 and 100 tunnels")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ladder = LADDER
    if args.quick:
        args.seconds, args.warmup, args.runs = 0.4, 0.3, 1
        args.scale, ladder = [1, 100], QUICK_LADDER
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("nft") is None:
        print("needs nft (Debian: apt-get install nftables) to count arrivals", file=sys.stderr)
        return 2
    if IPERF3 is None:
        print(
            "iperf3 is missing (apt-get install iperf3): the end-to-end figures use a Python "
            "sender instead, which cannot saturate the native path",
            file=sys.stderr,
        )
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                "?",
            ),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()[0],
        },
        "code": _code_state(),
        "load_generator": "iperf3" if IPERF3 else "python",
        "seconds": args.seconds,
        "runs": args.runs,
        "paths": {},
        "server_only": {},
        "scale": {},
    }
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as d, Lab(prefix="tbbench") as lab:
        b = Bench(lab, Path(d), args.seconds, args.warmup, ladder)
        b.write_config()
        b.start_broker()
        srv = b._iperf3_server()
        try:
            b.native_routes(True)
            results["paths"]["native"] = measure_path(b, "cpub", args.runs, native=True)
            b.native_routes(False)
            for name, host, extra in (
                ("v6v4", "cpub", ["--type", "v6v4"]),
                ("v6udpv4", "cnat", ["--type", "v6udpv4", "--transport", "udp"]),
            ):
                c = b.client(host, *extra)
                try:
                    results["paths"][name] = measure_path(b, host, args.runs, native=False)
                finally:
                    c.terminate()
                    c.wait(20)
            # AYIYA over TIC: a tunnel made through the API, run from behind the NAT.
            made = lab.run(
                "broker",
                sys.executable,
                "-c",
                "import base64, json, urllib.request\n"
                "r = urllib.request.Request('http://127.0.0.1:8080/api/v1/tunnels', "
                "method='POST', data=b'{\"type\": \"ayiya\"}', headers={"
                "'content-type': 'application/json', 'authorization': 'Basic ' + "
                f"base64.b64encode(b'{USER}:{PASSWORD}').decode()}})\n"
                "print(json.loads(urllib.request.urlopen(r).read())['id'])\n",
            ).stdout
            c = b.client("cnat", "--tic", "--tunnel", f"T{made.strip()}")
            try:
                results["paths"]["ayiya"] = measure_path(b, "cnat", args.runs, native=False)
            finally:
                c.terminate()
                c.wait(20)
            # 1,232 bytes: the largest payload a 1,280-byte tunnel MTU carries whole.
            for kind in ("v6v4", "v6udpv4"):
                for encap, size in ((False, 64), (False, 1400), (True, 64), (True, 1232)):
                    key = f"{kind}_{'encap' if encap else 'decap'}_udp{size}"
                    results["server_only"][key] = median_of(
                        [b.server_only(kind, size, encap) for _ in range(args.runs)]
                    )
            under: list[dict[str, float]] = []
            for _ in range(args.runs):
                load = lab.popen(
                    "cpub",
                    "taskset",
                    "-c",
                    LOAD_CPU,
                    sys.executable,
                    "-c",
                    _SIGNUPS,
                    lab.addr.broker_v4,
                    str(args.warmup + args.seconds + 5),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                r = b.server_only("v6udpv4", 64)
                out, _ = load.communicate(timeout=120)
                r["signups_per_second"] = float(out.strip() or 0)
                under.append(r)
            results["under_signups"] = median_of(under)
            results["rss_kib_base"] = b.broker_rss_kib()
        finally:
            if srv is not None:
                srv.terminate()
                srv.wait(10)
            b.stop_broker()
        # Scale: the server-alone v6udpv4 small-packet rate with more tunnels in the table.
        have = 1  # the AYIYA tunnel made above; the TSP tunnels are the account's
        for n in sorted(args.scale):
            b.add_filler_tunnels(n - have)
            have = max(have, n)
            b.start_broker()
            try:
                time.sleep(1.0)  # let start-up work settle before reading RSS
                rss, live = b.broker_rss_kib(), b.live_tunnels()
                r = median_of([b.server_only("v6udpv4", 64) for _ in range(args.runs)])
                results["scale"][str(n)] = {
                    "udp64_pps": r["pps"],
                    "broker_cpu": r["broker_cpu"],
                    "broker_ns_per_packet": r["broker_ns_per_packet"],
                    "pps_per_core": r["pps_per_core"],
                    "cpu1_other": r["cpu1_other"],
                    "rss_kib": rss,
                    # The fillers, the AYIYA tunnel and the bench's own TSP tunnels.
                    "tunnels_live": live,
                }
            finally:
                b.stop_broker()
    report(results, args.scale)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: dict[str, Any], scale_sizes: list[int]) -> None:
    scale = results["scale"]
    lo, hi = str(min(scale_sizes)), str(max(scale_sizes))
    results["memory_per_tunnel_bytes"] = (
        (scale[hi]["rss_kib"] - scale[lo]["rss_kib"])
        * 1024
        / max(scale[hi]["tunnels_live"] - scale[lo]["tunnels_live"], 1)
    )
    cost = [r["broker_ns_per_packet"] for r in scale.values()]
    results["scale_cost_spread"] = max(cost) / max(min(cost), 1) - 1
    native = results["paths"]["native"]
    for r in results["paths"].values():
        for k in ("udp64_pps", "udp1400_pps", "tcp_mbps"):
            r[f"ratio_{k}"] = r[k] / native[k] if native[k] else 0.0
    print(f"load generator: {results['load_generator']}; {results['runs']} runs, median")
    print(
        f"{'path':8} {'udp64 pps':>10} {'ratio':>6} {'udp1400 pps':>12} {'ratio':>6} "
        f"{'Mbit/s':>7} {'tcp Mbit/s':>11} {'ratio':>6} {'broker CPU (udp64)':>19}"
    )
    for name, r in results["paths"].items():
        print(
            f"{name:8} {r['udp64_pps']:10.0f} {r['ratio_udp64_pps']:6.3f} "
            f"{r['udp1400_pps']:12.0f} {r['ratio_udp1400_pps']:6.3f} {r['udp1400_mbps']:7.0f} "
            f"{r['tcp_mbps']:11.0f} {r['ratio_tcp_mbps']:6.3f} {r['udp64_broker_cpu']:19.0%}"
        )
    code = results["code"]
    print(
        f"tunnel server alone (ready-made tunnel packets, no client data plane; forwarding "
        f"in {code['forwarding']}, commit {code['commit']}"
        + (" with changes" if code["src_changed"] else "")
        + "):"
    )
    for name, r in [*results["server_only"].items(), ("under sign-ups", results["under_signups"])]:
        sc = r.get("syscalls_per_packet")
        print(
            f"  {name:22} {r['pps']:7.0f} pps ({r['pps_per_core']:7.0f}/core): broker "
            f"{r['broker_cpu']:4.0%} ({r['broker_ns_per_packet']:4.0f} ns/packet), softirq "
            f"{r['cpu1_softirq']:4.0%}, other {r['cpu1_other']:4.0%}"
            + (f", {sc:.2f} syscalls/packet" if sc is not None else "")
        )
    print(f"  sign-ups/s meanwhile: {results['under_signups']['signups_per_second']:.0f}")
    for n, r in scale.items():
        print(
            f"tunnels {n:>6}: server-alone v6udpv4 64-byte {r['udp64_pps']:8.0f} pps, "
            f"{r['broker_ns_per_packet']:5.0f} ns/packet, broker RSS {r['rss_kib'] / 1024:.1f} MiB "
            f"with {r['tunnels_live']} live tunnels"
        )
    print(f"per-packet cost, highest over lowest: +{results['scale_cost_spread']:.1%}")
    print(f"memory per configured tunnel: {results['memory_per_tunnel_bytes']:.0f} bytes")


if __name__ == "__main__":
    sys.exit(main())
