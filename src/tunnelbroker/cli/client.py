"""``tunnelbroker client``: negotiate a tunnel with a TSP broker and show what it granted.

With ``--up`` it also brings the tunnel up on this host (:mod:`tunnelbroker.client.dataplane`,
or a kernel device: :mod:`tunnelbroker.client.kernel`, per ``--backend``) and keeps it up,
reconnecting as needed, until SIGINT or SIGTERM.

Errors print one ``error: ...`` line to stderr (with the TSP code and the server's text when
the broker refused) and exit 1; unusable arguments exit 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import click

from tunnelbroker.client.tic import TicClientError
from tunnelbroker.client.tsp import DEFAULT_PORT, Negotiated, TspClientError, negotiate

_PASSWORD_ENV = "TUNNELBROKER_PASSWORD"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def parse_server(value: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal.

    Raises:
        click.BadParameter: an empty host or a port outside 1..65535.
    """
    host, port = value.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            raise click.BadParameter(f"{value!r}: expected [address] or [address]:port")
        host, port = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host:
        raise click.BadParameter(f"{value!r}: no host")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r}: the port must be 1-65535")
    return host, int(port)


def _password(username: str | None, from_stdin: bool) -> str | None:
    if username is None:
        return None
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            _fail("--password-stdin: no password on standard input", 2)
        return line
    env = os.environ.get(_PASSWORD_ENV)
    if env:
        return env
    if sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True))
    _fail(f"a password is needed: use --password-stdin or set {_PASSWORD_ENV}", 2)


def _summary(n: Negotiated, up: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    via = f"{n.server} ({n.server_address}) port {n.port} over {n.transport.upper()}"
    table.add_row("broker", via)
    if n.redirects:
        table.add_row("redirected via", " -> ".join(n.redirects))
    session = "TIC, MD5 challenge" if n.version == "tic" else f"TSP {n.version}, {n.mechanism}"
    table.add_row("session", session)
    asked = f" (asked for {n.requested_type})" if n.requested_type != n.tunnel_type else ""
    table.add_row("tunnel type", n.tunnel_type + asked)
    table.add_row("server endpoint", f"{n.server_ipv4}  {n.server_ipv6}")
    client_ipv6 = n.client_ipv6
    if n.link_prefix_length is not None:
        client_ipv6 += f"/{n.link_prefix_length}"
    table.add_row("client endpoint", f"{n.client_ipv4}  {client_ipv6}")
    if n.client_ipv4 != n.local_address and n.tunnel_type != "v4v6":
        table.add_row("local address", n.local_address)
    if n.client_name:
        table.add_row("client name", n.client_name)
    if n.prefix is not None:
        table.add_row("delegated prefix", f"{n.prefix}/{n.prefix_length}")
    if n.mtu is not None:
        table.add_row("MTU", str(n.mtu))
    if n.keepalive_interval is not None:
        table.add_row("keepalive", f"every {n.keepalive_interval} s to {n.keepalive_address}")
    if n.lifetime is not None:
        table.add_row("lifetime", f"{n.lifetime} min")
    if n.dns_servers:
        table.add_row("resolvers", ", ".join(n.dns_servers))
    console = Console(file=sys.stdout, highlight=False)
    console.print("[green]Tunnel up.[/green]" if up else "[green]Tunnel negotiated.[/green]")
    console.print(table)
    if not up:
        console.print("[dim]The tunnel is not brought up on this host (use --up).[/dim]")


@click.command()
@click.argument("server", metavar="SERVER[:PORT]")
@click.option(
    "--transport",
    type=click.Choice(["auto", "udp", "tcp"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Signalling transport; auto tries UDP, then TCP. v6udpv4 needs UDP.",
)
@click.option(
    "--type",
    "tunnel_type",
    type=click.Choice(["v6anyv4", "v6v4", "v6udpv4", "v4v6"], case_sensitive=False),
    default="v6anyv4",
    show_default=True,
    help="Tunnel type; v6anyv4 lets the broker pick v6v4, or v6udpv4 behind a NAT.",
)
@click.option(
    "--auth",
    type=click.Choice(["any", "anonymous", "plain", "digest-md5"], case_sensitive=False),
    default="any",
    show_default=True,
    help="SASL mechanism; any = DIGEST-MD5, else PLAIN (anonymous without --user).",
)
@click.option("--user", "username", help="Account name.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help=f"Read the password from the first line of stdin (else ${_PASSWORD_ENV}).",
)
@click.option(
    "--router/--host",
    "router",
    default=None,
    help="Router mode asks for a delegated prefix; host mode (default) does not.",
)
@click.option(
    "--prefix-length",
    type=click.IntRange(0, 64),
    help="Delegated prefix length (implies --router; 0: the broker's default).",
)
@click.option(
    "--dns-server",
    "dns_servers",
    multiple=True,
    metavar="NAME",
    help="Nameserver for reverse DNS of the prefix (router mode; repeatable).",
)
@click.option(
    "--keepalive",
    type=click.IntRange(0, 86400),
    default=30,
    show_default=True,
    help="Requested keepalive interval in seconds (the broker decides); 0: none.",
)
@click.option(
    "--client-ipv4",
    default="auto",
    show_default=True,
    metavar="auto|ADDR",
    help="IPv4 endpoint to announce; auto: the local address of the signalling socket.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the parameters as JSON (with --up: one line per connection).",
)
@click.option(
    "--up",
    is_flag=True,
    help="Bring the tunnel up here (TUN or kernel device, address, ::/0 route, or all of "
    "IPv4 for v4v6, keepalive) and keep it up, "
    "reconnecting as needed, until SIGINT/SIGTERM.",
)
@click.option(
    "--tun-name",
    default="tbc0",
    show_default=True,
    help="Interface for --up (the TUN, or the kernel's tunnel device).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "kernel", "userspace"], case_sensitive=False),
    help="Data plane for --up: kernel (a sit or ip6tnl device: v6v4, v4v6, heartbeat), "
    "userspace (a TUN: every type), or auto (default): the kernel where it can, else "
    "userspace. kernel refuses, naming what is missing, where it cannot.",
)
@click.option(
    "--fast-path/--no-fast-path",
    default=True,
    show_default=True,
    help="Userspace data plane: move v6udpv4 and 6in4 packets in the compiled C forwarder "
    "(where it is built) rather than in Python.",
)
@click.option(
    "--lan-interface",
    metavar="IF",
    help="With --up in router mode: put <prefix>::1/64 of the delegated prefix on IF.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option(
    "--tic",
    is_flag=True,
    help="Log in over TIC (SixXS, TCP 3874) instead of TSP, and run the account's AYIYA, "
    "heartbeat or static 6in4 tunnel (needs --user).",
)
@click.option("--tunnel", "tic_tunnel", metavar="ID", help="With --tic: which tunnel (T123).")
@click.option("--list", "tic_list", is_flag=True, help="With --tic: list the tunnels and exit.")
@click.option(
    "--starttls",
    is_flag=True,
    help="With --tic: use STARTTLS; a server that refuses it is used in plaintext.",
)
@click.option(
    "--require-tls",
    is_flag=True,
    help="With --tic: use STARTTLS and give up if the server refuses it (AICCU's "
    "requiretls); implies --starttls.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="With --starttls or --require-tls: accept any certificate, as AICCU does.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log the negotiation to stderr.")
def client(
    server: str,
    transport: str,
    tunnel_type: str,
    auth: str,
    username: str | None,
    password_stdin: bool,
    router: bool | None,
    prefix_length: int | None,
    dns_servers: tuple[str, ...],
    keepalive: int,
    client_ipv4: str,
    as_json: bool,
    up: bool,
    tun_name: str,
    backend: str | None,
    fast_path: bool,
    lan_interface: str | None,
    timeout: float,
    tic: bool,
    tic_tunnel: str | None,
    tic_list: bool,
    starttls: bool,
    require_tls: bool,
    insecure: bool,
    verbose: bool,
) -> None:
    """Negotiate a tunnel with the TSP broker SERVER (RFC 5572) and print what it granted.

    Without --up it only negotiates (and accepts) the tunnel and prints the parameters;
    nothing is configured on this host. With --up (needs root) the tunnel runs in userspace
    over a TUN device: all IPv6 (::/0) goes through it, ICMPv6 keepalives watch it, and it is
    renegotiated after 3 lost keepalives, a broken flow or a new local IPv4 address (with
    backoff up to 60 s). The parameters are printed at each connection. SIGINT or SIGTERM
    removes the interface, routes and addresses and exits. Where the kernel has sit (v6v4,
    heartbeat) or ip6tnl (v4v6), --backend auto (the default) lets it carry the packets
    through such a device instead of the TUN.
    """
    if backend is not None and not up:
        raise click.UsageError("--backend needs --up")
    backend = (backend or "auto").lower()
    if tic or tic_tunnel or tic_list or starttls or require_tls:
        _tic(
            server,
            username,
            password_stdin,
            tic_tunnel,
            tic_list,
            starttls or require_tls,
            require_tls,
            insecure,
            up,
            tun_name,
            backend,
            fast_path,
            as_json,
            timeout,
            verbose,
        )
        return
    host, port = parse_server(server)
    auth = auth.upper()
    if auth == "ANONYMOUS" and username is not None:
        raise click.UsageError("--user cannot be used with --auth anonymous")
    if auth in ("PLAIN", "DIGEST-MD5") and username is None:
        raise click.UsageError(f"--auth {auth.lower()} needs --user")
    if router is False and (prefix_length is not None or dns_servers):
        raise click.UsageError("--prefix-length and --dns-server need router mode")
    if prefix_length is not None or dns_servers:
        router = True
    if lan_interface is not None and not (up and router):
        raise click.UsageError("--lan-interface needs --up and router mode")
    if up and router and tunnel_type.lower() == "v4v6":
        raise click.UsageError("router mode is for IPv6 prefixes: not with --type v4v6")
    password = _password(username, password_stdin)
    if up:
        # In the foreground a running tunnel logs its steps; -v adds our details (not those
        # of the libraries: pyroute2 logs every netlink message at DEBUG).
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if verbose:
            logging.getLogger("tunnelbroker").setLevel(logging.DEBUG)
    elif verbose:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    options: dict[str, Any] = dict(
        port=port,
        transport=transport.lower(),
        tunnel_type=tunnel_type.lower(),
        mechanism=auth,
        username=username,
        password=password,
        client_ipv4=client_ipv4,
        router=(prefix_length or 0) if router else None,
        dns_servers=dns_servers,
        keepalive=keepalive or None,
        timeout=timeout,
    )
    if up:
        _up(host, {**options, "fast_path": fast_path}, tun_name, backend, lan_interface, as_json)
        return
    try:
        result = asyncio.run(_negotiate_and_close(host, **options))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    except TspClientError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _summary(result)


def _tic(
    server: str,
    username: str | None,
    password_stdin: bool,
    tunnel_id: str | None,
    list_only: bool,
    starttls: bool,
    require_tls: bool,
    insecure: bool,
    up: bool,
    tun_name: str,
    backend: str,
    fast_path: bool,
    as_json: bool,
    timeout: float,
    verbose: bool,
) -> None:
    """``--tic``: a SixXS-style login; list, show or run the tunnel."""
    from tunnelbroker.client.sixxs import tic_negotiate
    from tunnelbroker.client.tic import TicClientError, fetch
    from tunnelbroker.protocols.tic import PORT as TIC_PORT

    if username is None:
        raise click.UsageError("--tic needs --user")
    host, port = parse_server(server)
    if not ("]:" in server or server.count(":") == 1):
        port = TIC_PORT  # no port given: TIC's, not TSP's
    password = _password(username, password_stdin) or ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO if up else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if list_only:
        try:
            result = asyncio.run(
                fetch(
                    host,
                    username,
                    password,
                    port=port,
                    list_only=True,
                    starttls=starttls,
                    require_tls=require_tls,
                    verify=not insecure,
                    timeout=timeout,
                )
            )
        except TicClientError as err:
            _fail(str(err))
        entries = [
            {
                "tunnel": x.tunnel_id,
                "ipv6": x.ipv6_endpoint,
                "ipv4": x.ipv4_endpoint,
                "pop": x.pop_id,
            }
            for x in result.entries
        ]
        if as_json:
            click.echo(json.dumps(entries, indent=2))
        else:
            for x in entries:
                click.echo(f"{x['tunnel']}  {x['ipv6']}  {x['ipv4']}  {x['pop']}")
        return

    async def negotiator() -> Negotiated:
        return await tic_negotiate(
            host,
            username=username,
            password=password,
            tunnel_id=tunnel_id,
            port=port,
            starttls=starttls,
            require_tls=require_tls,
            verify=not insecure,
            timeout=timeout,
        )

    if not up:
        try:
            n = asyncio.run(negotiator())
        except TicClientError as e:
            _fail(str(e))
        if as_json:
            click.echo(json.dumps(n.to_dict(), indent=2))
        else:
            _summary(n)
        return
    _up(host, {"negotiator": negotiator, "fast_path": fast_path}, tun_name, backend, None, as_json)


async def _negotiate_and_close(server: str, **kwargs: Any) -> Negotiated:
    # The flow must be closed on its own loop; the broker keeps the tunnel regardless.
    result = await negotiate(server, **kwargs)
    result.close()
    await asyncio.sleep(0)
    return result


def _up(
    host: str,
    options: dict[str, Any],
    tun_name: str,
    backend: str,
    lan_interface: str | None,
    as_json: bool,
) -> None:
    from tunnelbroker.client.dataplane import run_client
    from tunnelbroker.client.kernel import KernelUnavailable

    def show(n: Negotiated) -> None:
        if as_json:
            click.echo(json.dumps({**n.to_dict(), "interface": tun_name}))
        else:
            _summary(n, up=True)
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_client(
                host,
                stop=stop,
                tun_name=tun_name,
                lan_interface=lan_interface,
                on_up=show,
                backend=backend,
                **options,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    except TspClientError as e:
        _fail(str(e))
    except TicClientError as e:
        _fail(str(e))
    except KernelUnavailable as e:
        _fail(f"--backend kernel: {e}\n(--backend auto or userspace runs it in userspace)")
    except OSError as e:
        _fail(f"cannot bring the tunnel up: {e}")
