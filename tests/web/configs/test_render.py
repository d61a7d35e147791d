"""The platform registry and a golden file for every platform and tunnel type it runs.

After an intended change to a template, regenerate the golden files and read the diff:
``TB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/web/configs/test_render.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.web.configs.sample import make_input

from tunnelbroker.web.configs import PLATFORMS, ConfigError, TunnelKind, platforms_for, render

GOLDEN = Path(__file__).parent / "golden"

CASES = [(pid, kind) for pid, p in PLATFORMS.items() for kind in TunnelKind if kind in p.kinds]


@pytest.mark.parametrize(("platform", "kind"), CASES)
def test_golden(platform: str, kind: str) -> None:
    out = render(platform, make_input(kind, update_key="k3y-Of-T12"))
    path = GOLDEN / f"{platform}-{kind}.txt"
    # Bytes, so that the Windows file's CRLF line ends are compared too.
    got = f"{out.filename}\n{out.media_type}\n{out.text}".encode()
    if os.environ.get("TB_UPDATE_GOLDEN"):
        path.write_bytes(got)
    assert path.exists(), f"no golden file {path.name}: run with TB_UPDATE_GOLDEN=1"
    assert got == path.read_bytes()


def test_every_golden_file_belongs_to_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(f"{p}-{k}.txt" for p, k in CASES)


def test_the_required_platforms_are_there() -> None:
    required = {
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
        "edgeos",
        "tunnelbroker-client",
    }
    assert required <= set(PLATFORMS)
    assert all(TunnelKind.STATIC in PLATFORMS[p].kinds for p in required)


def test_types_that_need_a_client_program_are_offered_only_clients() -> None:
    assert [p.id for p in platforms_for("ayiya")] == ["tunnelbroker-client", "aiccu"]
    assert [p.id for p in platforms_for("heartbeat")] == ["tunnelbroker-client", "aiccu"]
    assert [p.id for p in platforms_for("tsp")] == ["tunnelbroker-client", "gogoc"]
    assert len(platforms_for("static")) == len(PLATFORMS) - 1  # all but gogoc
    assert platforms_for("gre") == []


@pytest.mark.parametrize(
    ("platform", "kind", "reason"),
    [
        ("linux", "ayiya", "Linux \\(iproute2\\) cannot run AYIYA tunnels; these can: tunnel"),
        ("cisco", "heartbeat", "Cisco IOS cannot run 6in4 heartbeat tunnels"),
        ("netplan", "tsp", "netplan cannot run TSP tunnels; these can: tunnelbroker client, gogo"),
        ("gogoc", "static", "gogoCLIENT cannot run 6in4 tunnels"),
        ("amiga", "static", "unknown platform 'amiga'"),
        ("x" * 100, "static", "unknown platform 'x{40}'$"),
    ],
)
def test_unsupported_combinations_are_refused(platform: str, kind: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        render(platform, make_input(kind))


def test_openwrt_refuses_a_name_its_device_name_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="interface: OpenWrt needs at most 10 characters"):
        render("openwrt", make_input(interface="tunnel12345"))
    assert (
        "network.tunnel1234=interface" in render("openwrt", make_input(interface="tunnel1234")).text
    )


def test_the_file_names_carry_the_tunnel_id() -> None:
    for pid, p in PLATFORMS.items():
        kind = next(iter(sorted(p.kinds)))
        out = render(pid, make_input(kind, tunnel_id=4711))
        assert out.filename == p.filename.format(id=4711)
        assert "4711" in out.filename or out.filename in (
            "hostname.gif0",
            "aiccu.conf",
            "gogoc.conf",
        )
        assert "T4711" in out.text  # every header states the tunnel id


def test_a_tunnel_without_prefixes_gets_no_lan_advice() -> None:
    bare = make_input(routed_prefix=None, delegated_prefix=None, update_url=None)
    for pid in platforms_for("static"):
        text = render(pid.id, bare).text
        assert "LAN" not in text and "routed /" not in text and "nic/update" not in text, pid.id
    assert (
        "host_type=host"
        in render("gogoc", make_input("tsp", routed_prefix=None, delegated_prefix=None)).text
    )
    client = render(
        "tunnelbroker-client", make_input("tsp", routed_prefix=None, delegated_prefix=None)
    )
    assert "--router" not in client.text


def test_only_windows_gets_crlf() -> None:
    for pid in platforms_for("static"):
        text = render(pid.id, make_input()).text
        if pid.id == "windows":
            assert text.count("\r\n") == text.count("\n")
        else:
            assert "\r" not in text


def test_the_update_key_is_used_only_when_given() -> None:
    assert '-u "alice:UPDATE-KEY"' in render("linux", make_input()).text
    assert '-u "alice:k3y-Of-T12"' in render("linux", make_input(update_key="k3y-Of-T12")).text
    # The tunnels that follow their client by themselves need no update.
    assert "nic/update" not in render("aiccu", make_input("heartbeat")).text


def test_a_broker_port_reaches_the_clients() -> None:
    tsp = make_input("tsp", broker_port=3653)
    assert "tunnelbroker client broker.example.net:3653 " in render("tunnelbroker-client", tsp).text
    assert "server=broker.example.net:3653\n" in render("gogoc", tsp).text
