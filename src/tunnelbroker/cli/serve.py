"""``tunnelbroker serve``: run the broker."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

from tunnelbroker.config import ConfigError, load_config
from tunnelbroker.store import StoreError


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=lambda: os.environ.get("TUNNELBROKER_CONFIG"),
    help="TOML configuration file (default: built-in defaults).",
)
@click.option("--data-dir", help="Override data_dir from the configuration.")
def serve(config_path: str | None, data_dir: str | None) -> None:
    """Run the broker: TSP listeners, tunnel state and housekeeping."""
    from tunnelbroker.daemon import serve as run

    overrides: dict[str, object] = {"data_dir": data_dir} if data_dir else {}
    try:
        config = load_config(config_path, overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    logging.basicConfig(
        level=config.logging.level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pyroute2 logs every netlink message at DEBUG: far too much even for debugging us.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if config.logging.level != "DEBUG":
        # Alembic announces every plugin it loads at INFO; the migration itself stays visible.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        asyncio.run(run(config))
    except (OSError, StoreError) as e:
        raise click.ClickException(f"cannot start: {e}") from e
