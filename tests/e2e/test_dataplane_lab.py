"""End to end in the network-namespace lab: the broker's userspace data plane carries IPv6."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnelbroker.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

CLIENT = Path(__file__).with_name("udp_ping_client.py")
TUNNELBROKER = Path(sys.executable).with_name("tunnelbroker")


@pytest.fixture
def broker_in_lab(lab: Lab, tmp_path: Path) -> Iterator[Lab]:
    """``tunnelbroker serve`` in the lab's broker namespace, with the userspace data plane."""
    config = tmp_path / "broker.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
[broker]
server_ipv4 = "{lab.addr.broker_v4}"
server_ipv6 = "{lab.addr.broker_client_v6}"
[tsp]
listen = ["{lab.addr.broker_v4}", "{lab.addr.broker_client_v6}"]
[tunnelserver]
backend = "userspace"
[logging]
level = "DEBUG"
"""
    )
    log = (tmp_path / "broker.log").open("w")
    lab.popen("broker", str(TUNNELBROKER), "serve", "--config", str(config), stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while "ready in" not in (tmp_path / "broker.log").read_text():
        if time.monotonic() > deadline:
            pytest.fail("broker did not start:\n" + (tmp_path / "broker.log").read_text())
        time.sleep(0.1)
    try:
        yield lab
    finally:
        log.close()
        print((tmp_path / "broker.log").read_text()[-4000:])


def run_client(lab: Lab, host: str, tunnel_type: str) -> dict[str, object]:
    out = lab.run(
        host,
        sys.executable,
        str(CLIENT),
        lab.addr.broker_v4,
        lab.addr.inet6_v6,
        tunnel_type,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("host", "asked"), [("cpub", "v6udpv4"), ("cnat", "v6anyv4")])
def test_v6udpv4_ping_through_the_tunnel(broker_in_lab: Lab, host: str, asked: str) -> None:
    # Behind the NAT, v6anyv4 makes the broker's NAT discovery choose v6udpv4 by itself.
    result = run_client(broker_in_lab, host, asked)
    assert result["type"] == "v6udpv4"
    assert result["keepalive"] is True, result  # the keepalive address answers
    assert result["internet"] is True, result  # the IPv6 host answers through the tunnel
    assert result["spoofed"] is False, result  # another client's source is dropped
