"""End to end in the lab: ``tunnelbroker client --up`` carries the host's own IPv6 traffic.

The broker runs in its namespace with the userspace data plane; the client runs in ``cpub`` or
``cnat`` with its own TUN, and real kernel traffic (ping, a TCP transfer) crosses the tunnel
to the IPv6-only host ``inet6``.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunnelbroker.lab.topology import Lab
from tunnelbroker.lab.traffic import SINK, SOURCE
from tunnelbroker.tunnelserver import fastpath

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

TUNNELBROKER = Path(sys.executable).with_name("tunnelbroker")
USER, PASSWORD = "carol", "correct horse battery"
#: A second account (same password), for a test that needs two clients with stable addresses.
USER2 = "dave"
#: Requested keepalive interval (s); the test broker allows it, so a dead path shows in ~6 s.
KEEPALIVE = 2


@dataclass
class BrokerInLab:
    lab: Lab
    config: Path
    tmp: Path
    proc: subprocess.Popen[Any] | None = None
    starts: int = 0
    #: Seconds ``serve`` may take to say it is ready (a VM without KVM needs far longer).
    start_timeout: float = 20.0

    @property
    def log_path(self) -> Path:
        return self.tmp / "broker.log"

    def start(self) -> None:
        """``tunnelbroker serve`` in the broker namespace; waits until it says it is ready."""
        self.starts += 1
        with self.log_path.open("a") as log:
            self.proc = self.lab.popen(
                "broker",
                str(TUNNELBROKER),
                "serve",
                "--config",
                str(self.config),
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + self.start_timeout
        while self.log_path.read_text().count("ready in") < self.starts:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail("broker did not start:\n" + self.log_path.read_text())
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(timeout=20) == 0, self.log_path.read_text()[-3000:]

    def restart(self) -> None:
        self.stop()
        self.start()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the broker's REST API as ``USER`` (from inside the broker's namespace)."""
        script = (
            "import base64, json, sys, urllib.request\n"
            "req = urllib.request.Request('http://127.0.0.1:8080' + sys.argv[1], "
            "method=sys.argv[2], data=sys.argv[3].encode() or None, "
            "headers={'content-type': 'application/json', 'authorization': 'Basic ' + "
            "base64.b64encode(sys.argv[4].encode()).decode()})\n"
            "print(urllib.request.urlopen(req, timeout=10).read().decode())\n"
        )
        out = self.lab.run(
            "broker",
            sys.executable,
            "-c",
            script,
            path,
            method,
            json.dumps(body) if body is not None else "",
            f"{USER}:{PASSWORD}",
        ).stdout
        return json.loads(out)

    def metric(self, name: str, **labels: str) -> float:
        """One value from the broker's /metrics (on its loopback)."""
        out = self.lab.run(
            "broker",
            sys.executable,
            "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8080/metrics', timeout=5).read().decode())",
        ).stdout
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in out.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


def broker_config(lab: Lab, tmp: Path, data_dir: Path) -> Path:
    """A broker for the lab: userspace data plane, anonymous tunnels, 1 s keepalives allowed."""
    config = tmp / "broker.toml"
    config.write_text(
        f"""
data_dir = "{data_dir}"
[broker]
server_ipv4 = "{lab.addr.broker_v4}"
server_ipv6 = "{lab.addr.broker_client_v6}"
[tsp]
listen = ["{lab.addr.broker_v4}", "{lab.addr.broker_client_v6}"]
[tunnelserver]
backend = "userspace"
[keepalive]
min_interval = 1
[web]
listen = ["127.0.0.1"]
[sixxs]
listen = ["{lab.addr.broker_v4}"]
heartbeat_interval = 10
[logging]
level = "DEBUG"
"""
    )
    return config


@pytest.fixture
def broker(lab: Lab, tmp_path: Path) -> Iterator[BrokerInLab]:
    """``tunnelbroker serve`` in the broker namespace (userspace data plane, short keepalives),
    with the account ``USER``."""
    config = broker_config(lab, tmp_path, tmp_path / "data")
    for user in (USER, USER2):
        lab.run(
            "broker",
            str(TUNNELBROKER),
            "user",
            "add",
            user,
            "--password-stdin",
            "--config",
            str(config),
            input=PASSWORD + "\n",
            timeout=30,
        )
    b = BrokerInLab(lab, config, tmp_path)
    b.start()
    try:
        yield b
    finally:
        print("---- broker log (tail)\n" + b.log_path.read_text()[-4000:])


@dataclass
class Client:
    proc: subprocess.Popen[Any]
    out: Path
    err: Path

    def connections(self) -> list[dict[str, Any]]:
        """The JSON lines printed so far, one per (re)connection."""
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_connections(self, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.connections()) < count:
            if self.proc.poll() is not None:
                pytest.fail(f"client exited {self.proc.returncode}:\n{self.err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no connection #{count} in {timeout} s:\n{self.err.read_text()}")
            time.sleep(0.1)
        return found


def start_client(
    b: BrokerInLab,
    host: str,
    *args: str,
    account: bool | str = False,
    server: str | None = None,
) -> Client:
    """``tunnelbroker client --up`` in ``host``; ``account`` is True for ``USER`` or a name."""
    out, err = b.tmp / f"client-{host}.out", b.tmp / f"client-{host}.err"
    extra = ["--user", USER if account is True else account] if account else []
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = b.lab.popen(
            host,
            str(TUNNELBROKER),
            "client",
            server or b.lab.addr.broker_v4,
            "--up",
            "--json",
            "-v",
            "--keepalive",
            str(KEEPALIVE),
            "--timeout",
            "15",
            *extra,
            *args,
            stdout=stdout,
            stderr=stderr,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TUNNELBROKER_PASSWORD": PASSWORD},
        )
    return Client(proc, out, err)


def ping_until(lab: Lab, host: str, dest: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.ping(host, dest, timeout=1):
            return True
    return False


def stop_client(c: Client, lab: Lab, host: str) -> None:
    """SIGTERM must end the client cleanly and take its interface with it."""
    c.proc.terminate()
    assert c.proc.wait(timeout=10) == 0, c.err.read_text()
    assert "tbc0" not in lab.run(host, "ip", "-o", "link").stdout
    assert "::/0" not in lab.run(host, "ip", "-6", "route").stdout
    assert "default" not in lab.run(host, "ip", "-6", "route").stdout


def tcp_transfer(
    lab: Lab, host: str, port: int = 5001, target: str | None = None, sink: str = "inet6"
) -> None:
    """1 MiB from ``host`` to a sink at ``target`` (default: the IPv6 host), checksum compared."""
    target = target or lab.addr.inet6_v6
    proc = lab.popen(
        sink,
        sys.executable,
        "-c",
        SINK,
        target,
        str(port),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    sent = lab.run(host, sys.executable, "-c", SOURCE, target, str(port), timeout=60)
    received, _ = proc.communicate(timeout=30)
    assert received.strip() == sent.stdout.split()[0]


#: The client's packets move in C where the fast path is built (it is wherever it can be:
#: tests/tunnelserver/test_fastpath.py), and in Python with --no-fast-path.
FAST_PATHS = [
    pytest.param(
        True,
        id="c-fast-path",
        marks=pytest.mark.skipif(fastpath.load() is None, reason="the C fast path is not built"),
    ),
    pytest.param(False, id="python"),
]


def assert_forwarded_by(c: Client, fast: bool) -> None:
    assert ("forwarding in C" in c.err.read_text()) == fast, c.err.read_text()
    # The keepalive is answered either way (through the TUN on the fast path).
    assert "no reply" not in c.err.read_text()


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_v6udpv4_from_a_public_host(broker: BrokerInLab, fast: bool) -> None:
    lab = broker.lab
    args = () if fast else ("--no-fast-path",)
    c = start_client(broker, "cpub", "--type", "v6udpv4", "--transport", "udp", *args)
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "v6udpv4" and n["interface"] == "tbc0"
    assert n["keepalive_interval"] == KEEPALIVE
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    tcp_transfer(lab, "cpub")
    # Two keepalive rounds, to see them answered.
    time.sleep(2 * KEEPALIVE + 1)
    assert_forwarded_by(c, fast)
    stop_client(c, lab, "cpub")


def test_v6anyv4_behind_the_nat_becomes_v6udpv4(broker: BrokerInLab) -> None:
    lab = broker.lab
    c = start_client(broker, "cnat", "--type", "v6anyv4", "--transport", "udp")
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "v6udpv4"
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 10), c.err.read_text()
    tcp_transfer(lab, "cnat")
    stop_client(c, lab, "cnat")


def test_nat_mapping_change_reconnects_with_the_same_address(broker: BrokerInLab) -> None:
    lab = broker.lab
    c = start_client(broker, "cnat", "--transport", "udp", account=True)
    (first,) = c.wait_connections(1, 30)
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 10), c.err.read_text()
    lab.change_nat_mapping()
    # Three keepalives of ~2 s go unanswered, then the client signals again (1 s backoff).
    second = c.wait_connections(2, 40)[1]
    assert "keepalive lost" in c.err.read_text()
    assert second["client_ipv6"] == first["client_ipv6"]
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 10), c.err.read_text()
    stop_client(c, lab, "cnat")


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_v6v4_over_raw_protocol_41(broker: BrokerInLab, fast: bool) -> None:
    lab = broker.lab
    c = start_client(broker, "cpub", "--type", "v6v4", *(() if fast else ("--no-fast-path",)))
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "v6v4"
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    tcp_transfer(lab, "cpub")
    # The keepalive is answered over 6in4 too: no misses while we pinged.
    assert_forwarded_by(c, fast)
    stop_client(c, lab, "cpub")


def check_router_mode(
    b: BrokerInLab, *args: str, connect_timeout: float = 30, ping_timeout: float = 10
) -> None:
    """``client --router --lan-interface lan0 *args`` on cpub: the delegated /56's first
    address goes on the LAN, the IPv6 internet reaches it, and it goes again on SIGTERM."""
    lab = b.lab
    # No dummy module here: a veth pair inside cpub stands for the LAN.
    lab.run("cpub", "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    lab.run("cpub", "ip", "link", "set", "lan0", "up")
    lab.run("cpub", "ip", "link", "set", "lan1", "up")
    c = start_client(b, "cpub", *args, "--router", "--lan-interface", "lan0", account=True)
    (n,) = c.wait_connections(1, connect_timeout)
    assert n["prefix"] and n["prefix_length"] == 56
    lan_address = str(ipaddress.IPv6Address(n["prefix"]) + 1)
    assert f"{lan_address}/64" in lab.run("cpub", "ip", "-6", "addr", "show", "lan0").stdout
    # The IPv6 internet reaches the LAN's address through the broker and the tunnel.
    assert ping_until(lab, "inet6", lan_address, ping_timeout), c.err.read_text()
    stop_client(c, lab, "cpub")
    assert lan_address not in lab.run("cpub", "ip", "-6", "addr", "show", "lan0").stdout
    assert n["prefix"] not in lab.run("cpub", "ip", "-6", "route").stdout


def test_router_mode_puts_the_prefix_on_the_lan(broker: BrokerInLab) -> None:
    check_router_mode(broker, "--type", "v6udpv4")


def test_v6anyv4_from_a_public_host_becomes_v6v4(broker: BrokerInLab) -> None:
    lab = broker.lab
    c = start_client(broker, "cpub", "--type", "v6anyv4", "--transport", "udp")
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "v6v4"  # no NAT in the path: plain 6in4
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    tcp_transfer(lab, "cpub")
    stop_client(c, lab, "cpub")


def test_v4v6_carries_ipv4_through_ipv6(broker: BrokerInLab) -> None:
    lab = broker.lab
    # An IPv4 address only the broker has, reachable from the client only through the tunnel.
    target = "192.0.2.100"
    lab.run("broker", "ip", "addr", "add", f"{target}/32", "dev", "lo")
    c = start_client(
        broker,
        "cpub",
        "--type",
        "v4v6",
        "--transport",
        "tcp",
        server=f"[{lab.addr.broker_client_v6}]",
    )
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "v4v6" and ipaddress.IPv4Address(n["client_ipv4"])
    routes = lab.run("cpub", "ip", "-4", "route").stdout
    assert "0.0.0.0/1 dev tbc0" in routes and "128.0.0.0/1 dev tbc0" in routes
    assert ping_until(lab, "cpub", target, 10), c.err.read_text()
    tcp_transfer(lab, "cpub", target=target, sink="broker")
    # The keepalive (ICMPv4 to the server's end of the /30) is answered.
    time.sleep(3 * KEEPALIVE)
    assert "no reply" not in c.err.read_text()
    stop_client(c, lab, "cpub")
    assert "tbc0" not in lab.run("cpub", "ip", "-4", "route").stdout


def test_a_new_ipv4_address_reconnects_with_the_same_ipv6(broker: BrokerInLab) -> None:
    lab = broker.lab
    c = start_client(broker, "cpub", "--type", "v6udpv4", "--transport", "udp", account=True)
    (first,) = c.wait_connections(1, 30)
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    lab.change_client_ipv4("cpub", "198.51.100.77")
    second = c.wait_connections(2, 40)[1]
    assert "source address changed" in c.err.read_text()
    assert second["client_ipv6"] == first["client_ipv6"]
    assert second["local_address"] == "198.51.100.77"
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    tcp_transfer(lab, "cpub")
    stop_client(c, lab, "cpub")


# Runs in a client namespace: send one UDP packet inside IPv6 inside IPv4 (protocol 41) to
# the broker, claiming IPv6 source argv[2]; the kernel adds our own IPv4 header.
_SPOOF = """
import socket, sys
from scapy.layers.inet6 import IPv6, UDP
inner = bytes(IPv6(src=sys.argv[2], dst=sys.argv[3]) / UDP(sport=4000, dport=9999) / b"spoof")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 41)
s.sendto(inner, (sys.argv[1], 0))
"""

# Runs in inet6: count the UDP datagrams that reach port 9999 within argv[2] seconds.
_COUNT = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(0.2)
print("ready", flush=True)
n, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.recv(100)
        n += 1
    except TimeoutError:
        pass
print(n, flush=True)
"""


def test_spoofed_outer_and_inner_sources_are_dropped(broker: BrokerInLab) -> None:
    lab = broker.lab
    c = start_client(broker, "cpub", "--type", "v6v4")
    (n,) = c.wait_connections(1, 30)
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), c.err.read_text()
    counter = lab.popen(
        "inet6",
        sys.executable,
        "-c",
        _COUNT,
        lab.addr.inet6_v6,
        "6",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
    unknown = broker.metric("tunnelbroker_dataplane_drops_total", reason="unknown_endpoint")
    spoofed = broker.metric("tunnelbroker_dataplane_drops_total", reason="spoofed_source")
    broker_v4, inet6 = lab.addr.broker_v4, lab.addr.inet6_v6
    # The right inner source from the wrong outer source (the NAT's public address).
    lab.run("nat", sys.executable, "-c", _SPOOF, broker_v4, n["client_ipv6"], inet6)
    # The right outer source with an inner source that is not the tunnel's.
    lab.run("cpub", sys.executable, "-c", _SPOOF, broker_v4, "2001:db8:8000:ffff::99", inet6)
    # A genuine one, to prove the path and the counter work.
    lab.run("cpub", sys.executable, "-c", _SPOOF, broker_v4, n["client_ipv6"], inet6)
    received, _ = counter.communicate(timeout=30)
    assert received.strip() == "1"
    assert (
        broker.metric("tunnelbroker_dataplane_drops_total", reason="unknown_endpoint")
        == unknown + 1
    )
    assert (
        broker.metric("tunnelbroker_dataplane_drops_total", reason="spoofed_source") == spoofed + 1
    )
    stop_client(c, lab, "cpub")


def test_broker_restart_restores_the_tunnels(broker: BrokerInLab) -> None:
    lab = broker.lab
    static = start_client(broker, "cpub", "--type", "v6v4", account=True)
    udp = start_client(broker, "cnat", "--type", "v6udpv4", "--transport", "udp", account=USER2)
    (first,) = static.wait_connections(1, 30)
    (first_udp,) = udp.wait_connections(1, 30)
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), static.err.read_text()
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 10), udp.err.read_text()
    broker.restart()
    ready = [line for line in broker.log_path.read_text().splitlines() if "ready in" in line]
    assert len(ready) == 2 and "2 live tunnels" in ready[-1]
    # The data plane was rebuilt from the store: 6in4 flows again at once, same addresses.
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 10), static.err.read_text()
    assert all(x["client_ipv6"] == first["client_ipv6"] for x in static.connections())
    tcp_transfer(lab, "cpub")
    # So does the UDP tunnel behind the NAT (restored too; a client that signed up again in a
    # slow run would get the same address, which is what matters).
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 30), udp.err.read_text()
    assert all(x["client_ipv6"] == first_udp["client_ipv6"] for x in udp.connections())
    tcp_transfer(lab, "cnat", port=5002)
    stop_client(static, lab, "cpub")
    stop_client(udp, lab, "cnat")


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_tic_and_ayiya_behind_the_nat(broker: BrokerInLab, fast: bool) -> None:
    lab = broker.lab
    t = broker.api("POST", "/api/v1/tunnels", {"type": "ayiya"})
    args = ("--tic", "--tunnel", f"T{t['id']}", *(() if fast else ("--no-fast-path",)))
    c = start_client(broker, "cnat", *args, account=True)
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "ayiya" and n["client_ipv6"] == t["client_inner"]
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 15), c.err.read_text()
    tcp_transfer(lab, "cnat")
    seen = broker.api("GET", f"/api/v1/tunnels/{t['id']}")
    assert seen["client_ipv4"] == lab.addr.nat_wan_v4 and seen["stats"]["up"]
    # The NAT forgets the mapping: the next signed NOOP (every 10 s) comes from a new port,
    # and the broker follows it without a new login.
    lab.change_nat_mapping()
    assert ping_until(lab, "cnat", lab.addr.inet6_v6, 30), c.err.read_text()
    moved = broker.api("GET", f"/api/v1/tunnels/{t['id']}")
    assert moved["client_port"] != seen["client_port"]
    assert len(c.connections()) == 1
    assert ("forwarding in C" in c.err.read_text()) == fast
    stop_client(c, lab, "cnat")


def test_tic_and_heartbeat_follow_a_new_address(broker: BrokerInLab) -> None:
    lab = broker.lab
    t = broker.api("POST", "/api/v1/tunnels", {"type": "heartbeat"})
    c = start_client(broker, "cpub", "--tic", account=True)  # the account's only tunnel
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == "heartbeat"
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 15), c.err.read_text()
    assert broker.api("GET", f"/api/v1/tunnels/{t['id']}")["client_ipv4"] == lab.addr.cpub_v4
    tcp_transfer(lab, "cpub")
    lab.change_client_ipv4("cpub", "198.51.100.78")
    c.wait_connections(2, 40)
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 15), c.err.read_text()
    assert broker.api("GET", f"/api/v1/tunnels/{t['id']}")["client_ipv4"] == "198.51.100.78"
    stop_client(c, lab, "cpub")
