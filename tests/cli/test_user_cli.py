"""``tunnelbroker user``, through click's test runner against a temporary data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tunnelbroker.broker.users import UserService, digest_ha1_hex
from tunnelbroker.cli.user import user
from tunnelbroker.store import Changes, Store, TunnelRecord

PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tunnelbroker.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[broker]\nrealm = "testrealm"\n')
    monkeypatch.delenv("TUNNELBROKER_CONFIG", raising=False)
    return path


@pytest.fixture
def store(config: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{config.parent / 'data' / 'tunnelbroker.db'}")
    s.migrate()
    yield s
    s.close()


def run(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(user, [*args, "--config", str(config)], input=input)


def failed(result: Result, code: int, message: str) -> bool:
    """Exited with ``code`` and one ``error: ...`` line, and no traceback."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return True


def test_add_from_stdin(config: Path, store: Store) -> None:
    result = run(config, "add", "alice", "--password-stdin", "--admin", input=PASSWORD + "\r\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "added user alice (admin)\n"
    service = UserService(store, "testrealm")
    u = service.authenticate_plain("alice", PASSWORD)  # the line ending is not the password's
    assert u is not None and u.is_admin
    assert u.digest_ha1 == digest_ha1_hex("alice", "testrealm", PASSWORD)


def test_add_prompts_twice(config: Path, store: Store) -> None:
    result = run(
        config, "add", "bob", input=f"{PASSWORD}\nmistyped password\n{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert PASSWORD not in result.output  # hidden input
    assert UserService(store, "testrealm").authenticate_plain("bob", PASSWORD) is not None


def test_config_from_the_environment(
    config: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNELBROKER_CONFIG", str(config))
    result = CliRunner().invoke(user, ["add", "alice", "--password-stdin"], input=PASSWORD)
    assert result.exit_code == 0, result.output
    assert store.get_user("alice") is not None


def test_data_dir_override(config: Path, tmp_path: Path) -> None:
    result = run(
        config,
        "add",
        "alice",
        "--password-stdin",
        "--data-dir",
        str(tmp_path / "other"),
        input=PASSWORD,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other" / "tunnelbroker.db").exists()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["add", "bad name", "--password-stdin"], PASSWORD, "may contain only"),
        (["add", "x" * 65, "--password-stdin"], PASSWORD, "longer than 64"),
        (["add", "alice", "--password-stdin"], "short\n", "shorter than 8"),
        (["add", "alice", "--password-stdin"], "", "no password on standard input"),
        (["del", "nobody"], None, "no such user: nobody"),
        (["passwd", "nobody", "--password-stdin"], PASSWORD, "no such user: nobody"),
        (["disable", "nobody"], None, "no such user: nobody"),
        (["enable", "nobody"], None, "no such user: nobody"),
    ],
)
def test_errors_exit_1(config: Path, args: list[str], stdin: str | None, message: str) -> None:
    assert failed(run(config, *args, input=stdin), 1, message)


def test_duplicate_user(config: Path) -> None:
    assert run(config, "add", "alice", "--password-stdin", input=PASSWORD).exit_code == 0
    assert failed(
        run(config, "add", "alice", "--password-stdin", input=PASSWORD), 1, "already exists"
    )


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    assert failed(run(tmp_path / "missing.toml", "list"), 2, "cannot read")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tsp]\nport = 0.5\n")
    assert failed(run(bad, "list"), 2, "tsp.port")


def test_unusable_database_exits_1(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "file"}"\n')
    assert failed(run(config, "list"), 1, "cannot create database")


def test_list(config: Path, store: Store) -> None:
    result = run(config, "list")
    assert result.exit_code == 0 and result.stdout == "no users\n"
    service = UserService(store, "testrealm")
    alice = service.add("alice", PASSWORD, is_admin=True, now=1_700_000_000.0)
    service.add("bob", PASSWORD)
    UserService(store, "oldrealm").add("carol", PASSWORD)
    store.apply(
        Changes(
            tunnels=[
                TunnelRecord(
                    None,
                    alice.id,
                    "tsp",
                    "v6v4",
                    "active",
                    "udp",
                    "198.51.100.1",
                    None,
                    None,
                    "192.0.2.1",
                    None,
                    "2001:db8::/64",
                    None,
                    [],
                    30,
                    1280,
                    1.0,
                    1.0,
                    2.0,
                )
            ]
        )
    )
    service.set_disabled("bob", True)
    result = run(config, "list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if "│" in line}
    assert "yes" in lines["alice"] and "2023-11-14 22:13" in lines["alice"]
    assert lines["alice"].split("│")[5].strip() == "1"
    assert lines["bob"].split("│")[3].strip() == "yes"
    assert "stale" in lines["carol"] and "ok" in lines["alice"]


def test_del(config: Path, store: Store) -> None:
    UserService(store, "testrealm").add("alice", PASSWORD)
    result = run(config, "del", "alice")
    assert result.exit_code == 0 and result.stdout == "deleted user alice\n"
    assert store.get_user("alice") is None


def test_passwd(config: Path, store: Store) -> None:
    service = UserService(store, "testrealm")
    service.add("alice", PASSWORD)
    result = run(config, "passwd", "alice", "--password-stdin", input="a new password\n")
    assert result.exit_code == 0, result.output
    assert service.authenticate_plain("alice", "a new password") is not None
    assert service.authenticate_plain("alice", PASSWORD) is None
    assert failed(run(config, "passwd", "alice", "--password-stdin", input="short"), 1, "shorter")


def test_disable_and_enable(config: Path, store: Store) -> None:
    service = UserService(store, "testrealm")
    service.add("alice", PASSWORD)
    assert run(config, "disable", "alice").stdout == "disabled user alice\n"
    assert service.authenticate_plain("alice", PASSWORD) is None
    assert run(config, "enable", "alice").stdout == "enabled user alice\n"
    assert service.authenticate_plain("alice", PASSWORD) is not None
