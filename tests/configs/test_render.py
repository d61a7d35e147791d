"""Configuration downloads: golden files for every platform, input checks, and syntax checks
with the real tools where Debian has them (dash and bash, ifupdown, netplan, iproute2).

Regenerate the golden files after an intended change with
``TB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/configs``.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tunnelbroker.configs import PLATFORMS, ConfigError, TunnelParams, platforms_for, render

GOLDEN = Path(__file__).parent / "golden"


def params(kind: str = "static", **kw: object) -> TunnelParams:
    base: dict[str, object] = dict(
        tunnel_id=12,
        kind=kind,
        server_ipv4="192.0.2.1",
        client_ipv4="203.0.113.7" if kind == "static" else None,
        link_prefix="2001:db8:8000:c::/64",
        routed_prefix="2001:db8:c000:12::/64",
        delegated_prefix="2001:db8:c012::/48",
        mtu=1480,
        broker_host="broker.example.net",
        username="alice",
        name="home; rm -rf /",
        update_url="https://broker.example.net/nic/update?hostname=T12",
    )
    base.update(kw)
    return TunnelParams.make(**base)  # type: ignore[arg-type]


CASES = [(pid, "static") for pid in PLATFORMS if "static" in PLATFORMS[pid].kinds] + [
    ("tunnelbroker-client", "ayiya"),
    ("tunnelbroker-client", "heartbeat"),
    ("tunnelbroker-client", "tsp"),
    ("aiccu", "ayiya"),
    ("gogoc", "tsp"),
]


@pytest.mark.parametrize(("platform", "kind"), CASES)
def test_golden(platform: str, kind: str) -> None:
    out = render(platform, params(kind))
    path = GOLDEN / f"{platform}-{kind}.txt"
    expected = f"{out.filename}\n{out.media_type}\n{out.text}".encode()
    if os.environ.get("TB_UPDATE_GOLDEN"):
        path.write_bytes(expected)
    assert path.read_bytes() == expected  # bytes: Windows scripts keep their CRLF
    # What a user typed (the name) reaches only comments, without its dangerous characters.
    for line in out.text.splitlines():
        if "rm -rf" in line:
            assert line.lstrip().startswith(("#", "rem", "!")), line
            assert "home rm -rf" in line and ";" not in line.split("home", 1)[1]


def test_every_required_platform_is_there() -> None:
    assert {
        "linux",
        "ifupdown",
        "netplan",
        "networkd",
        "openwrt",
        "freebsd",
        "openbsd",
        "macos",
        "windows",
        "mikrotik",
        "cisco",
        "junos",
        "vyos",
        "tunnelbroker-client",
    } <= set(PLATFORMS)
    assert [p.id for p in platforms_for("ayiya")] == ["tunnelbroker-client", "aiccu"]
    assert {p.id for p in platforms_for("tsp")} == {"tunnelbroker-client", "gogoc"}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"server_ipv4": "192.0.2.1; reboot"}, "not an address"),
        ({"link_prefix": "2001:db8::/48"}, "must be a /64"),
        ({"mtu": 1500}, "MTU"),
        ({"kind": "gre"}, "unknown tunnel type"),
        ({"broker_host": "evil.example;reboot"}, "broker host"),
        ({"username": "alice\nrm"}, "user name"),
        ({"update_url": "https://x/`reboot`"}, "update URL"),
    ],
)
def test_bad_input_is_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        params(**changes)


def test_unsupported_combinations_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot run a ayiya tunnel"):
        render("linux", params("ayiya"))
    with pytest.raises(ConfigError, match="unknown platform"):
        render("amiga", params())
    with pytest.raises(ConfigError, match="needs the client's IPv4"):
        render("linux", params(client_ipv4=None))


SHELL = [pid for pid, p in PLATFORMS.items() if p.media_type == "text/x-shellscript"]


@pytest.mark.parametrize("shell", ["dash", "bash"])
@pytest.mark.parametrize("platform", SHELL)
def test_shell_scripts_parse(platform: str, shell: str, tmp_path: Path) -> None:
    kind = "static" if "static" in PLATFORMS[platform].kinds else "tsp"
    script = tmp_path / "s.sh"
    script.write_text(render(platform, params(kind)).text)
    res = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_netplan_generates(tmp_path: Path) -> None:
    if shutil.which("netplan") is None:
        pytest.skip("netplan.io is not installed (scripts/install adds it)")
    text = render("netplan", params()).text
    assert yaml.safe_load(text)["network"]["tunnels"]["tb12"]["mode"] == "sit"
    (tmp_path / "etc/netplan").mkdir(parents=True)
    (tmp_path / "etc/netplan/60-tb12.yaml").write_text(text)
    (tmp_path / "etc/netplan/60-tb12.yaml").chmod(0o600)
    res = subprocess.run(
        ["netplan", "generate", "--root-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    netdev = (tmp_path / "run/systemd/network/10-netplan-tb12.netdev").read_text()
    assert "Kind=sit" in netdev and "Remote=192.0.2.1" in netdev


def test_ifupdown_parses(tmp_path: Path) -> None:
    if shutil.which("ifup") is None:
        pytest.skip("ifupdown is not installed (scripts/install adds it)")
    path = tmp_path / "interfaces"
    path.write_text(render("ifupdown", params()).text)
    res = subprocess.run(
        ["ifup", "--no-act", "--verbose", "-i", str(path), "tb12"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "ip tunnel add tb12 mode sit remote 192.0.2.1 local 203.0.113.7" in out


def test_networkd_files_are_valid_ini() -> None:
    text = render("networkd", params()).text
    bodies = re.findall(r"<<'END'\n(.*?)\nEND\n", text, re.S)
    assert len(bodies) == 2
    for body in bodies:
        ini = configparser.ConfigParser(strict=True)
        ini.optionxform = str  # type: ignore[assignment,method-assign]
        ini.read_string(body)
    netdev, network = (configparser.ConfigParser() for _ in range(2))
    netdev.optionxform = network.optionxform = str  # type: ignore[assignment,method-assign]
    netdev.read_string(bodies[0])
    network.read_string(bodies[1])
    assert netdev["NetDev"]["Kind"] == "sit" and netdev["Tunnel"]["Remote"] == "192.0.2.1"
    assert network["Network"]["Gateway"] == "2001:db8:8000:c::1"


@pytest.mark.netns
def test_the_linux_script_runs_up_to_the_missing_sit_module(netns_ok: None) -> None:
    """Runs for real in a throw-away namespace. This kernel has no sit module, so the first
    command must fail with exactly that: everything before it was accepted by iproute2."""
    ns = f"tbcfg{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        script = render("linux", params()).text
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode == 0:  # a kernel with sit: the whole script worked
            routes = subprocess.run(
                ["ip", "-n", ns, "-6", "route"], capture_output=True, text=True
            ).stdout
            assert "default dev tb12" in routes
        else:  # this kernel: iproute2 accepted the command and the kernel lacks sit0
            assert res.stderr.strip() == 'add tunnel "sit0" failed: No such device', res.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
