"""``tunnelbroker client`` through click's test runner, against a loopback broker.

The command runs its own event loop (``asyncio.run``), so it is invoked in a worker thread
while the broker keeps running on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.broker.users import UserService
from tunnelbroker.cli.client import client, parse_server
from tunnelbroker.config import load_config
from tunnelbroker.daemon import Daemon, running

PASSWORD = "correct horse battery"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "tsp": {"listen": ["127.0.0.1", "::1"], "port": 0},
            "tunnelserver": {"backend": "none"},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
            "web": {"port": 0},
        },
    )
    async with running(config) as daemon:
        assert daemon.store is not None
        UserService(daemon.store, config.broker.realm).add("alice", PASSWORD)
        yield daemon


async def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner(env={"TUNNELBROKER_PASSWORD": "", **(env or {})})
    return await asyncio.wait_for(
        asyncio.to_thread(runner.invoke, client, [*args, "--timeout", "10"], input=input), 30
    )


def server(daemon: Daemon, host: str = "127.0.0.1") -> str:
    return f"[{host}]:{daemon.tsp_port}" if ":" in host else f"{host}:{daemon.tsp_port}"


async def test_json_output(broker: Daemon) -> None:
    result = await run(server(broker), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["transport"] == "udp" and data["tunnel_type"] == "v6v4"
    assert data["requested_type"] == "v6anyv4" and data["mechanism"] == "ANONYMOUS"
    assert data["client_ipv4"] == "127.0.0.1" and data["port"] == broker.tsp_port
    assert data["keepalive_interval"] == 30 and data["dns_servers"]
    assert data["prefix"] is None


async def test_json_with_user_router_and_options(broker: Daemon) -> None:
    result = await run(
        server(broker),
        "--json",
        "--user",
        "alice",
        "--password-stdin",
        "--transport",
        "tcp",
        "--prefix-length",
        "48",
        "--dns-server",
        "ns1.example.net",
        "--dns-server",
        "ns2.example.net",
        "--keepalive",
        "10",
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mechanism"] == "DIGEST-MD5" and data["transport"] == "tcp"
    assert data["prefix_length"] == 48 and data["prefix"].startswith("2001:db8:c")
    assert data["delegation_servers"] == ["ns1.example.net", "ns2.example.net"]
    assert data["keepalive_interval"] == 10


async def test_password_from_the_environment_and_plain(broker: Daemon) -> None:
    result = await run(
        server(broker),
        "--json",
        "--user",
        "alice",
        "--auth",
        "plain",
        "--router",
        env={"TUNNELBROKER_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mechanism"] == "PLAIN" and data["prefix_length"] == 56


@pytest.mark.parametrize("kind", ["v6v4", "v6udpv4", "v4v6"])
async def test_types(broker: Daemon, kind: str) -> None:
    host = "::1" if kind == "v4v6" else "127.0.0.1"
    result = await run(server(broker, host), "--json", "--type", kind)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tunnel_type"] == kind


async def test_nat_discovery_through_client_ipv4(broker: Daemon) -> None:
    result = await run(server(broker), "--json", "--client-ipv4", "10.1.1.1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tunnel_type"] == "v6udpv4"


async def test_human_summary(broker: Daemon) -> None:
    result = await run(
        server(broker),
        "--router",
        "--user",
        "alice",
        input=PASSWORD + "\n",
        env={"TUNNELBROKER_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Tunnel negotiated" in out and "v6v4" in out and "DIGEST-MD5" in out
    assert "delegated prefix" in out and "/56" in out
    assert "not brought up" in out


async def test_wrong_password_is_an_error_with_code(broker: Daemon) -> None:
    result = await run(server(broker), "--user", "alice", "--password-stdin", input="nope\n")
    assert result.exit_code == 1
    assert result.stderr == "error: 127.0.0.1: 300 Authentication failed\n"
    assert result.stdout == ""


async def test_refusal_shows_the_code_and_text(broker: Daemon) -> None:
    result = await run(server(broker), "--transport", "tcp", "--client-ipv4", "10.1.1.1")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 127.0.0.1: 303 ")


async def test_unreachable_broker(broker: Daemon) -> None:
    result = await run("127.0.0.1:1", "--transport", "tcp")
    assert result.exit_code == 1 and result.stderr.startswith("error: 127.0.0.1: TCP")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--auth", "plain"],
        ["--auth", "anonymous", "--user", "alice"],
        ["--host", "--prefix-length", "48"],
        ["--type", "v6udpv4", "--transport", "tcp"],
        ["--client-ipv4", "nonsense"],
        ["--prefix-length", "65"],
        ["--user", "alice", "--password-stdin"],
    ],
)
async def test_usage_errors(broker: Daemon, args: list[str]) -> None:
    result = await run(server(broker), *args, input="")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


async def test_user_without_any_password_source() -> None:
    result = await run("127.0.0.1", "--user", "alice")
    assert result.exit_code == 2
    assert "TUNNELBROKER_PASSWORD" in result.stderr


def test_help_says_what_up_does() -> None:
    result = CliRunner().invoke(client, ["--help"])
    assert result.exit_code == 0
    assert "nothing is configured on this host" in result.stdout
    assert "--up" in result.stdout and "--password-stdin" in result.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("broker.example.net", ("broker.example.net", 3653)),
        ("broker.example.net:4000", ("broker.example.net", 4000)),
        ("192.0.2.1:3653", ("192.0.2.1", 3653)),
        ("[2001:db8::1]:3654", ("2001:db8::1", 3654)),
        ("[2001:db8::1]", ("2001:db8::1", 3653)),
        ("2001:db8::1", ("2001:db8::1", 3653)),
    ],
)
def test_parse_server(value: str, expected: tuple[str, int]) -> None:
    assert parse_server(value) == expected


@pytest.mark.parametrize("value", ["", ":3653", "host:0", "host:99999", "host:x", "[::1", "[::1]x"])
def test_parse_server_rejects(value: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_server(value)


# ---------------------------------------------------------------------- --tic


def tic(daemon: Daemon) -> str:
    return f"127.0.0.1:{daemon.tic_port}"


@pytest.fixture
def ayiya_tunnel(broker: Daemon) -> int:
    """An AYIYA tunnel of alice's, MTU 1400, for the --tic tests."""
    assert broker.store is not None and broker.broker is not None
    alice = UserService(broker.store, broker.config.broker.realm).get("alice")
    assert alice is not None
    t = broker.broker.create_tunnel(alice.id, ManagedRequest("ayiya", mtu=1400), time.time())
    assert t.id is not None
    return t.id


async def test_tic_require_tls_refused_by_the_server(broker: Daemon, ayiya_tunnel: int) -> None:
    # The daemon has no TLS certificate: it answers starttls with 400.
    env = {"TUNNELBROKER_PASSWORD": PASSWORD}
    result = await run(tic(broker), "--tic", "--user", "alice", "--require-tls", env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        "error: the server refused starttls and TLS is required: 400 "
    ), result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
    # --require-tls alone means TIC, and --list honours it too.
    listed = await run(tic(broker), "--user", "alice", "--require-tls", "--list", env=env)
    assert listed.exit_code == 1 and "TLS is required" in listed.stderr
    # Only --starttls: the same server is used in plaintext, as AICCU does.
    plain = await run(tic(broker), "--tic", "--user", "alice", "--starttls", "--json", env=env)
    assert plain.exit_code == 0, plain.output
    data = json.loads(plain.stdout)
    assert data["tunnel_type"] == "ayiya" and data["mtu"] == 1400
    assert data["link_prefix_length"] == 64


async def test_tic_summary_shows_mtu_and_prefix_length(broker: Daemon, ayiya_tunnel: int) -> None:
    env = {"TUNNELBROKER_PASSWORD": PASSWORD}
    result = await run(tic(broker), "--tic", "--user", "alice", env=env)
    assert result.exit_code == 0, result.output
    assert "TIC, MD5 challenge" in result.stdout and "1400" in result.stdout
    assert "::2/64" in result.stdout


def test_help_names_require_tls() -> None:
    result = CliRunner().invoke(client, ["--help"])
    assert "--require-tls" in result.stdout and "requiretls" in result.stdout
