"""Throughput through real tunnels in the namespace lab, next to the native path (issue 3, 4).

Run as root from the repository root::

    .venv/bin/python bench/bench_throughput.py [--seconds 5] [--runs 3] [--json FILE]
    .venv/bin/python bench/bench_throughput.py --quick          # a smoke run, under a minute

It builds the lab (``docs/lab.md``), starts ``tunnelbroker serve`` in ``broker`` (userspace
data plane) and real ``tunnelbroker client --up`` processes, and measures, in one run:

* **UDP packets/s**, 64-byte and 1,400-byte IPv6 UDP payloads, from a client namespace to the
  IPv6 host ``inet6``: natively (plain IPv6 routed by the broker over the same two veth
  links), through a v6v4 tunnel (6in4), a v6udpv4 tunnel (IPv6 in UDP), and an AYIYA tunnel
  (SixXS, over TIC). A Python sender sends as fast as it can for ``--seconds``; a receiver in
  ``inet6`` counts what arrives; the figure is arrivals per second (the tunnels drop what they
  cannot forward, so arrivals are the forwarding rate).
* **TCP Mbit/s** through each path: one connection, 64 KiB writes, for ``--seconds``.
* **The tunnel server alone**: v6udpv4 packets made ready in advance and sent straight on a
  negotiated tunnel's UDP flow (no client data plane in the way), counted at ``inet6``: the
  server's decapsulation path on its own core; and the other way, ``inet6`` sending to a
  negotiated client's address with the datagrams counted on its UDP flow (encapsulation).
* **Per-packet cost with 1, 1,000 and 10,000 tunnels configured**: v6udpv4 small-packet rate
  with 0, 999 and 9,999 AYIYA tunnels (each with a /128 and a routed /64 in the forwarding
  table) restored from the store when the broker starts.
* **Memory per configured tunnel**: the broker process's RSS with 10,000 tunnels minus with
  none, divided.
* **Forwarding under control-plane load**: the v6udpv4 small-packet rate while another client
  signs up anonymous TSP tunnels over TCP as fast as 32 concurrent sessions go (each a real
  sign-up: SASL, offer, accept, a tunnel written to the store).

Pinning: the broker (its forwarding thread included) runs on CPU 1 (``taskset``); senders,
receivers and the client processes on CPU 0. So "per core" means the broker's core, and the
client side shares the other core with the load generators. Each figure is the median of
``--runs`` runs. The exit status is 0 whatever the figures: the bars are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunnelbroker.lab.topology import Lab

EXE = str(Path(sys.executable).with_name("tunnelbroker"))
USER, PASSWORD = "bench", "bench password 1"
SERVER_CPU, LOAD_CPU = "1", "0"

# Counts IPv6 UDP datagrams to port 9000 for argv[2] seconds after the first one.
_RECEIVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 9000))
print("ready", flush=True)
s.settimeout(10)
s.recv(2048)
n, end = 1, time.monotonic() + float(sys.argv[2])
s.settimeout(0.2)
while time.monotonic() < end:
    try:
        s.recv(2048); n += 1
    except TimeoutError:
        pass
print(n / float(sys.argv[2]), flush=True)
"""
# Each datagram differs (a counter first), as real traffic does: AYIYA has no sequence
# number, so an exact duplicate within the clock window is a replay and is dropped.
_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
pad, dest = b"x" * (int(sys.argv[2]) - 8), (sys.argv[1], 9000)
end = time.monotonic() + float(sys.argv[3])
sent = 0
while time.monotonic() < end:
    for _ in range(200):
        try:
            s.sendto(sent.to_bytes(8, "big") + pad, dest); sent += 1
        except OSError:
            pass
print(sent / float(sys.argv[3]))
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
# The tunnel server alone: negotiate a v6udpv4 tunnel with the library, then send ready-made
# IPv6 packets (1,024 different ones, 64-byte UDP payloads) straight on the tunnel's UDP flow,
# without a client data plane in the way, for argv[3] seconds. Prints packets offered per second.
_RAW_V6UDPV4 = """
import asyncio, socket, sys, time
from scapy.layers.inet6 import IPv6, UDP
from tunnelbroker.client.tsp import negotiate
async def get():
    n = await negotiate(sys.argv[1], transport="udp", tunnel_type="v6udpv4", timeout=20)
    ends = (n.flow.local, n.flow.remote)
    n.close()  # on its own loop; the broker keeps the tunnel
    await asyncio.sleep(0)
    return n, ends
n, (local, remote) = asyncio.run(get())
pkts = [bytes(IPv6(src=n.client_ipv6, dst=sys.argv[2]) / UDP(sport=4000 + i, dport=9000)
        / (b"x" * 64)) for i in range(1024)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(local)
s.connect(remote)
print("ready", flush=True)
sys.stdin.readline()
end, sent = time.monotonic() + float(sys.argv[3]), 0
while time.monotonic() < end:
    for p in pkts:
        try:
            s.send(p); sent += 1
        except OSError:
            pass
print(sent / float(sys.argv[3]))
"""
# The other direction: negotiate, then count what arrives on the tunnel's UDP flow for argv[2]
# seconds after the first datagram; prints the client's tunnel address, then datagrams/s.
_RAW_COUNT = """
import asyncio, socket, sys, time
from tunnelbroker.client.tsp import negotiate
async def get():
    n = await negotiate(sys.argv[1], transport="udp", tunnel_type="v6udpv4", timeout=20)
    ends = (n.flow.local, n.flow.remote)
    n.close()
    await asyncio.sleep(0)
    return n, ends
n, (local, remote) = asyncio.run(get())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(local)
s.connect(remote)
s.send(b"\\x60" + b"\\0" * 39)  # anything from us keeps the mapping fresh
print(n.client_ipv6, flush=True)
s.settimeout(10)
s.recv(2048)
count, end = 1, time.monotonic() + float(sys.argv[2])
s.settimeout(0.2)
while time.monotonic() < end:
    try:
        s.recv(2048); count += 1
    except TimeoutError:
        pass
print(count / float(sys.argv[2]), flush=True)
"""
# Runs in inet6: numbered 64-byte UDP datagrams to argv[1] for argv[2] seconds.
_SENDER_TO = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
pad, dest = b"x" * 56, (sys.argv[1], 9000)
end, sent = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    for _ in range(200):
        try:
            s.sendto(sent.to_bytes(8, "big") + pad, dest); sent += 1
        except OSError:
            pass
print(sent / float(sys.argv[2]))
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


class Bench:
    def __init__(self, lab: Lab, tmp: Path, seconds: float) -> None:
        self.lab, self.tmp, self.seconds = lab, tmp, seconds
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
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TUNNELBROKER_PASSWORD": PASSWORD},
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

    # ------------------------------------------------------------------ measurements

    def udp_pps(self, host: str, size: int) -> tuple[float, float]:
        target = self.lab.addr.inet6_v6
        rx = self.lab.popen(
            "inet6",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _RECEIVER,
            target,
            str(self.seconds),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        sent = self.lab.run(
            host,
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _SENDER,
            target,
            str(size),
            str(self.seconds + 0.5),
            timeout=60,
        )
        got, _ = rx.communicate(timeout=30)
        return float(got.strip() or 0), float(sent.stdout.strip())

    def udp_pps_under_signups(self, host: str) -> tuple[float, float]:
        """v6udpv4 small-packet rate while ``cpub`` signs up anonymous tunnels over TCP."""
        load = self.lab.popen(
            "cpub",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _SIGNUPS,
            self.lab.addr.broker_v4,
            str(self.seconds + 3),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # let the storm build up
        pps, _ = self.udp_pps(host, 64)
        out, _ = load.communicate(timeout=60)
        return pps, float(out.strip() or 0)

    def server_only_pps(self) -> tuple[float, float]:
        """Decapsulation by the tunnel server alone: v6udpv4 packets sent ready-made from
        ``cpub`` on the tunnel's own flow, counted at the IPv6 host."""
        target = self.lab.addr.inet6_v6
        tx = self.lab.popen(
            "cpub",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _RAW_V6UDPV4,
            self.lab.addr.broker_v4,
            target,
            str(self.seconds + 0.5),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert tx.stdout is not None and tx.stdin is not None
        assert tx.stdout.readline().strip() == "ready"
        rx = self.lab.popen(
            "inet6",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _RECEIVER,
            target,
            str(self.seconds),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        tx.stdin.write("go\n")
        tx.stdin.flush()
        got, _ = rx.communicate(timeout=30)
        offered, _ = tx.communicate(timeout=30)
        return float(got.strip() or 0), float(offered.strip() or 0)

    def server_only_encap_pps(self) -> tuple[float, float]:
        """Encapsulation by the tunnel server alone: ``inet6`` sends to a v6udpv4 client's
        address; datagrams are counted on the tunnel's UDP flow (no client data plane)."""
        rx = self.lab.popen(
            "cpub",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _RAW_COUNT,
            self.lab.addr.broker_v4,
            str(self.seconds),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None
        address = rx.stdout.readline().strip()
        sent = self.lab.run(
            "inet6",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _SENDER_TO,
            address,
            str(self.seconds + 0.5),
            timeout=60,
        )
        got, _ = rx.communicate(timeout=30)
        return float(got.strip() or 0), float(sent.stdout.strip() or 0)

    def tcp_mbps(self, host: str) -> float:
        target = self.lab.addr.inet6_v6
        rx = self.lab.popen(
            "inet6",
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _TCP_SINK,
            target,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        self.lab.run(
            host,
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-c",
            _TCP_SOURCE,
            target,
            str(self.seconds),
            timeout=60,
        )
        got, _ = rx.communicate(timeout=30)
        return float(got.strip() or 0)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def measure_path(b: Bench, host: str, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for size, key in ((64, "udp64"), (1400, "udp1400")):
        rates = [b.udp_pps(host, size) for _ in range(runs)]
        out[f"{key}_pps"] = median([r for r, _ in rates])
        out[f"{key}_offered_pps"] = median([s for _, s in rates])
    out["udp1400_mbps"] = out["udp1400_pps"] * 1400 * 8 / 1e6
    out["tcp_mbps"] = median([b.tcp_mbps(host) for _ in range(runs)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, nargs="*", default=[1, 1000, 10000])
    ap.add_argument("--quick", action="store_true", help="1 s, 1 run, 1 and 100 tunnels")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.runs, args.scale = 1.0, 1, [1, 100]
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
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
        },
        "seconds": args.seconds,
        "runs": args.runs,
        "paths": {},
        "scale": {},
    }
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as d, Lab(prefix="tbbench") as lab:
        b = Bench(lab, Path(d), args.seconds)
        b.write_config()
        b.start_broker()
        try:
            b.native_routes(True)
            results["paths"]["native"] = measure_path(b, "cpub", args.runs)
            b.native_routes(False)
            for name, host, extra in (
                ("v6v4", "cpub", ["--type", "v6v4"]),
                ("v6udpv4", "cnat", ["--type", "v6udpv4", "--transport", "udp"]),
            ):
                c = b.client(host, *extra)
                try:
                    results["paths"][name] = measure_path(b, host, args.runs)
                    if name == "v6udpv4":
                        under = [b.udp_pps_under_signups(host) for _ in range(args.runs)]
                        results["under_signups"] = {
                            "udp64_pps": median([p for p, _ in under]),
                            "signups_per_second": median([s for _, s in under]),
                        }
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
                results["paths"]["ayiya"] = measure_path(b, "cnat", args.runs)
            finally:
                c.terminate()
                c.wait(20)
            server = [b.server_only_pps() for _ in range(args.runs)]
            encap = [b.server_only_encap_pps() for _ in range(args.runs)]
            results["server_only"] = {
                "udp64_pps": median([p for p, _ in server]),
                "offered_pps": median([o for _, o in server]),
                "encap_udp64_pps": median([p for p, _ in encap]),
                "encap_offered_pps": median([o for _, o in encap]),
            }
            results["rss_kib_base"] = b.broker_rss_kib()
        finally:
            b.stop_broker()
        # Scale: the same v6udpv4 small-packet rate with more tunnels in the table.
        have = 1  # the AYIYA tunnel made above; the TSP tunnels are the account's
        for n in sorted(args.scale):
            b.add_filler_tunnels(n - have)
            have = max(have, n)
            b.start_broker()
            try:
                rss = b.broker_rss_kib()
                c = b.client("cnat", "--type", "v6udpv4", "--transport", "udp")
                try:
                    pps = median([b.udp_pps("cnat", 64)[0] for _ in range(args.runs)])
                finally:
                    c.terminate()
                    c.wait(20)
                results["scale"][str(n)] = {"udp64_pps": pps, "rss_kib": rss}
            finally:
                b.stop_broker()
    scale = results["scale"]
    lo, hi = str(min(args.scale)), str(max(args.scale))
    results["memory_per_tunnel_bytes"] = (
        (scale[hi]["rss_kib"] - scale[lo]["rss_kib"]) * 1024 / max(int(hi) - int(lo), 1)
    )
    native = results["paths"]["native"]
    for r in results["paths"].values():
        r["ratio_udp64"] = r["udp64_pps"] / native["udp64_pps"] if native["udp64_pps"] else 0
        r["ratio_tcp"] = r["tcp_mbps"] / native["tcp_mbps"] if native["tcp_mbps"] else 0
    print(
        f"{'path':10} {'udp64 pps':>11} {'udp1400 pps':>12} {'udp1400 Mbit/s':>15} "
        f"{'tcp Mbit/s':>11} {'ratio udp64':>12} {'ratio tcp':>10}"
    )
    for name, r in results["paths"].items():
        print(
            f"{name:10} {r['udp64_pps']:11.0f} {r['udp1400_pps']:12.0f} "
            f"{r['udp1400_mbps']:15.0f} {r['tcp_mbps']:11.0f} {r['ratio_udp64']:12.3f} "
            f"{r['ratio_tcp']:10.3f}"
        )
    so = results["server_only"]
    print(
        f"tunnel server alone (v6udpv4 decapsulation): {so['udp64_pps']:.0f} pps "
        f"of {so['offered_pps']:.0f} offered"
    )
    print(
        f"tunnel server alone (v6udpv4 encapsulation): {so['encap_udp64_pps']:.0f} pps "
        f"of {so['encap_offered_pps']:.0f} offered"
    )
    u = results.get("under_signups")
    if u:
        print(
            f"v6udpv4 64-byte under {u['signups_per_second']:.0f} TSP sign-ups/s: "
            f"{u['udp64_pps']:.0f} pps"
        )
    for n, r in scale.items():
        print(
            f"tunnels {n:>6}: v6udpv4 64-byte {r['udp64_pps']:8.0f} pps, broker RSS "
            f"{r['rss_kib'] / 1024:.1f} MiB"
        )
    print(f"memory per configured tunnel: {results['memory_per_tunnel_bytes']:.0f} bytes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
