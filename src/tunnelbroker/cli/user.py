"""``tunnelbroker user``: manage accounts (add, list, del, passwd, disable, enable).

Every command opens the configured store, migrates it if needed, and acts. Run it as the user
the broker runs as: the database file is created readable by its owner only. Errors print one
``error: ...`` line to stderr and exit 1 (2 for an unusable configuration).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import NoReturn, ParamSpec, TypeVar

import click

from tunnelbroker.broker.users import (
    InvalidPassword,
    InvalidUsername,
    UserService,
    validate_password,
    validate_username,
)
from tunnelbroker.config import ConfigError, load_config
from tunnelbroker.store import Store, StoreError

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def _config_options(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """``--config`` and ``--data-dir``, as ``tunnelbroker serve`` has them."""
    f = click.option("--data-dir", help="Override data_dir from the configuration.")(f)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=lambda: os.environ.get("TUNNELBROKER_CONFIG"),
        help="TOML configuration file (default: $TUNNELBROKER_CONFIG, else built-in defaults).",
    )(f)


def _errors(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn the expected failures into ``error: ...`` and an exit code, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except (InvalidUsername, InvalidPassword, StoreError) as e:
            _fail(str(e))

    return wrapper


@contextmanager
def _users(config_path: str | None, data_dir: str | None) -> Iterator[UserService]:
    overrides: dict[str, object] = {"data_dir": data_dir} if data_dir else {}
    config = load_config(config_path, overrides)
    store = Store(config.database_url)
    try:
        store.migrate()
        yield UserService(store, config.broker.realm)
    finally:
        store.close()


def _read_password(from_stdin: bool) -> str:
    if not from_stdin:
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    line = sys.stdin.readline()
    if not line:
        _fail("no password on standard input")
    return line.removesuffix("\n").removesuffix("\r")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


_password_stdin = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)


@click.group()
def user() -> None:
    """Manage accounts (used by TSP PLAIN and DIGEST-MD5 authentication)."""


@user.command()
@click.argument("name")
@_password_stdin
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
@_config_options
@_errors
def add(
    name: str, password_stdin: bool, admin: bool, config_path: str | None, data_dir: str | None
) -> None:
    """Add a user called NAME.

    NAME is 1-64 characters of A-Z a-z 0-9 . _ - and the password 8-1024 characters.
    """
    validate_username(name)
    password = _read_password(password_stdin)
    validate_password(password)
    with _users(config_path, data_dir) as users:
        users.add(name, password, is_admin=admin)
    click.echo(f"added user {name}{' (admin)' if admin else ''}")


@user.command("list")
@_config_options
@_errors
def list_(config_path: str | None, data_dir: str | None) -> None:
    """List users, with their live tunnels."""
    from rich.console import Console
    from rich.table import Table

    with _users(config_path, data_dir) as users:
        records = users.list()
        counts = users.store.count_live_tunnels_by_user()
        realm = users.realm
    if not records:
        click.echo("no users")
        return
    table = Table("name", "admin", "disabled", "created (UTC)", "tunnels", "digest-md5")
    for u in records:
        table.add_row(
            u.name,
            "yes" if u.is_admin else "",
            "yes" if u.disabled else "",
            _when(u.created_at),
            str(counts.get(u.id, 0)),
            "ok" if u.realm == realm else "stale: set the password again",
        )
    Console().print(table)


@user.command("del")
@click.argument("name")
@_config_options
@_errors
def delete(name: str, config_path: str | None, data_dir: str | None) -> None:
    """Delete user NAME, with their tunnels and addresses."""
    with _users(config_path, data_dir) as users:
        if not users.delete(name):
            _fail(f"no such user: {name}")
    click.echo(f"deleted user {name}")


@user.command()
@click.argument("name")
@_password_stdin
@_config_options
@_errors
def passwd(name: str, password_stdin: bool, config_path: str | None, data_dir: str | None) -> None:
    """Set the password of user NAME."""
    with _users(config_path, data_dir) as users:
        if users.get(name) is None:
            _fail(f"no such user: {name}")
        password = _read_password(password_stdin)
        validate_password(password)
        if not users.set_password(name, password):
            _fail(f"no such user: {name}")
    click.echo(f"password of {name} changed")


def _set_disabled(name: str, disabled: bool, config_path: str | None, data_dir: str | None) -> None:
    with _users(config_path, data_dir) as users:
        if not users.set_disabled(name, disabled):
            _fail(f"no such user: {name}")
    click.echo(f"{'disabled' if disabled else 'enabled'} user {name}")


@user.command()
@click.argument("name")
@_config_options
@_errors
def disable(name: str, config_path: str | None, data_dir: str | None) -> None:
    """Disable user NAME: they can no longer authenticate."""
    _set_disabled(name, True, config_path, data_dir)


@user.command()
@click.argument("name")
@_config_options
@_errors
def enable(name: str, config_path: str | None, data_dir: str | None) -> None:
    """Enable user NAME again."""
    _set_disabled(name, False, config_path, data_dir)
