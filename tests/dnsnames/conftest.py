"""A real BIND (Debian's named) on loopback, with two zones open to TSIG-signed updates."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMED = shutil.which("named") or "/usr/sbin/named"
ZONES = ("users.example.net", "8.b.d.0.1.0.0.2.ip6.arpa")


@dataclass
class Bind:
    port: int
    key_name: str
    secret: str
    zones: tuple[str, ...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Bind]:
    if not os.path.exists(NAMED):
        pytest.skip("BIND (named) is not installed; scripts/install adds bind9")
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    port = _free_port()
    zones = ""
    for z in ZONES:
        (tmp_path / f"{z}.zone").write_text(
            f"$TTL 300\n@ IN SOA ns.{ZONES[0]}. hostmaster.{ZONES[0]}. 1 3600 600 86400 300\n"
            f"@ IN NS ns.{ZONES[0]}.\n" + ("ns IN A 127.0.0.1\n" if z == ZONES[0] else "")
            # named refuses a zone whose in-zone nameserver has no address.
        )
        zones += (
            f'zone "{z}" {{ type primary; file "{tmp_path}/{z}.zone"; '
            f'allow-update {{ key "tb-key"; }}; }};\n'
        )
    (tmp_path / "named.conf").write_text(
        f'options {{ directory "{tmp_path}"; pid-file "{tmp_path}/named.pid"; '
        f'session-keyfile "{tmp_path}/session.key"; managed-keys-directory "{tmp_path}"; '
        f"listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; "
        "recursion no; dnssec-validation no; notify no; };\n"
        "controls { };\n"
        f'key "tb-key" {{ algorithm hmac-sha256; secret "{secret}"; }};\n' + zones
    )
    proc = subprocess.Popen(
        [NAMED, "-g", "-c", str(tmp_path / "named.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"named exited: {out[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("named did not start listening within 20 s")
        yield Bind(port, "tb-key", secret, ZONES)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
