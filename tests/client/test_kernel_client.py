"""The client's kernel data plane: the choice of ``--backend`` here, the devices in a VM.

This host's kernel has neither sit nor ip6tnl, so here the real CLI, in a namespace of the
lab, must say so: ``--backend kernel`` refuses, naming what is missing, and ``auto`` (the
default) falls back to userspace and logs why. The keepalive's echo socket is checked on
``lo``, which every kernel has. The devices themselves run in a VM booting Debian's kernel
(tests/vm.py): the lab inside it, the real ``tunnelbroker serve`` with its userspace data
plane, and ``tunnelbroker client --up --backend kernel`` carrying ping and a TCP transfer
through a sit and an ip6tnl device (:func:`guest_scenario`).

Run as a script (``python test_kernel_client.py --guest DIR``) this file is the guest side.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.e2e.test_client_lab import (
    KEEPALIVE,
    PASSWORD,
    TUNNELBROKER,
    USER,
    BrokerInLab,
    Client,
    broker_config,
    check_router_mode,
    ping_until,
    start_client,
    stop_client,
    tcp_transfer,
)
from tests.tunnelserver.test_kernel import ALL_MISSING
from tests.vm import guest_main, run_in_vm

from tunnelbroker.cli.client import client
from tunnelbroker.client.echo import EchoSocket
from tunnelbroker.client.kernel import (
    BackendChooser,
    KernelUnavailable,
    kernel_problems,
)
from tunnelbroker.lab.topology import Lab
from tunnelbroker.protocols.tsp.keepalive import KeepaliveMachine
from tunnelbroker.tunnelserver.kernel import KernelFeatures, detect_features, in_throwaway_netns
from tunnelbroker.tunnelserver.tun import iproute_call

EVERYTHING = KernelFeatures(sit=True, ip6tnl=True, fou=True, tun=True)
NOTHING = ALL_MISSING
SIT_MISSING = "sit: not available (needed for v6v4 and v6udpv4 tunnels); no sit here"
IP6TNL_MISSING = (
    "ip6tnl: not available (needed for v4v6 tunnels, as ip6tnl mode ipip6); no ip6tnl here"
)
#: Upper bound for the whole VM run; under TCG on two cores it takes about two minutes.
VM_TIMEOUT = 480

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: probes the kernel")


# ---------------------------------------------------------------------- the choice


def test_what_the_kernel_carries() -> None:
    for kind in ("v6v4", "heartbeat", "v4v6"):
        assert kernel_problems(kind, EVERYTHING) == []
    assert kernel_problems("v6v4", NOTHING) == [SIT_MISSING]
    assert kernel_problems("heartbeat", NOTHING) == [SIT_MISSING]
    assert kernel_problems("v4v6", NOTHING) == [IP6TNL_MISSING]
    # fou alone does not make v6udpv4 a kernel tunnel for the client; nor is AYIYA one.
    (line,) = kernel_problems("v6udpv4", EVERYTHING)
    assert line.startswith("v6udpv4: carried in userspace only (IPv6 in UDP needs fou")
    (line,) = kernel_problems("ayiya", EVERYTHING)
    assert line.startswith("ayiya: carried in userspace only")


def _never() -> KernelFeatures:
    raise AssertionError("the kernel was probed")


async def test_auto_takes_the_kernel_where_it_can(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tunnelbroker")
    probes: list[int] = []

    def detect() -> KernelFeatures:
        probes.append(1)
        return EVERYTHING

    chooser = BackendChooser("auto", detect)
    assert await chooser.choose("v6v4") == "kernel"
    assert await chooser.choose("v4v6") == "kernel"
    assert await chooser.choose("v6udpv4") == "userspace"
    assert probes == [1]  # once, however many tunnels
    assert "data plane: kernel for this v6v4 tunnel (sit device; the kernel has it)" in (
        caplog.text
    )
    assert "data plane: userspace for this v6udpv4 tunnel, the kernel cannot carry it: " in (
        caplog.text
    )


async def test_auto_falls_back_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tunnelbroker")
    chooser = BackendChooser("auto", lambda: NOTHING)
    assert await chooser.choose("heartbeat") == "userspace"
    assert f"userspace for this heartbeat tunnel, the kernel cannot carry it: {SIT_MISSING}" in (
        caplog.text
    )
    # A type only userspace carries needs no probe at all.
    assert await BackendChooser("auto", _never).choose("ayiya") == "userspace"


async def test_kernel_refuses_with_what_is_missing() -> None:
    chooser = BackendChooser("kernel", lambda: NOTHING)
    with pytest.raises(KernelUnavailable) as info:
        await chooser.choose("v4v6")
    assert info.value.missing == [IP6TNL_MISSING]
    assert str(info.value) == (
        f"the kernel data plane cannot carry a v4v6 tunnel here:\n  {IP6TNL_MISSING}"
    )
    # Before negotiating: v6anyv4 needs sit (behind a NAT it is refused once granted).
    with pytest.raises(KernelUnavailable, match="sit: not available"):
        await chooser.precheck("v6anyv4")
    with pytest.raises(KernelUnavailable, match="v6udpv4: carried in userspace only"):
        await BackendChooser("kernel", _never).precheck("v6udpv4")
    await BackendChooser("kernel", lambda: EVERYTHING).precheck("v6v4")
    await BackendChooser("kernel", _never).precheck(None)  # TIC: the type comes later


async def test_userspace_never_probes() -> None:
    chooser = BackendChooser("userspace", _never)
    assert await chooser.choose("v6v4") == "userspace"
    await chooser.precheck("v6v4")
    with pytest.raises(ValueError):
        BackendChooser("fast")


def test_backend_needs_up() -> None:
    result = CliRunner().invoke(client, ["192.0.2.1", "--backend", "kernel"])
    assert result.exit_code == 2
    assert "--backend needs --up" in result.output


@needs_root
async def test_detection_on_this_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tunnelbroker")
    features = detect_features()
    chooser = BackendChooser("auto")
    if features.sit:
        assert await chooser.choose("v6v4") == "kernel"
        return
    assert await chooser.choose("v6v4") == "userspace"
    (missing,) = features.missing(["sit"])
    assert missing.startswith("sit: not available (needed for v6v4")
    assert f"the kernel cannot carry it: {missing}" in caplog.text
    with pytest.raises(KernelUnavailable) as info:
        await BackendChooser("kernel").precheck("v6v4")
    assert info.value.missing == [missing]


# ---------------------------------------------------------------------- the echo socket


@needs_root
@pytest.mark.parametrize("address", ["::1", "127.0.0.1"])
def test_the_keepalive_echo_socket_on_lo(address: str) -> None:
    """The machine's own echo goes out through the socket and its reply comes back."""

    def run() -> tuple[int, int]:
        iproute_call(lambda ipr: ipr.link("set", index=1, state="up"))
        packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        machine = KeepaliveMachine(1, packed, packed, 4242, timeout=2)
        echo = EchoSocket("lo", address)
        try:
            machine.next_send(0.0, 0.0)
            pkt = machine.due(1.0)
            assert pkt is not None
            echo.send(pkt)
            deadline = time.monotonic() + 2
            matched = 0
            while not matched and time.monotonic() < deadline:
                select.select([echo], [], [], 0.2)
                matched += sum(machine.receive(p, 1.1) for p in echo.replies())
            return machine.sent, machine.answered
        finally:
            echo.close()

    assert in_throwaway_netns(run) == (1, 1)


# ---------------------------------------------------------------------- the CLI in the lab


@pytest.fixture
def broker(lab: Lab, tmp_path: Path) -> Iterator[BrokerInLab]:
    b = BrokerInLab(lab, broker_config(lab, tmp_path, tmp_path / "data"), tmp_path)
    b.start()
    try:
        yield b
    finally:
        print("---- broker log (tail)\n" + b.log_path.read_text()[-4000:])


def _features() -> KernelFeatures:
    return detect_features() if os.geteuid() == 0 else NOTHING


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "missing"),
    [("v6v4", "sit"), ("v6anyv4", "sit"), ("v4v6", "ip6tnl"), ("v6udpv4", None)],
)
def test_backend_kernel_refuses_before_negotiating(
    lab: Lab, kind: str, missing: str | None
) -> None:
    features = _features()
    if missing is not None and getattr(features, missing):
        pytest.skip(f"this kernel has {missing}: test_kernel_client_in_vm covers it")
    # No broker runs: an attempt to negotiate would end in a timeout, not in this refusal.
    server = f"[{lab.addr.broker_client_v6}]" if kind == "v4v6" else lab.addr.broker_v4
    args = ["client", server, "--up", "--backend", "kernel", "--type", kind, "--timeout", "5"]
    result = lab.run("cpub", str(TUNNELBROKER), *args, check=False, timeout=30)
    assert result.returncode == 1, result.stderr
    shown = "v6v4" if kind == "v6anyv4" else kind
    assert result.stderr.startswith(
        f"error: --backend kernel: the kernel data plane cannot carry a {shown} tunnel here:\n"
    ), result.stderr
    if missing is not None:
        (line,) = features.missing([missing])
        assert f"  {line}\n" in result.stderr
    else:
        assert "  v6udpv4: carried in userspace only" in result.stderr
    assert "(--backend auto or userspace runs it in userspace)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "tbc0" not in lab.run("cpub", "ip", "-o", "link").stdout


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["v6v4", "v4v6"])
def test_auto_falls_back_to_userspace_in_the_lab(broker: BrokerInLab, kind: str) -> None:
    lab = broker.lab
    device = {"v6v4": "sit", "v4v6": "ip6tnl"}[kind]
    features = _features()
    if getattr(features, device):
        pytest.skip(f"this kernel has {device}: test_kernel_client_in_vm covers it")
    if kind == "v6v4":
        # The default backend is auto.
        c = start_client(broker, "cpub", "--type", "v6v4")
        target, server, sink = lab.addr.inet6_v6, None, "inet6"
    else:
        target, sink = "192.0.2.100", "broker"
        lab.run("broker", "ip", "addr", "add", f"{target}/32", "dev", "lo")
        server = f"[{lab.addr.broker_client_v6}]"
        args = ["--type", "v4v6", "--transport", "tcp", "--backend", "auto"]
        c = start_client(broker, "cpub", *args, server=server)
    (n,) = c.wait_connections(1, 30)
    assert n["tunnel_type"] == kind and n["interface"] == "tbc0"
    (line,) = features.missing([device])
    log = c.err.read_text()
    assert f"data plane: userspace for this {kind} tunnel, the kernel cannot carry it: {line}" in (
        log
    )
    assert "tun" in lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    assert ping_until(lab, "cpub", target, 10), c.err.read_text()
    tcp_transfer(lab, "cpub", target=target, sink=sink)
    stop_client(c, lab, "cpub")


# ---------------------------------------------------------------------- in a VM


@pytest.mark.timeout(VM_TIMEOUT + 60)
def test_kernel_client_in_vm(tmp_path: Path) -> None:
    run_in_vm(Path(__file__), tmp_path, VM_TIMEOUT)


# ---------------------------------------------------------------------- the guest side


def _wait_for(c: Client, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in c.err.read_text():
        if time.monotonic() > deadline or c.proc.poll() is not None:
            raise AssertionError(f"no {text!r} from the client:\n{c.err.read_text()[-3000:]}")
        time.sleep(0.2)


def guest_scenario(log: list[str]) -> None:
    """Inside the VM (as root, Debian's kernel): the lab, the broker, kernel clients.

    v6v4 through a sit device, then a client killed with SIGKILL (its sit device outlives
    it) and the next one replacing that device, then v4v6 through an ip6tnl device. Each
    carries ping and a 1 MiB TCP transfer, has its keepalive answered, and takes its
    device and routes with it on SIGTERM.
    """
    t0 = time.monotonic()

    def step(text: str) -> None:
        log.append(f"{time.monotonic() - t0:6.1f}s {text}")

    features = detect_features()
    step(f"detect_features: {features}")
    assert features.sit and features.ip6tnl, features.missing()

    tmp = Path(tempfile.mkdtemp(prefix="tb-vm-"))
    with Lab() as lab:
        b = BrokerInLab(lab, broker_config(lab, tmp, tmp / "data"), tmp, start_timeout=180)
        try:
            add = [str(TUNNELBROKER), "user", "add", USER, "--password-stdin"]
            lab.run("broker", *add, "--config", str(b.config), input=PASSWORD + "\n", timeout=90)
            b.start()
            step("lab and broker up")
            _guest_v6v4(b, step)
            _guest_leftover(b, step)
            _guest_v4v6(b, step)
            _guest_router(b, step)
            _guest_granted_v6udpv4(b, step)
            _guest_heartbeat(b, step)
        except BaseException:
            for name in ("broker.log", "client-cpub.err"):
                if (tmp / name).exists():
                    log.append(f"---- {name} (tail)\n{(tmp / name).read_text()[-3000:]}")
            raise


def _guest_v6v4(b: BrokerInLab, step: Callable[[str], None]) -> None:
    lab = b.lab
    c = start_client(b, "cpub", "--type", "v6v4", "--backend", "kernel")
    (n,) = c.wait_connections(1, 60)
    assert n["tunnel_type"] == "v6v4" and n["interface"] == "tbc0"
    assert "data plane: kernel for this v6v4 tunnel (sit device; as asked)" in c.err.read_text()
    details = lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    step(f"tbc0: {' '.join(details.split())}")
    assert "sit" in details and "mtu 1280" in details and "ttl 255" in details, details
    assert f"remote {lab.addr.broker_v4} local {lab.addr.cpub_v4}" in details, details
    assert "default dev tbc0" in lab.run("cpub", "ip", "-6", "route").stdout
    assert f"{n['client_ipv6']}/128" in lab.run("cpub", "ip", "-6", "addr", "show", "tbc0").stdout
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 20), c.err.read_text()
    step("v6v4: ping through sit: ok")
    tcp_transfer(lab, "cpub")
    step("v6v4: 1 MiB over TCP through sit: ok")
    _wait_for(c, "keepalive reply", 4 * KEEPALIVE + 10)
    assert "no reply" not in c.err.read_text()
    step("v6v4: keepalive answered through sit")
    stop_client(c, lab, "cpub")
    assert "tbc0 down: stopped" in c.err.read_text()
    step("v6v4: SIGTERM: tbc0 and ::/0 gone")


def _guest_leftover(b: BrokerInLab, step: Callable[[str], None]) -> None:
    lab = b.lab
    killed = start_client(b, "cpub", "--type", "v6v4")
    killed.wait_connections(1, 60)
    os.killpg(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait(timeout=10)
    assert "sit" in lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    step("SIGKILL: the sit device tbc0 outlives its client")
    c = start_client(b, "cpub", "--type", "v6v4")  # auto
    c.wait_connections(1, 60)
    log = c.err.read_text()
    assert "removing tbc0 (sit), left by an earlier run" in log, log
    assert "data plane: kernel for this v6v4 tunnel (sit device; the kernel has it)" in log
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 20), c.err.read_text()
    stop_client(c, lab, "cpub")
    step("the next client (auto: kernel) replaced it and works")


#: For the broker, not the client: see _guest_v4v6. @th,112,8 is the next header of the IPv6
#: header that an ICMPv6 error quotes (8 bytes of ICMPv6, then 6 into that header).
_NO_4IN6_PORT_UNREACHABLE = """
table ip6 tbvm {
    chain output {
        type filter hook output priority filter; policy accept;
        icmpv6 type destination-unreachable icmpv6 code port-unreachable @th,112,8 4 counter drop
    }
}
"""


def _guest_v4v6(b: BrokerInLab, step: Callable[[str], None]) -> None:
    lab = b.lab
    target = "192.0.2.100"
    lab.run("broker", "ip", "addr", "add", f"{target}/32", "dev", "lo")
    # The client's probe loaded ip6_tunnel into this (shared) kernel. Now the broker's own
    # kernel answers each 4in6 packet that no ip6tnl device claims with an ICMPv6 port
    # unreachable, although its userspace data plane read it from a raw socket; the client's
    # ip6tnl turns that into "host unreachable" and TCP gives up (ping does not care). Any
    # broker running the userspace plane on a kernel with ip6_tunnel loaded does this; here
    # it is filtered out at the broker, as narrowly as nftables allows.
    lab.run("broker", "nft", "-f", "-", input=_NO_4IN6_PORT_UNREACHABLE)
    args = ["--type", "v4v6", "--transport", "tcp", "--backend", "kernel"]
    c = start_client(b, "cpub", *args, server=f"[{lab.addr.broker_client_v6}]")
    (n,) = c.wait_connections(1, 60)
    assert n["tunnel_type"] == "v4v6"
    assert "data plane: kernel for this v4v6 tunnel (ip6tnl device; as asked)" in c.err.read_text()
    details = lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    step(f"tbc0: {' '.join(details.split())}")
    assert "ip6tnl" in details and ("ipip6" in details or "ip/ipv6" in details), details
    assert "mtu 1280" in details, details
    routes = lab.run("cpub", "ip", "-4", "route").stdout
    assert "0.0.0.0/1 dev tbc0" in routes and "128.0.0.0/1 dev tbc0" in routes, routes
    assert ping_until(lab, "cpub", target, 20), c.err.read_text()
    step("v4v6: ping through ip6tnl: ok")
    tcp_transfer(lab, "cpub", target=target, sink="broker")
    step("v4v6: 1 MiB over TCP through ip6tnl: ok")
    _wait_for(c, "keepalive reply", 4 * KEEPALIVE + 10)
    assert "no reply" not in c.err.read_text()
    step("v4v6: keepalive (ICMPv4) answered through ip6tnl")
    stop_client(c, lab, "cpub")
    assert "tbc0" not in lab.run("cpub", "ip", "-4", "route").stdout
    step("v4v6: SIGTERM: tbc0 and both IPv4 halves gone")
    counted = lab.run("broker", "nft", "list", "table", "ip6", "tbvm").stdout
    dropped = re.search(r"counter packets (\d+)", counted)
    step(f"the broker's ICMPv6 port unreachables for 4in6 dropped: {dropped and dropped[1]}")


def _guest_router(b: BrokerInLab, step: Callable[[str], None]) -> None:
    check_router_mode(
        b, "--type", "v6v4", "--backend", "kernel", connect_timeout=60, ping_timeout=20
    )
    step("router mode through sit: the /56's first address on lan0, reached from inet6: ok")


def _guest_granted_v6udpv4(b: BrokerInLab, step: Callable[[str], None]) -> None:
    # Behind the NAT v6anyv4 is granted as v6udpv4, which the kernel does not carry: the
    # refusal comes after negotiating, and the client ends with nothing left behind.
    args = ["--type", "v6anyv4", "--transport", "udp", "--backend", "kernel"]
    c = start_client(b, "cnat", *args)
    assert c.proc.wait(timeout=60) == 1
    err = c.err.read_text()
    assert "cannot carry a v6udpv4 tunnel here:\n  v6udpv4: carried in userspace only" in err
    assert "tbc0" not in b.lab.run("cnat", "ip", "-o", "link").stdout
    step("v6anyv4 granted as v6udpv4 behind the NAT: refused after negotiating, exit 1")


def _guest_heartbeat(b: BrokerInLab, step: Callable[[str], None]) -> None:
    lab = b.lab
    t = b.api("POST", "/api/v1/tunnels", {"type": "heartbeat"})
    c = start_client(b, "cpub", "--tic", "--backend", "kernel", account=True)
    (n,) = c.wait_connections(1, 60)
    assert n["tunnel_type"] == "heartbeat"
    log = c.err.read_text()
    assert "data plane: kernel for this heartbeat tunnel (sit device; as asked)" in log, log
    assert "heartbeat every 10 s" in log, log
    assert "sit" in lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 20), c.err.read_text()
    assert b.api("GET", f"/api/v1/tunnels/{t['id']}")["client_ipv4"] == lab.addr.cpub_v4
    tcp_transfer(lab, "cpub")
    step("heartbeat (TIC): ping and 1 MiB through sit: ok")
    # A new IPv4 address: the source watch ends the tunnel, a new sit device comes up from
    # the new address, and its heartbeat moves the PoP's end there.
    lab.change_client_ipv4("cpub", "198.51.100.78")
    c.wait_connections(2, 60)
    assert "source address changed" in c.err.read_text()
    details = lab.run("cpub", "ip", "-d", "link", "show", "tbc0").stdout
    assert "local 198.51.100.78" in details, details
    assert ping_until(lab, "cpub", lab.addr.inet6_v6, 30), c.err.read_text()
    assert b.api("GET", f"/api/v1/tunnels/{t['id']}")["client_ipv4"] == "198.51.100.78"
    stop_client(c, lab, "cpub")
    step("heartbeat: a new IPv4 address, a new sit device, the PoP followed: ok")


if __name__ == "__main__":
    sys.exit(guest_main(guest_scenario))
