"""``tunnelbroker demo``: run as a newcomer would, and check nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnelbroker.lab.netns import list_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

TUNNELBROKER = Path(sys.executable).with_name("tunnelbroker")


def _demo_namespaces() -> set[str]:
    """The demo's own namespaces; other runs' labs may come and go meanwhile."""
    return {n for n in list_namespaces() if n.startswith("tbdemo")}


def test_the_demo_shows_both_clients_reaching_the_ipv6_host(netns_ok: None) -> None:
    before = _demo_namespaces()
    res = subprocess.run(
        [str(TUNNELBROKER), "demo"],
        capture_output=True,
        text=True,
        timeout=170,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120"},
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "v6v4" in out and "v6udpv4" in out  # public host: 6in4; behind the NAT: UDP
    assert out.count("3 replies") == 2 and out.count("SHA-256 matches") == 2
    assert "nothing is left behind" in out
    assert _demo_namespaces() == before
    assert "tbc0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_the_demo_needs_root() -> None:
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(TUNNELBROKER), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "setpriv" in res.stderr and res.returncode == 127:
        pytest.skip("setpriv is not available")
    assert res.returncode == 1 and "needs root" in res.stderr
