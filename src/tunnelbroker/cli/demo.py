"""``tunnelbroker demo``: the whole product on one machine, in network namespaces.

Builds the lab (``docs/lab.md``): an IPv4 internet with the broker, a NAT router, a client
with a public address and one behind the NAT, and an IPv6-only host. Starts the broker daemon
and two real ``tunnelbroker client --up`` processes, shows what they negotiated, pings the
IPv6 host through each tunnel, moves a megabyte over TCP, and removes everything again, also
on Ctrl-C or a failure. Needs root (namespaces, TUN devices, raw sockets).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tunnelbroker.lab.topology import Lab, LabError
from tunnelbroker.lab.traffic import SINK, SOURCE

_PASSWORD = "demo password 42"


class DemoError(Exception):
    """A step failed; the message says which and why."""


class Demo:
    """The demo's state, so that :meth:`close` can undo whatever was done."""

    def __init__(self, console: Console, keepalive: int) -> None:
        self.console = console
        self.keepalive = keepalive
        self.tmp = Path(tempfile.mkdtemp(prefix="tunnelbroker-demo-"))
        self.lab = Lab(prefix="tbdemo")
        self.exe = str(Path(sys.executable).with_name("tunnelbroker"))
        self.clients: dict[str, tuple[subprocess.Popen[Any], Path, Path]] = {}
        self.broker: subprocess.Popen[Any] | None = None

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]==>[/] {text}")

    # ------------------------------------------------------------------ the broker

    def start_lab(self) -> None:
        self.step("Building the lab: six network namespaces joined by veth pairs")
        self.lab.start()
        a = self.lab.addr
        table = Table("host", "role", "addresses")
        table.add_row("broker", "tunnel broker and tunnel server", f"{a.broker_v4}, {a.broker_v6}")
        table.add_row(
            "nat", "home router (nftables masquerade)", f"{a.nat_wan_v4} / {a.nat_lan_v4}"
        )
        table.add_row("cpub", "client with a public IPv4 address", a.cpub_v4)
        table.add_row("cnat", "client behind the NAT", a.cnat_v4)
        table.add_row("inet6", "a host on the IPv6 internet", a.inet6_v6)
        self.console.print(table)

    def start_broker(self) -> None:
        a = self.lab.addr
        config = self.tmp / "broker.toml"
        config.write_text(
            f'data_dir = "{self.tmp / "data"}"\n'
            f'[broker]\nserver_ipv4 = "{a.broker_v4}"\nserver_ipv6 = "{a.broker_client_v6}"\n'
            f'[tsp]\nlisten = ["{a.broker_v4}", "{a.broker_client_v6}"]\n'
            '[tunnelserver]\nbackend = "userspace"\n[keepalive]\nmin_interval = 1\n'
            '[web]\nlisten = ["127.0.0.1"]\n'
        )
        self.step("Starting the broker: tunnelbroker serve, with the userspace data plane")
        self.lab.run(
            "broker",
            self.exe,
            "user",
            "add",
            "demo",
            "--password-stdin",
            "--config",
            str(config),
            input=_PASSWORD + "\n",
            timeout=60,
        )
        log_path = self.tmp / "broker.log"
        with log_path.open("w") as log:
            self.broker = self.lab.popen(
                "broker", self.exe, "serve", "--config", str(config), stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while "ready in" not in log_path.read_text():
            if self.broker.poll() is not None or time.monotonic() > deadline:
                raise DemoError("the broker did not start:\n" + log_path.read_text()[-2000:])
            time.sleep(0.1)
        ready = next(line for line in log_path.read_text().splitlines() if "ready in" in line)
        self.console.print("    " + ready.split(": ", 1)[-1])

    # ------------------------------------------------------------------ the clients

    def start_client(self, host: str, *args: str, account: bool = False) -> dict[str, Any]:
        out, err = self.tmp / f"{host}.out", self.tmp / f"{host}.err"
        extra = ["--auth", "digest-md5", "--user", "demo"] if account else []
        with out.open("w") as o, err.open("w") as e:
            proc = self.lab.popen(
                host,
                self.exe,
                "client",
                self.lab.addr.broker_v4,
                "--up",
                "--json",
                "--keepalive",
                str(self.keepalive),
                *extra,
                *args,
                stdout=o,
                stderr=e,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TUNNELBROKER_PASSWORD": _PASSWORD},
            )
        self.clients[host] = (proc, out, err)
        deadline = time.monotonic() + 30
        while not any(line.startswith("{") for line in out.read_text().splitlines()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the client in {host} did not come up:\n{err.read_text()[-2000:]}")
            time.sleep(0.1)
        first = next(line for line in out.read_text().splitlines() if line.startswith("{"))
        n: dict[str, Any] = json.loads(first)
        table = Table(show_header=False, box=None, padding=(0, 2))
        for key in ("tunnel_type", "client_ipv6", "server_ipv4", "keepalive_interval", "prefix"):
            if n.get(key) is not None:
                table.add_row(key.replace("_", " "), str(n[key]))
        self.console.print(table)
        return n

    def ping(self, host: str) -> None:
        target = self.lab.addr.inet6_v6
        res = self.lab.run(
            host, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "2", target, check=False, timeout=20
        )
        rtts = re.findall(r"time=([\d.]+) ms", res.stdout)
        if res.returncode != 0 or not rtts:
            raise DemoError(f"ping from {host} to {target} failed:\n{res.stdout}{res.stderr}")
        self.console.print(
            f"    [green]ping {target}: {len(rtts)} replies[/], rtt {', '.join(rtts)} ms"
        )

    def transfer(self, host: str, port: int) -> None:
        target = self.lab.addr.inet6_v6
        sink = self.lab.popen(
            "inet6",
            sys.executable,
            "-c",
            SINK,
            target,
            str(port),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "listening":
            raise DemoError("the TCP sink on the IPv6 host did not start")
        sent = self.lab.run(host, sys.executable, "-c", SOURCE, target, str(port), timeout=60)
        digest, seconds = sent.stdout.split()
        received, _ = sink.communicate(timeout=30)
        if received.strip() != digest:
            raise DemoError(f"the TCP transfer from {host} arrived damaged")
        self.console.print(
            f"    [green]1 MiB over TCP to {target}: SHA-256 matches[/] "
            f"({8 / max(float(seconds), 1e-6):.0f} Mbit/s)"
        )

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for proc, _out, _err in self.clients.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(20)
            except subprocess.TimeoutExpired:
                self.broker.kill()
        try:
            self.lab.close()
        finally:
            subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


@click.command()
@click.option("--keep", is_flag=True, help="Stay up until Ctrl-C, to look around in the lab.")
@click.option("--no-transfer", is_flag=True, help="Skip the TCP transfers.")
@click.option(
    "--keepalive",
    type=click.IntRange(1, 120),
    default=5,
    show_default=True,
    help="Keepalive interval the clients ask for, seconds.",
)
def demo(keep: bool, no_transfer: bool, keepalive: int) -> None:
    """Show the whole broker working on this machine, in network namespaces (needs root)."""
    console = Console()
    if os.geteuid() != 0:
        raise click.ClickException("the demo needs root: it builds network namespaces")
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        raise click.ClickException(f"network namespaces are not available here: {e}") from e
    d = Demo(console, keepalive)
    try:
        d.start_lab()
        d.start_broker()
        d.step("Client with a public IPv4 address asks for v6anyv4 (account 'demo', DIGEST-MD5)")
        d.start_client("cpub", "--type", "v6anyv4", account=True)
        d.ping("cpub")
        d.step("Client behind the NAT asks for v6anyv4, anonymously")
        d.start_client("cnat", "--type", "v6anyv4", "--transport", "udp")
        d.ping("cnat")
        if not no_transfer:
            d.step("A TCP transfer from each client to the IPv6 host")
            d.transfer("cpub", 5001)
            d.transfer("cnat", 5002)
        console.print(
            "[bold green]Both clients reach the IPv6 internet through the broker:[/] 6in4 from "
            "the public host, IPv6 in UDP from behind the NAT."
        )
        if keep:
            console.print(
                f"Look around: ip netns exec {d.lab.ns('cnat')} ip -6 route; "
                f"ip netns exec {d.lab.ns('broker')} curl -s 127.0.0.1:8080/metrics. "
                "Ctrl-C to finish."
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("interrupted")
    except (DemoError, LabError, OSError, subprocess.SubprocessError) as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        d.step("Removing the lab")
        d.close()
        raise click.exceptions.Exit(1) from e
    d.step("Removing the lab: clients, broker, namespaces")
    d.close()
    console.print("done: nothing is left behind")
