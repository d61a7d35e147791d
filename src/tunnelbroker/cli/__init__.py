"""The ``tunnelbroker`` command."""

from __future__ import annotations

import click

from tunnelbroker import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunnelbroker")
def cli() -> None:
    """An IPv6 tunnel broker: TSP, SixXS-compatible protocols and a tunnel server."""


def _register() -> None:
    # Subcommands live in their own modules, one per concern.
    from tunnelbroker.cli import client, demo, serve, tunnel, user

    cli.add_command(serve.serve)
    cli.add_command(user.user)
    cli.add_command(tunnel.tunnel)
    cli.add_command(client.client)
    cli.add_command(demo.demo)


def main() -> None:
    _register()
    cli()
