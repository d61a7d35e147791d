"""The namespace lab on its own: reachability, the NAT, renumbering, and complete cleanup."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time

import pytest

from tunnelbroker.lab.netns import list_namespaces, namespace_pids, pid_alive
from tunnelbroker.lab.topology import HOSTS, MARKER_DIR, Lab, LabPlan, cleanup_stale

pytestmark = pytest.mark.netns

ECHO_PORT = 7777

# Replies with the source address and port it saw. Bounded in datagrams and idle time.
_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(20)
print("ready", flush=True)
try:
    for _ in range(100):
        data, peer = s.recvfrom(512)
        s.sendto(f"{peer[0]} {peer[1]}".encode(), peer)
except TimeoutError:
    pass
"""

_ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(1)
for _ in range(3):
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(512).decode())
        break
    except TimeoutError:
        pass
else:
    sys.exit("no echo")
"""


def start_echo(lab: Lab) -> subprocess.Popen[str]:
    """A UDP echo server in the broker namespace, up and bound when this returns."""
    proc = lab.popen(
        "broker", sys.executable, "-c", _ECHO_SERVER, str(ECHO_PORT), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready and proc.stdout.readline().strip() == b"ready"
    return proc


def seen_by_broker(lab: Lab, host: str, sport: int) -> tuple[str, int]:
    """Source address and port of a datagram from ``host``:``sport`` as the broker sees it."""
    out = lab.run(
        host, sys.executable, "-c", _ECHO_CLIENT, lab.addr.broker_v4, str(ECHO_PORT), str(sport)
    ).stdout.split()
    return out[0], int(out[1])


def own_namespaces(lab: Lab) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(lab.name + "-")]


def test_native_reachability(lab: Lab) -> None:
    a = lab.addr
    assert lab.ping("cpub", a.broker_v4)
    assert lab.ping("cnat", a.broker_v4)  # through the NAT
    assert lab.ping("nat", a.cpub_v4)
    assert lab.ping("broker", a.inet6_v6)
    assert lab.ping("cpub", a.broker_client_v6)  # the v4v6 clients' way to the broker
    # IPv6 beyond the client segment exists only through a tunnel.
    assert not lab.ping("cpub", a.inet6_v6)
    assert sorted(own_namespaces(lab)) == sorted(lab.ns(h) for h in HOSTS)


def test_inet6_routes_tunnel_prefixes_to_the_broker(lab: Lab) -> None:
    for dest in ("2001:db8:8000::2", "2001:db8:80ff:ffff::1", "2001:db8:c000::1"):
        route = lab.run("inet6", "ip", "-6", "route", "get", dest).stdout
        assert f"via {lab.addr.broker_v6}" in route, route
    assert lab.ping("inet6", lab.addr.broker_v6)


def test_broker_sees_the_nat_and_the_public_client(lab: Lab) -> None:
    start_echo(lab)
    lo, hi = lab.nat_port_range()
    ip, port = seen_by_broker(lab, "cnat", 40000)
    assert ip == lab.addr.nat_wan_v4 and lo <= port <= hi
    mappings = [m for m in lab.nat_mappings() if m.proto == "udp"]
    assert [(m.inside, m.outside) for m in mappings] == [
        ((lab.addr.cnat_v4, 40000), (lab.addr.nat_wan_v4, port))
    ]
    assert seen_by_broker(lab, "cpub", 40001) == (lab.addr.cpub_v4, 40001)


def test_change_nat_mapping_moves_the_source_port(lab: Lab) -> None:
    start_echo(lab)
    first = seen_by_broker(lab, "cnat", 40000)
    assert seen_by_broker(lab, "cnat", 40000) == first  # stable while unchanged
    lo, hi = lab.change_nat_mapping()
    ip, port = seen_by_broker(lab, "cnat", 40000)
    assert ip == lab.addr.nat_wan_v4 and lo <= port <= hi and port != first[1]
    assert lab.change_nat_mapping() == lab.addr.nat_port_ranges[0]
    assert lab.ping("cnat", lab.addr.broker_v4)


def test_change_client_ipv4(lab: Lab) -> None:
    start_echo(lab)
    old = lab.addr.cpub_v4
    lab.change_client_ipv4("cpub", "198.51.100.20")
    assert lab.addr.cpub_v4 == "198.51.100.20" and lab.plan.cpub_v4 == old
    addrs = lab.run("cpub", "ip", "-4", "-o", "addr", "show", "dev", lab.ifaces.cpub).stdout
    assert "198.51.100.20/24" in addrs and old not in addrs
    assert seen_by_broker(lab, "cpub", 40000) == ("198.51.100.20", 40000)
    assert lab.ping("cpub", lab.addr.broker_client_v6)  # IPv6 untouched

    lab.change_client_ipv4("cnat", "192.168.1.77/24")
    assert lab.ping("cnat", lab.addr.broker_v4)
    assert seen_by_broker(lab, "cnat", 40000)[0] == lab.addr.nat_wan_v4
    with pytest.raises(ValueError):
        lab.change_client_ipv4("cpub", "10.0.0.1")
    with pytest.raises(ValueError):
        lab.change_client_ipv4("broker", "198.51.100.30")


def test_run_is_bounded(lab: Lab) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run("broker", "sleep", "5", timeout=0.3)
    with pytest.raises(subprocess.CalledProcessError):
        lab.run("broker", "false")
    assert lab.run("broker", "false", check=False).returncode == 1


def test_close_removes_everything(netns_ok: None) -> None:
    lab = Lab().start()
    stray: subprocess.Popen[bytes] | None = None
    try:
        # A tracked process with a child in its session, and one started behind the lab's back.
        lab.popen("broker", "sh", "-c", "sleep 60 & sleep 60; wait")
        stray = subprocess.Popen(["ip", "netns", "exec", lab.ns("cnat"), "sleep", "60"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            len(namespace_pids(lab.ns("broker"))) < 3 or not namespace_pids(lab.ns("cnat"))
        ):
            time.sleep(0.02)
        pids = [p for h in HOSTS for p in namespace_pids(lab.ns(h))]
        assert len(pids) == 4
        assert (MARKER_DIR / f"{lab.name}.json").exists()

        started = time.monotonic()
        lab.close()
        assert time.monotonic() - started < 5
        assert own_namespaces(lab) == []
        assert not any(pid_alive(p) for p in pids)
        assert stray.wait(timeout=5) is not None
        assert not (MARKER_DIR / f"{lab.name}.json").exists()
        lab.close()  # idempotent
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait(timeout=5)
        lab.close()


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ("_create_links", RuntimeError),
        ("_configure_addresses", RuntimeError),
        ("_setup_nat", KeyboardInterrupt),
    ],
)
def test_failed_start_leaves_nothing(
    netns_ok: None, monkeypatch: pytest.MonkeyPatch, step: str, error: type[BaseException]
) -> None:
    original = getattr(Lab, step)

    def half_then_fail(self: Lab) -> None:
        original(self)  # the step's work is done, so there is something to clean up
        raise error("simulated failure")

    monkeypatch.setattr(Lab, step, half_then_fail)
    lab = Lab()
    with pytest.raises(error):
        lab.start()
    assert own_namespaces(lab) == []
    assert not (MARKER_DIR / f"{lab.name}.json").exists()


def test_two_labs_at_once(lab: Lab) -> None:
    with Lab() as other:
        assert other.name != lab.name
        assert not set(own_namespaces(other)) & set(own_namespaces(lab))
        assert other.ping("cnat", other.addr.broker_v4)
        assert lab.ping("cnat", lab.addr.broker_v4)
    assert own_namespaces(other) == []
    assert lab.ping("cpub", lab.addr.broker_v4)


def test_cleanup_stale_removes_dead_runs_only(lab: Lab) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=5)
    name = f"tb{dead.pid}-0"
    ns = f"{name}-broker"
    # An impossible start time: the run counts as dead even if its pid was reused meanwhile.
    (MARKER_DIR / f"{name}.json").write_text(json.dumps({"pid": dead.pid, "start_time": 1}))
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        removed = cleanup_stale()
        assert ns in removed
        assert ns not in list_namespaces()
        assert not (MARKER_DIR / f"{name}.json").exists()
        assert len(own_namespaces(lab)) == len(HOSTS)  # a live lab is left alone
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=10, capture_output=True)
        (MARKER_DIR / f"{name}.json").unlink(missing_ok=True)


def test_plan_and_names_are_checked() -> None:
    with pytest.raises(ValueError, match="broker_v4"):
        LabPlan(broker_v4="10.0.0.1")
    with pytest.raises(ValueError):
        LabPlan(nat_port_ranges=((20000, 20999),))
    with pytest.raises(ValueError):
        Lab(prefix="Bad-")
    lab = Lab()
    assert lab.ns("broker") == f"{lab.name}-broker"
    with pytest.raises(ValueError):
        lab.ns("router")
