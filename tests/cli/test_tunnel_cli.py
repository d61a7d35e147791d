"""``tunnelbroker tunnel``: managed tunnels from the command line, on a stopped broker."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tunnelbroker.broker.users import UserService
from tunnelbroker.cli.tunnel import tunnel
from tunnelbroker.client.tic import fetch
from tunnelbroker.config import load_config
from tunnelbroker.daemon import running
from tunnelbroker.store import Store

PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tunnelbroker.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n\n[broker]\nrealm = "r"\n\n'
        '[limits]\nstatic_endpoint_networks = ["198.51.100.0/24"]\n'
    )
    (tmp_path / "data").mkdir()
    monkeypatch.delenv("TUNNELBROKER_CONFIG", raising=False)
    s = Store(f"sqlite:///{tmp_path / 'data' / 'tunnelbroker.db'}")
    s.migrate()
    UserService(s, "r").add("alice", PASSWORD)
    s.close()
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(tunnel, [*args, "--config", str(config)])


def test_add_show_set_list_delete(config: Path) -> None:
    r = run(config, "add", "alice", "--type", "static", "--endpoint", "198.51.100.20", "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert t["kind"] == "static" and t["client_ipv4"] == "198.51.100.20" and t["user"] == "alice"
    assert ipaddress.IPv6Network(t["routed_prefix"]).prefixlen == 64
    r = run(config, "add", "alice", "--type", "ayiya", "--prefix-length", "48", "--name", "home")
    assert r.exit_code == 0, r.output
    assert re.search(r"^type +ayiya$", r.output, re.M) and "secret" in r.output
    r = run(config, "show", f"T{t['id']}")
    assert r.exit_code == 0 and "198.51.100.20" in r.output and "update key" in r.output
    r = run(
        config, "set", str(t["id"]), "--mtu", "1480", "--disable", "--endpoint", "198.51.100.21"
    )
    assert r.exit_code == 0, r.output
    assert re.search(r"^MTU +1480$", r.output, re.M) and "admin disabled" in r.output
    r = run(config, "list", "--user", "alice")
    assert r.exit_code == 0 and "6in4-static" in r.output and "ayiya" in r.output
    assert "198.51.100.21" in r.output
    assert run(config, "del", f"T{t['id']}").exit_code == 0
    r = run(config, "list")
    assert "6in4-static" not in r.output and "ayiya" in r.output


@pytest.mark.parametrize(
    ("kind", "tic_type"), [("heartbeat", "6in4-heartbeat"), ("ayiya", "ayiya")]
)
async def test_dynamic_tunnels_have_their_own_secret(
    config: Path, kind: str, tic_type: str
) -> None:
    """A heartbeat or AYIYA tunnel gets a secret of its own (heartbeat MD5, AYIYA SHA-1), not
    the account password; ``show`` prints it and TIC hands the same one to the client."""
    r = run(config, "add", "alice", "--type", kind, "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    secret = t["secret"]
    assert t["kind"] == kind and t["user"] == "alice" and t["client_ipv4"] is None
    assert secret and secret != PASSWORD and PASSWORD not in secret
    r = run(config, "add", "alice", "--type", kind, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["secret"] not in (secret, "", None)  # one per tunnel
    r = run(config, "show", f"T{t['id']}")
    assert r.exit_code == 0, r.output
    assert re.search(rf"^type +{re.escape(tic_type)}$", r.output, re.M)
    assert re.search(rf"^secret +{re.escape(secret)}$", r.output, re.M)
    assert re.search(r"^client IPv4 +learnt from its packets$", r.output, re.M)
    assert PASSWORD not in r.output
    # The broker, started on the same store, tells the client that secret over TIC.
    cfg = load_config(
        config,
        {
            "tsp": {"enabled": False},
            "tunnelserver": {"backend": "none"},
            "web": {"enabled": False},
            "sixxs": {"listen": ["127.0.0.1"], "tic_port": 0, "heartbeat_port": 0},
        },
    )
    async with running(cfg) as d:
        result = await fetch(
            "127.0.0.1", "alice", PASSWORD, port=d.tic_port, tunnel_id=f"T{t['id']}", timeout=10
        )
    assert result.tunnel is not None
    assert (result.tunnel.type, result.tunnel.password) == (tic_type, secret)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bob", "--type", "ayiya"], "no user 'bob'"),
        (["add", "alice", "--type", "static", "--endpoint", "10.0.0.1"], "private (RFC 1918)"),
        (["add", "alice", "--type", "static"], "needs the client's IPv4"),
        (["show", "T77"], "no live tunnel T77"),
        (["del", "77"], "no such tunnel"),
        (["set", "77", "--mtu", "1400"], "no such tunnel"),
    ],
)
def test_errors_are_one_line(config: Path, args: list[str], message: str) -> None:
    r = run(config, *args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_refuses_while_a_broker_owns_the_store(config: Path) -> None:
    url = f"sqlite:///{config.parent / 'data' / 'tunnelbroker.db'}"
    hold = (
        "import sys\nfrom tunnelbroker.store.owner import owner_lock\n"
        "with owner_lock(sys.argv[1], 'the broker'):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", hold, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as p:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "held"
        r = run(config, "add", "alice", "--type", "ayiya")
        p.stdin.close()
        p.wait(10)
    assert (
        r.exit_code == 1 and "stop the broker first" in r.output and "the broker, pid" in r.output
    )
    assert run(config, "list").output.strip() == "no tunnels"
