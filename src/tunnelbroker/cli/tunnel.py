"""``tunnelbroker tunnel``: manage static 6in4, heartbeat and AYIYA tunnels offline.

These are the tunnels TIC hands to AICCU-style clients (and the web makes later). The broker
keeps its state in memory, so these commands act only while the daemon is stopped: they take
the store's owner lock (``store/owner.py``) and say so when a broker holds it. Errors print
one ``error: ...`` line to stderr and exit 1 (2 for an unusable configuration).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import ParamSpec, TypeVar

import click

from tunnelbroker.broker.model import MANAGED_KINDS, BrokerError, ManagedRequest
from tunnelbroker.broker.persistence import Persister
from tunnelbroker.broker.service import Broker
from tunnelbroker.cli.user import _config_options, _fail
from tunnelbroker.config import Config, ConfigError, load_config
from tunnelbroker.store import Store, StoreError, TunnelRecord
from tunnelbroker.store.owner import StoreLocked, owner_lock

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _errors(f: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except StoreLocked as e:
            _fail(f"{e}; stop the broker first (these commands work on a stopped broker)")
        except (BrokerError, StoreError) as e:
            _fail(str(e))

    return wrapper


@contextmanager
def _broker(config_path: str | None, data_dir: str | None) -> Iterator[tuple[Broker, Store]]:
    """The broker's state, loaded from the store, written back on the way out."""
    overrides: dict[str, object] = {"data_dir": data_dir} if data_dir else {}
    config: Config = load_config(config_path, overrides)
    store = Store(config.database_url)
    try:
        with owner_lock(config.database_url, "tunnelbroker tunnel"):
            store.migrate()
            persister = Persister(store)
            broker = Broker(config, persister)
            broker.load(
                store.load_tunnels(), store.load_allocations(), time.time(), store.highest_ids()
            )
            persister.start()
            try:
                yield broker, store
            finally:
                ok = persister.flush()
                persister.stop()
                if not ok:
                    raise StoreError("could not write the changes to the store")
    finally:
        store.close()


def _show(t: TunnelRecord, owner: str) -> list[tuple[str, str]]:
    rows = [
        ("id", f"T{t.id}"),
        ("user", owner),
        ("type", MANAGED_KINDS.get(t.kind, t.type)),
        ("name", t.name or ""),
        ("state", f"user {t.user_state}, admin {t.admin_state}"),
        ("server IPv4", t.server_ipv4 or ""),
        ("client IPv4", t.client_ipv4 or ("learnt from its packets" if t.kind != "static" else "")),
        ("link", t.link_prefix),
        ("routed /64", t.routed_prefix or ""),
        ("prefix", t.delegated_prefix or ""),
        ("MTU", str(t.mtu)),
        ("rDNS servers", ", ".join(t.dns_servers)),
        ("secret", t.secret or ""),
        ("update key", t.update_key or ""),
        ("last error", t.last_error or ""),
    ]
    return [(k, v) for k, v in rows if v]


@click.group()
def tunnel() -> None:
    """Manage static 6in4, heartbeat and AYIYA tunnels (while the broker is stopped)."""


@tunnel.command()
@click.argument("user")
@click.option(
    "--type",
    "kind",
    type=click.Choice(sorted(MANAGED_KINDS)),
    required=True,
    help="static: 6in4 to a fixed IPv4; heartbeat: 6in4 whose endpoint a heartbeat sets; "
    "ayiya: IPv6 in UDP, through NATs.",
)
@click.option("--endpoint", metavar="IPV4", help="The client's public IPv4 (static only).")
@click.option("--mtu", type=click.IntRange(1280, 1480), help="1280-1480 (default 1280).")
@click.option("--prefix-length", type=int, help="Also delegate a prefix of this length (e.g. 48).")
@click.option("--no-routed-64", is_flag=True, help="Do not route a /64 besides the link.")
@click.option("--name", help="A label for the tunnel.")
@click.option("--json", "as_json", is_flag=True, help="Print the tunnel as JSON.")
@_config_options
@_errors
def add(
    user: str,
    kind: str,
    endpoint: str | None,
    mtu: int | None,
    prefix_length: int | None,
    no_routed_64: bool,
    name: str | None,
    as_json: bool,
    config_path: str | None,
    data_dir: str | None,
) -> None:
    """Create a tunnel for USER and print it (with its secret and update key)."""
    with _broker(config_path, data_dir) as (broker, store):
        owner = store.get_user(user)
        if owner is None:
            _fail(f"no user {user!r}")
        req = ManagedRequest(
            kind,
            client_ipv4=endpoint,
            mtu=mtu,
            routed_64=not no_routed_64,
            prefix_length=prefix_length,
            name=name,
        )
        t = broker.create_tunnel(owner.id, req, time.time())
    _print(t, user, as_json)


@tunnel.command("list")
@click.option("--user", help="Only this user's tunnels.")
@_config_options
@_errors
def list_(user: str | None, config_path: str | None, data_dir: str | None) -> None:
    """List live tunnels (TSP ones too)."""
    from rich.console import Console
    from rich.table import Table

    with _broker(config_path, data_dir) as (broker, store):
        names = {u.id: u.name for u in store.list_users()}
        if user is not None:
            owner = store.get_user(user)
            if owner is None:
                _fail(f"no user {user!r}")
            records = broker.user_tunnels(owner.id)
        else:
            records = sorted(broker.tunnels.values(), key=lambda t: t.id or 0)
    if not records:
        click.echo("no tunnels")
        return
    table = Table("id", "user", "type", "client", "link", "routed", "state")
    for t in records:
        table.add_row(
            f"T{t.id}",
            names.get(t.user_id or -1, "(anonymous)"),
            MANAGED_KINDS.get(t.kind, t.type),
            t.client_ipv4 or t.client_ipv6 or "-",
            t.link_prefix,
            t.routed_prefix or t.delegated_prefix or "-",
            "enabled"
            if t.user_state == t.admin_state == "enabled"
            else f"user {t.user_state}, admin {t.admin_state}",
        )
    console = Console()
    if not console.is_terminal:  # a pipe: never cut addresses to 80 columns
        console = Console(width=200)
    console.print(table)


def _tunnel_id(value: str) -> int:
    digits = value.removeprefix("T").removeprefix("t")
    if not digits.isdigit():
        raise click.BadParameter(f"{value!r} is not a tunnel id (T123 or 123)")
    return int(digits)


_id_arg = click.argument("tunnel_id", metavar="ID", callback=lambda _c, _p, v: _tunnel_id(v))


@tunnel.command()
@_id_arg
@click.option("--json", "as_json", is_flag=True, help="Print the tunnel as JSON.")
@_config_options
@_errors
def show(tunnel_id: int, as_json: bool, config_path: str | None, data_dir: str | None) -> None:
    """Show one tunnel, secrets included."""
    with _broker(config_path, data_dir) as (broker, store):
        t = broker.tunnels.get(tunnel_id)
        if t is None:
            _fail(f"no live tunnel T{tunnel_id}")
        names = {u.id: u.name for u in store.list_users()}
    _print(t, names.get(t.user_id or -1, "(anonymous)"), as_json)


@tunnel.command("set")
@_id_arg
@click.option("--endpoint", metavar="IPV4", help="New client IPv4 (static and heartbeat).")
@click.option("--mtu", type=click.IntRange(1280, 1480))
@click.option("--name")
@click.option("--dns-server", "dns_servers", multiple=True, help="rDNS nameserver (up to 5).")
@click.option("--enable/--disable", "enabled", default=None, help="The operator's switch.")
@click.option("--new-update-key", is_flag=True, help="Replace the update key.")
@_config_options
@_errors
def set_(
    tunnel_id: int,
    endpoint: str | None,
    mtu: int | None,
    name: str | None,
    dns_servers: tuple[str, ...],
    enabled: bool | None,
    new_update_key: bool,
    config_path: str | None,
    data_dir: str | None,
) -> None:
    """Change a static, heartbeat or AYIYA tunnel."""
    now = time.time()
    with _broker(config_path, data_dir) as (broker, store):
        if endpoint is not None:
            broker.update_endpoint(tunnel_id, endpoint, None, now)
        t = broker.modify_tunnel(
            tunnel_id,
            now,
            mtu=mtu,
            name=name,
            dns_servers=dns_servers or None,
            admin_state=None if enabled is None else ("enabled" if enabled else "disabled"),
            new_update_key=new_update_key,
        )
        names = {u.id: u.name for u in store.list_users()}
    _print(t, names.get(t.user_id or -1, ""), False)


@tunnel.command("del")
@_id_arg
@_config_options
@_errors
def delete(tunnel_id: int, config_path: str | None, data_dir: str | None) -> None:
    """End a tunnel and give its addresses back."""
    with _broker(config_path, data_dir) as (broker, _store):
        broker.delete_tunnel(tunnel_id, time.time(), "deleted by the operator")
    click.echo(f"deleted tunnel T{tunnel_id}")


def _print(t: TunnelRecord, owner: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**asdict(t), "user": owner}, sort_keys=True))
        return
    rows = _show(t, owner)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
