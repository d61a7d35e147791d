"""The kernel data plane: feature detection here, and the real backend inside a VM.

The development and CI machines run a kernel without sit, ip6tnl and fou (and without module
support), so on the host we check that detection says so, precisely and without leaving
anything behind. The backend itself is exercised by booting Debian's kernel with virtme-ng
(the host's root filesystem, read-only, so this very file and the venv are there) and
running :func:`guest_scenario` inside: two namespaces, a tunnel of each kind, pings across.

Run as a script (``python test_kernel.py --guest DIR``) this file is the guest side.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.vm import guest_main, run_in_vm

from tunnelbroker.tunnelserver.kernel import (
    KernelBackend,
    KernelBackendError,
    KernelBackendUnavailable,
    KernelFeatures,
    _kernel_config,
    detect_features,
    link_name,
)

ALL_MISSING = KernelFeatures(
    sit=False,
    ip6tnl=False,
    fou=False,
    tun=True,
    reasons={"sit": "no sit here", "ip6tnl": "no ip6tnl here", "fou": "no fou here"},
)
EVERYTHING = KernelFeatures(sit=True, ip6tnl=True, fou=True, tun=True)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: probes the kernel")


# ---------------------------------------------------------------------- without the kernel


def test_missing_lists_each_absent_feature_with_its_use_and_reason() -> None:
    assert ALL_MISSING.missing() == [
        "sit: not available (needed for v6v4 and v6udpv4 tunnels); no sit here",
        "ip6tnl: not available (needed for v4v6 tunnels, as ip6tnl mode ipip6); no ip6tnl here",
        "fou: not available (needed for v6udpv4 tunnels, for the UDP encapsulation); no fou here",
    ]
    assert ALL_MISSING.missing(["ip6tnl", "tun"]) == [ALL_MISSING.missing()[1]]
    assert EVERYTHING.missing() == []


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (["v6v4"], ["sit"]),
        (["v4v6"], ["ip6tnl"]),
        (["v6v4", "v4v6"], ["sit", "ip6tnl"]),
        (["v6udpv4"], ["sit", "fou"]),
        (["v6anyv4"], ["sit", "fou"]),
    ],
)
def test_start_lists_exactly_what_the_configured_types_need(
    types: list[str], expected: list[str]
) -> None:
    backend = KernelBackend(types, fou_port=5555)
    with pytest.raises(KernelBackendUnavailable) as info:
        backend.start(ALL_MISSING)
    assert info.value.missing == ALL_MISSING.missing(expected)
    for line in info.value.missing:
        assert line in str(info.value)


def test_v6udpv4_is_refused_without_a_port_of_its_own() -> None:
    with pytest.raises(KernelBackendUnavailable) as info:
        KernelBackend(["v6v4", "v6udpv4"]).start(EVERYTHING)
    (line,) = info.value.missing
    assert line.startswith("v6udpv4: not offered by the kernel backend without a FOU")
    with pytest.raises(KernelBackendUnavailable) as info:
        KernelBackend(["v6anyv4"], fou_port=3653, tsp_port=3653).start(EVERYTHING)
    assert "is the TSP UDP port" in info.value.missing[0]
    # Missing modules and the missing port are reported together.
    with pytest.raises(KernelBackendUnavailable) as info:
        KernelBackend(["v6udpv4"]).start(ALL_MISSING)
    assert [m.split(":")[0] for m in info.value.missing] == ["sit", "fou", "v6udpv4"]


def test_argument_checks() -> None:
    with pytest.raises(ValueError):
        KernelBackend(["v6v8"])
    backend = KernelBackend(["v6v4"])
    with pytest.raises(KernelBackendError):
        backend.add_tunnel(1, "v6v4", "192.0.2.1", "192.0.2.2", None, [], 1280)
    assert backend.remove_tunnel(1) is False
    with pytest.raises(KeyError):
        backend.stats(1)
    assert link_name(42) == "tb-t42"
    assert link_name(99_999_999_999) == "tb-t99999999999"
    with pytest.raises(ValueError):
        link_name(999_999_999_999)
    with pytest.raises(ValueError):
        link_name(-1)


# ---------------------------------------------------------------------- this host's kernel


def _host_state() -> dict[str, Any]:
    """What detection must leave as it was: namespaces, links, threads."""
    from tunnelbroker.tunnelserver.tun import iproute_call

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {
        "netns": sorted(netns.stdout.split()),
        "run_netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "links": sorted(iproute_call(lambda ipr: [m.get("ifname") for m in ipr.link("dump")])),
        "threads": sorted(t.name for t in threading.enumerate()),
    }


@needs_root
def test_detect_features_on_this_kernel() -> None:
    before = _host_state()
    features = detect_features()
    assert _host_state() == before

    config = _kernel_config()
    options = {"sit": "CONFIG_IPV6_SIT", "ip6tnl": "CONFIG_IPV6_TUNNEL", "fou": "CONFIG_NET_FOU"}
    absent = [name for name, option in options.items() if config.get(option) == "n"]
    for name in absent:
        assert getattr(features, name) is False, name
        assert f"kernel config: {options[name]} is not set" in features.reasons[name]
    assert features.tun is os.path.exists("/dev/net/tun")

    lines = features.missing()
    missing_names = [n for n in ("sit", "ip6tnl", "fou", "tun") if not getattr(features, n)]
    assert [line.split(":")[0] for line in lines] == missing_names
    for name, line in zip(missing_names, lines, strict=True):
        assert "needed for" in line
        assert features.reasons[name] in line
        if not os.path.exists("/proc/modules"):
            assert "no loadable module support" in line
    print("\n".join(lines) or "this kernel has everything")


@needs_root
def test_start_on_this_kernel_says_what_is_missing() -> None:
    features = detect_features()
    wanted = ["sit", "ip6tnl", "fou"]
    if not features.missing(wanted):
        pytest.skip("this kernel has sit, ip6tnl and fou: test_kernel_backend_in_vm covers it")
    before = _host_state()
    backend = KernelBackend(["v6v4", "v4v6", "v6udpv4"], fou_port=5555)
    with pytest.raises(KernelBackendUnavailable) as info:
        backend.start()
    assert info.value.missing == features.missing(wanted)
    assert _host_state() == before


# ---------------------------------------------------------------------- in a VM

#: Upper bound for the whole VM run (boot, scenario, power-off). Under TCG on two cores the
#: run takes about a minute; the margin is for a busy machine.
VM_TIMEOUT = 480


@pytest.mark.timeout(VM_TIMEOUT + 60)
def test_kernel_backend_in_vm(tmp_path: Path) -> None:
    run_in_vm(Path(__file__), tmp_path, VM_TIMEOUT)


# ---------------------------------------------------------------------- the guest side


def guest_scenario(log: list[str]) -> None:
    """Inside the VM (as root, Debian's kernel): every tunnel kind, end to end.

    The VM's own namespace plays the tunnel server; namespace ``cli`` is the client, joined
    by a veth pair carrying 192.0.2.0/24 and 2001:db8:ffff::/64.
    """

    def sh(*args: str) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def cli(*args: str) -> str:
        return sh("ip", "netns", "exec", "cli", *args)

    def step(text: str) -> None:
        log.append(f"{time.monotonic() - t0:6.1f}s {text}")

    def ping(address: str) -> None:
        family = "-6" if ":" in address else "-4"
        cli("ping", family, "-c", "3", "-i", "0.2", "-W", "5", address)
        step(f"ping {address} from the client: ok")

    t0 = time.monotonic()
    features = detect_features()
    step(f"detect_features: {features}")
    assert features.missing() == [], features.missing()

    sh("ip", "link", "set", "lo", "up")
    sh("ip", "netns", "add", "cli")
    cli("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "veth-s", "type", "veth", "peer", "name", "veth-c", "netns", "cli")
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", "veth-s")
    sh("ip", "addr", "add", "2001:db8:ffff::1/64", "dev", "veth-s", "nodad")
    sh("ip", "link", "set", "veth-s", "up")
    for a in ("192.0.2.2/24", "192.0.2.3/24", "192.0.2.4/24"):
        cli("ip", "addr", "add", a, "dev", "veth-c")
    cli("ip", "addr", "add", "2001:db8:ffff::2/64", "dev", "veth-c", "nodad")
    cli("ip", "link", "set", "veth-c", "up")
    step("underlay up")

    backend = KernelBackend(["v6v4", "v4v6", "v6udpv4"], fou_port=5555, tsp_port=3653)
    backend.start(features)
    assert "port 5555" in sh("ip", "fou", "show")
    step("backend started; FOU port 5555 open")

    # v6v4: sit.
    backend.add_tunnel(
        1,
        "v6v4",
        "192.0.2.1",
        "192.0.2.2",
        None,
        ["2001:db8:8000:1::/64", "2001:db8:c000:100::/56"],
        1280,
        inner_addresses=["2001:db8:8000:1::1/64"],
    )
    details = sh("ip", "-d", "link", "show", "tb-t1")
    assert "sit" in details and "mtu 1280" in details, details
    assert "2001:db8:c000:100::/56 dev tb-t1" in sh("ip", "-6", "route")
    cli("ip", "link", "add", "c1", "type", "sit", "local", "192.0.2.2", "remote", "192.0.2.1")
    cli("ip", "addr", "add", "2001:db8:8000:1::2/64", "dev", "c1")
    cli("ip", "link", "set", "c1", "up")
    ping("2001:db8:8000:1::1")
    stats = backend.stats(1)
    step(f"stats tb-t1: {stats}")
    assert stats.rx_packets >= 3 and stats.tx_packets >= 3, stats

    # The client moves to another IPv4 address.
    cli("ip", "link", "del", "c1")
    cli("ip", "link", "add", "c1", "type", "sit", "local", "192.0.2.3", "remote", "192.0.2.1")
    cli("ip", "addr", "add", "2001:db8:8000:1::2/64", "dev", "c1")
    cli("ip", "link", "set", "c1", "up")
    backend.update_endpoint(1, "192.0.2.3")
    assert "remote 192.0.2.3 local 192.0.2.1" in sh("ip", "-d", "link", "show", "tb-t1")
    ping("2001:db8:8000:1::1")

    # v4v6: ip6tnl in ipip6 mode, no encapsulation limit option.
    backend.add_tunnel(
        2,
        "v4v6",
        "2001:db8:ffff::1",
        "2001:db8:ffff::2",
        None,
        ["100.64.0.0/30"],
        1280,
        inner_addresses=["100.64.0.2/30"],
    )
    details = sh("ip", "-d", "link", "show", "tb-t2")
    assert "ipip6" in details or "ip/ipv6" in details, details
    cli(
        "ip", "link", "add", "c2", "type", "ip6tnl", "mode", "ipip6", "local", "2001:db8:ffff::2",
        "remote", "2001:db8:ffff::1", "encaplimit", "none",
    )  # fmt: skip
    cli("ip", "addr", "add", "100.64.0.1/30", "dev", "c2")
    cli("ip", "link", "set", "c2", "up")
    ping("100.64.0.2")

    # v6udpv4: sit with FOU encapsulation, the client on UDP port 5556.
    cli("ip", "fou", "add", "port", "5556", "ipproto", "41")
    cli(
        "ip", "link", "add", "c3", "type", "sit", "local", "192.0.2.4", "remote", "192.0.2.1",
        "encap", "fou", "encap-sport", "5556", "encap-dport", "5555",
    )  # fmt: skip
    cli("ip", "addr", "add", "2001:db8:8000:3::2/64", "dev", "c3")
    cli("ip", "link", "set", "c3", "up")
    backend.add_tunnel(
        3,
        "v6udpv4",
        "192.0.2.1",
        "192.0.2.4",
        5556,
        ["2001:db8:8000:3::/64"],
        1280,
        inner_addresses=["2001:db8:8000:3::1/64"],
    )
    assert "encap fou" in sh("ip", "-d", "link", "show", "tb-t3")
    ping("2001:db8:8000:3::1")
    assert backend.stats(3).rx_packets >= 3

    # The client's NAT gives it another UDP port.
    cli("ip", "link", "del", "c3")
    cli("ip", "fou", "add", "port", "5557", "ipproto", "41")
    cli(
        "ip", "link", "add", "c3", "type", "sit", "local", "192.0.2.4", "remote", "192.0.2.1",
        "encap", "fou", "encap-sport", "5557", "encap-dport", "5555",
    )  # fmt: skip
    cli("ip", "addr", "add", "2001:db8:8000:3::2/64", "dev", "c3")
    cli("ip", "link", "set", "c3", "up")

    async def from_the_event_loop() -> None:
        # The daemon calls in from its asyncio loop, where pyroute2's sync API cannot run.
        backend.update_endpoint(3, "192.0.2.4", 5557)

    asyncio.run(from_the_event_loop())
    assert "encap-dport 5557" in sh("ip", "-d", "link", "show", "tb-t3")
    ping("2001:db8:8000:3::1")

    # A kernel refusal is reported, and leaves no half-made interface.
    try:
        backend.add_tunnel(4, "v6v4", "192.0.2.1", "192.0.2.3", None, [], 1280)
    except KernelBackendError as e:
        step(f"duplicate endpoint refused: {e}")
        assert "tb-t4" not in sh("ip", "link")
    else:
        raise AssertionError("a second sit tunnel to the same endpoint was accepted")

    assert backend.remove_tunnel(2) is True
    assert "tb-t2" not in sh("ip", "link")
    backend.stop()
    links = sh("ip", "link")
    assert "tb-t" not in links, links
    assert "5555" not in sh("ip", "fou", "show")
    step("removed and stopped: no tb-t* links, no FOU port")

    # A fresh start removes links an earlier (crashed) run left behind.
    sh("ip", "link", "add", "tb-t9", "type", "sit", "local", "192.0.2.1", "remote", "192.0.2.9")
    KernelBackend(["v6v4"]).start(features)
    assert "tb-t9" not in sh("ip", "link")
    step("leftover tb-t9 removed by start()")


if __name__ == "__main__":
    sys.exit(guest_main(guest_scenario))
