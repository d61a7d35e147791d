"""The downloads checked by the real tools Debian has: dash and bash, iproute2 in a network
namespace, ifupdown, netplan, systemd-networkd, and our own client's command-line parser.

Each test skips, naming the package, only when its tool is missing; scripts/install puts
them all in. The router syntaxes (RouterOS, IOS, Junos, VyOS, EdgeOS), Windows and the BSDs
have no checker in Debian: their golden files are the check (test_render.py).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests.web.configs.sample import make_input

from tunnelbroker.lab.netns import run_cmd
from tunnelbroker.web.configs import PLATFORMS, TunnelKind, render
from tunnelbroker.web.configs.clients import client_arguments

SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKD = "/lib/systemd/systemd-networkd"


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package}; scripts/install does)")
    return path


# ------------------------------------------------------------------------- shells

SCRIPTS = [
    (pid, kind)
    for pid, p in PLATFORMS.items()
    if p.media_type == "text/x-shellscript"
    for kind in sorted(p.kinds)
]


@pytest.mark.parametrize("shell", ["dash", "bash"])
@pytest.mark.parametrize(("platform", "kind"), SCRIPTS)
def test_shell_scripts_parse(platform: str, kind: str, shell: str, tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text(render(platform, make_input(kind)).text)
    res = subprocess.run(
        [_need(shell, shell), "-n", str(script)], capture_output=True, text=True, timeout=10
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_openbsd_shell_lines_parse(tmp_path: Path) -> None:
    """hostname.if(5) hands lines starting with ! to sh."""
    lines = [ln[1:] for ln in render("openbsd", make_input()).text.splitlines() if ln[:1] == "!"]
    assert lines == ["/sbin/route -n add -inet6 default 2001:db8:8000:c::1"]
    res = subprocess.run(["sh", "-n", "-c", "\n".join(lines)], capture_output=True, timeout=10)
    assert res.returncode == 0, res.stderr


def test_a_shell_check_catches_a_broken_script(tmp_path: Path) -> None:
    """The check above can fail: the same script with an unclosed here-document does."""
    text = render("networkd", make_input()).text.replace("END\nnetworkctl", "networkctl")
    script = tmp_path / "s.sh"
    script.write_text(text)
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert "here-document" in res.stderr


def test_openwrt_finds_the_wan_zone_wherever_it_is(tmp_path: Path) -> None:
    """The script's own zone lookup, run by sh and sed on a real ``uci show`` listing."""
    (line,) = [
        ln for ln in render("openwrt", make_input()).text.splitlines() if ln.startswith("zone=")
    ]
    listing = (
        "firewall.@defaults[0]=defaults\n"
        "firewall.@zone[0]=zone\nfirewall.@zone[0].name='lan'\n"
        "firewall.@zone[1]=zone\nfirewall.@zone[1].name='guest'\n"
        "firewall.@zone[2]=zone\nfirewall.@zone[2].name='wan'\n"
        "firewall.@zone[2].network='wan' 'wan6'\n"
    )
    (tmp_path / "listing").write_text(listing)
    program = f'uci() {{ cat "{tmp_path}/listing"; }}\n{line}\nprintf %s "$zone"'
    res = subprocess.run(["sh", "-c", program], capture_output=True, text=True, timeout=10)
    assert res.stdout == "@zone[2]", res.stderr


# ------------------------------------------------------------------- iproute2


def _ns_sh(ns: str, script: str) -> subprocess.CompletedProcess[str]:
    return run_cmd(["ip", "netns", "exec", ns, "sh", "-c", script], check=False, timeout=30)


def _stand_in(ns: str, name: str) -> None:
    """An interface ``name`` that is up with a carrier: one end of a veth pair (this kernel
    has no dummy driver either)."""
    run_cmd(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
    run_cmd(["ip", "-n", ns, "link", "set", f"{name}p", "up"])
    run_cmd(["ip", "-n", ns, "link", "set", name, "up"])


def _uplink(ns: str) -> None:
    """An uplink with the client's IPv4 address and a default route."""
    _stand_in(ns, "eth0")
    run_cmd(["ip", "-n", ns, "addr", "add", "203.0.113.7/24", "dev", "eth0"])
    run_cmd(["ip", "-n", ns, "route", "add", "default", "via", "203.0.113.1"])


def _assert_configured(ns: str) -> None:
    """tb12 as the script leaves it: up, MTU 1480, the client address, ::/0 via the server."""
    link = run_cmd(["ip", "-n", ns, "link", "show", "tb12"]).stdout
    assert "mtu 1480" in link and ",UP" in link, link
    addrs = run_cmd(["ip", "-n", ns, "-6", "addr", "show", "dev", "tb12"]).stdout
    assert "inet6 2001:db8:8000:c::2/64 scope global" in addrs, addrs
    routes = run_cmd(["ip", "-n", ns, "-6", "route", "show", "default"]).stdout
    assert "default via 2001:db8:8000:c::1 dev tb12" in routes, routes


@pytest.mark.netns
def test_linux_script_runs_until_the_kernel_lacks_sit(scratch_ns: str) -> None:
    """The whole script, for real, in a namespace with a veth uplink. On a kernel with sit
    it configures everything; this machine's kernel has no sit module, so there it must stop
    at the tunnel with exactly the kernel's error and run nothing after it."""
    _uplink(scratch_ns)
    res = _ns_sh(scratch_ns, render("linux", make_input()).text)
    if res.returncode == 0:
        link = run_cmd(["ip", "-n", scratch_ns, "-d", "link", "show", "tb12"]).stdout
        assert "sit remote 192.0.2.1 local 203.0.113.7 ttl 255" in link, link
        _assert_configured(scratch_ns)
    else:
        assert res.stderr.strip() == 'add tunnel "sit0" failed: No such device', res.stderr
        gone = run_cmd(["ip", "-n", scratch_ns, "link", "show", "tb12"], check=False)
        assert gone.returncode != 0


@pytest.mark.netns
def test_linux_script_after_the_tunnel_runs_on_a_veth_stand_in(scratch_ns: str) -> None:
    """The commands after ``ip tunnel add`` (MTU, address, default route), run by iproute2
    against a veth interface named like the tunnel: the kernel accepts every one."""
    _uplink(scratch_ns)
    _stand_in(scratch_ns, "tb12")
    text = render("linux", make_input()).text
    rest = "\n".join(ln for ln in text.splitlines() if not ln.startswith("ip tunnel add"))
    assert rest != text.rstrip("\n")
    res = _ns_sh(scratch_ns, rest)
    assert res.returncode == 0, res.stderr
    _assert_configured(scratch_ns)


# -------------------------------------------------------------------- ifupdown


def test_ifupdown_plans_the_tunnel(tmp_path: Path) -> None:
    """``ifup --no-act`` parses the stanza with Debian's own v4tunnel method and prints the
    commands it would run."""
    ifup = _need("ifup", "ifupdown")
    path = tmp_path / "interfaces"
    path.write_text(render("ifupdown", make_input()).text)
    res = subprocess.run(
        [ifup, "--no-act", "--verbose", "-i", str(path), "tb12"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": SBIN_PATH},
    )
    assert res.returncode == 0, res.stderr
    planned = [" ".join(ln.split()) for ln in (res.stdout + res.stderr).splitlines()]
    for command in (
        "ip tunnel add tb12 mode sit remote 192.0.2.1 local 203.0.113.7 ttl 255",
        "ip link set tb12 up mtu 1480",
        "ip addr add 2001:db8:8000:c::2/64 dev tb12",
        "ip route add ::/0 via 2001:db8:8000:c::1 dev tb12 onlink",
    ):
        assert command in planned, (command, planned)


def test_ifupdown_check_catches_a_wrong_stanza(tmp_path: Path) -> None:
    ifup = _need("ifup", "ifupdown")
    path = tmp_path / "interfaces"
    path.write_text(render("ifupdown", make_input()).text.replace("    endpoint", "    endpiont"))
    res = subprocess.run(
        [ifup, "--no-act", "-i", str(path), "tb12"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": SBIN_PATH},
    )
    # ifupdown passes unknown options by, but the misspelt one leaves a required one out.
    assert res.returncode != 0, res.stderr
    assert "missing required variable: endpoint" in res.stderr, res.stderr


# --------------------------------------------------------- netplan and networkd


def _networkd_bodies(text: str) -> dict[str, str]:
    """The files the networkd script writes: path -> content."""
    found = re.findall(r"^cat > (\S+) <<'END'\n(.*?\n)END\n", text, re.S | re.M)
    return dict(found)


def test_networkd_files_are_strict_ini() -> None:
    files = _networkd_bodies(render("networkd", make_input()).text)
    assert sorted(files) == [
        "/etc/systemd/network/60-tb12.netdev",
        "/etc/systemd/network/60-tb12.network",
    ]
    parsed = {}
    for path, body in files.items():
        ini = configparser.ConfigParser(strict=True, interpolation=None)
        ini.optionxform = str  # type: ignore[assignment,method-assign]
        ini.read_string(body)
        parsed[path.rsplit(".", 1)[1]] = ini
    assert dict(parsed["netdev"]["NetDev"]) == {"Name": "tb12", "Kind": "sit", "MTUBytes": "1480"}
    assert parsed["netdev"]["Tunnel"]["Remote"] == "192.0.2.1"
    assert parsed["network"]["Network"]["Gateway"] == "2001:db8:8000:c::1"


#: networkd's last word on tb12 as a netdev: made, or refused by a kernel without sit.
NETDEV_DONE = r"tb12: (netdev could not be created|Created|netdev ready)"


def _run_networkd(
    ns: str, config: Path, script: Path | None = None, until: str = NETDEV_DONE
) -> str:
    """systemd-networkd itself, in ``ns`` and a private mount namespace where ``config`` is
    /etc/systemd/network. With ``script``, that script first writes the files there (its
    ``networkctl`` is a stub). Stops at the first log line matching ``until`` (or after
    30 s); returns the log.

    /sys is read-only in there, which tells networkd that no udev runs (none does here), so
    it configures links at once instead of waiting for udev to announce them.
    """
    if not os.access(NETWORKD, os.X_OK):
        pytest.skip(f"{NETWORKD} is missing (apt-get install systemd; scripts/install does)")
    stub = config.parent / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "networkctl").write_text('#!/bin/sh\necho "networkctl $*" >&2\n')
    (stub / "networkctl").chmod(0o755)
    program = (
        "set -e\n"
        f"mount --bind {config} /etc/systemd/network\n"
        # A fresh /run/systemd: networkd makes its state directories there itself.
        "mount -t tmpfs -o mode=0755 tmpfs /run/systemd\n"
        "mount -o remount,bind,ro /sys\n"
        + (f"PATH={stub}:$PATH sh {script}\n" if script else "")
        + f"SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console exec {NETWORKD}\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "sh", "-c", program],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    log: list[str] = []
    deadline = time.monotonic() + 30
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if not line:
                time.sleep(0.05)
                continue
            log.append(line.rstrip("\n"))
            if re.match(until, log[-1]):
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rest = proc.stdout.read() or ""
        log.extend(rest.splitlines())
        proc.stdout.close()
    return "\n".join(log)


def _assert_networkd_took_it(log: str) -> None:
    warnings = re.findall(r"^/\S+:\d+: .*$", log, re.M)
    assert warnings == [], warnings
    assert 'tb12: loaded "sit"' in log, log[-3000:]
    # Created where the kernel has sit; here, the kernel's refusal is the only complaint.
    assert re.search(
        r"^tb12: (Created|netdev ready|netdev could not be created: Operation not supported)",
        log,
        re.M,
    ), log[-3000:]


@pytest.mark.netns
def test_networkd_script_writes_files_networkd_accepts(scratch_ns: str, tmp_path: Path) -> None:
    """The download runs (into a private /etc/systemd/network), then systemd-networkd reads
    what it wrote: no warning for any line, and it sets out to create the sit tunnel."""
    config = tmp_path / "network"
    config.mkdir()
    script = tmp_path / "tb12-networkd.sh"
    script.write_text(render("networkd", make_input()).text)
    log = _run_networkd(scratch_ns, config, script)
    assert "networkctl reload" in log
    assert sorted(p.name for p in config.iterdir()) == ["60-tb12.netdev", "60-tb12.network"]
    _assert_networkd_took_it(log)


@pytest.mark.netns
def test_networkd_configures_the_network_file_on_a_veth_stand_in(
    scratch_ns: str, tmp_path: Path
) -> None:
    """The .network half applied by networkd for real, to a veth named like the tunnel (this
    kernel cannot make the sit): the address and ::/0 via the server end up in the kernel."""
    config = tmp_path / "network"
    config.mkdir()
    files = _networkd_bodies(render("networkd", make_input()).text)
    network = "/etc/systemd/network/60-tb12.network"
    (config / "60-tb12.network").write_text(files[network])
    _stand_in(scratch_ns, "tb12")
    log = _run_networkd(scratch_ns, config, until=r"tb12: .*-> configured")
    assert re.search(r"^tb12: .*-> configured", log, re.M), log[-3000:]
    assert re.findall(r"^/\S+:\d+: .*$", log, re.M) == []
    addrs = run_cmd(["ip", "-n", scratch_ns, "-6", "addr", "show", "dev", "tb12"]).stdout
    assert "inet6 2001:db8:8000:c::2/64 scope global" in addrs, addrs
    routes = run_cmd(["ip", "-n", scratch_ns, "-6", "route", "show", "default"]).stdout
    assert "default via 2001:db8:8000:c::1 dev tb12" in routes, routes


@pytest.mark.netns
def test_networkd_check_catches_a_wrong_key(scratch_ns: str, tmp_path: Path) -> None:
    config = tmp_path / "network"
    config.mkdir()
    for path, body in _networkd_bodies(render("networkd", make_input()).text).items():
        (config / Path(path).name).write_text(body.replace("Gateway=", "Gatway="))
    log = _run_networkd(scratch_ns, config)
    assert re.search(r"60-tb12\.network:\d+: Unknown key( name)? '?Gatway'?", log), log[-3000:]


@pytest.mark.netns
def test_netplan_generates_what_networkd_accepts(scratch_ns: str, tmp_path: Path) -> None:
    """``netplan generate`` turns the file into networkd's; networkd then reads those."""
    netplan = _need("netplan", "netplan.io")
    text = render("netplan", make_input()).text
    tree = yaml.safe_load(text)["network"]["tunnels"]["tb12"]
    assert tree["mode"] == "sit" and tree["routes"] == [{"to": "::/0", "via": "2001:db8:8000:c::1"}]
    root = tmp_path / "root"
    (root / "etc/netplan").mkdir(parents=True)
    source = root / "etc/netplan/60-tb12.yaml"
    source.write_text(text)
    source.chmod(0o600)
    res = subprocess.run(
        [netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "Error" not in res.stderr, res.stderr
    generated = root / "run/systemd/network"
    netdev = (generated / "10-netplan-tb12.netdev").read_text()
    network = (generated / "10-netplan-tb12.network").read_text()
    for line in ("Kind=sit", "MTUBytes=1480", "Local=203.0.113.7", "Remote=192.0.2.1", "TTL=255"):
        assert line in netdev, netdev
    assert "Address=2001:db8:8000:c::2/64" in network, network
    assert "Destination=::/0" in network and "Gateway=2001:db8:8000:c::1" in network, network
    config = tmp_path / "network"
    shutil.copytree(generated, config)
    _assert_networkd_took_it(_run_networkd(scratch_ns, config))


# ------------------------------------------------------------ our own client


@pytest.mark.parametrize("kind", sorted(PLATFORMS["tunnelbroker-client"].kinds))
def test_client_script_runs_the_command_our_cli_parses(kind: str, tmp_path: Path) -> None:
    """sh runs the download with ``tunnelbroker`` replaced by a recorder; the words it gets
    are what click's parser of the real command accepts, with the right meanings."""
    from tunnelbroker.cli.client import client

    p = make_input(kind, broker_port=3653 if kind == "tsp" else None)
    script = tmp_path / "client.sh"
    script.write_text(render("tunnelbroker-client", p).text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tunnelbroker").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n'
        f'printf "%s" "$TUNNELBROKER_PASSWORD" > {tmp_path}/password\n'
    )
    (bin_dir / "tunnelbroker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{SBIN_PATH}", "TUNNELBROKER_PASSWORD": "s3cret $(x) 'y'"}
    res = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=10)
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args == ["client", *client_arguments(p)]
    assert (tmp_path / "password").read_text() == "s3cret $(x) 'y'"

    ctx = client.make_context("client", args[1:])
    assert ctx.params["username"] == "alice" and ctx.params["up"] is True
    assert ctx.params["tun_name"] == "tb12"
    if kind == TunnelKind.TSP:
        assert ctx.params["server"] == "broker.example.net:3653"
        assert ctx.params["tic"] is False and ctx.params["router"] is True
        assert ctx.params["tunnel_type"].lower() == "v6anyv4"
    else:
        assert ctx.params["server"] == "broker.example.net"
        assert ctx.params["tic"] is True and ctx.params["tic_tunnel"] == "T12"


def test_client_script_asks_for_the_password(tmp_path: Path) -> None:
    script = tmp_path / "client.sh"
    script.write_text(render("tunnelbroker-client", make_input("ayiya")).text)
    res = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, env={"PATH": SBIN_PATH}, timeout=10
    )
    assert res.returncode != 0
    assert "set TUNNELBROKER_PASSWORD to your account password" in res.stderr
