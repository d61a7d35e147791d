"""Client programs: ``tunnelbroker client`` (every type), AICCU (TIC) and gogoCLIENT (TSP).

Heartbeat and AYIYA tunnels need a program that signs and sends those packets, and TSP
tunnels are negotiated by the client, so these are the only downloads for those types.
"""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import TunnelConfigInput, TunnelKind
from tunnelbroker.web.configs.text import KIND_NAMES, comments, header


def client_arguments(p: TunnelConfigInput) -> list[str]:
    """The ``tunnelbroker client`` command line (after ``tunnelbroker client``)."""
    if p.kind is TunnelKind.TSP:
        args = [p.broker, f"--user={p.username}", "--type=v6anyv4"]
        # Router mode asks the broker for the tunnel's delegated prefix as well.
        if p.delegated is not None or p.routed is not None:
            args.append("--router")
    else:
        # Static, heartbeat and AYIYA tunnels are described over TIC (SixXS style).
        args = [p.broker, "--tic", f"--user={p.username}", f"--tunnel=T{p.tunnel_id}"]
    return [*args, f"--tun-name={p.interface}", "--up"]


def tunnelbroker_client(p: TunnelConfigInput) -> str:
    command = " ".join(["tunnelbroker", "client", *client_arguments(p)])
    lan = (
        ["With --lan-interface=eth1 it also puts the delegated prefix's ::1/64 on eth1."]
        if p.kind is TunnelKind.TSP and "--router" in command
        else []
    )
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "tunnelbroker client",
            [
                f"Runs our client for this {KIND_NAMES[p.kind]} tunnel: it logs in, sets up",
                f"{p.interface} with the addresses and the default route, keeps the tunnel",
                "alive and removes it all when stopped (Ctrl-C or SIGTERM). Needs root and",
                "pip install tunnelbroker. Your account password comes from the environment:",
                "  TUNNELBROKER_PASSWORD='...' sh this-file",
                *lan,
            ],
        )
        + "set -e\n"
        ': "${TUNNELBROKER_PASSWORD:?set TUNNELBROKER_PASSWORD to your account password}"\n'
        "export TUNNELBROKER_PASSWORD\n"
        f"exec {command}\n"
    )


def aiccu(p: TunnelConfigInput) -> str:
    return (
        header(
            p,
            "AICCU",
            [
                "Settings for AICCU, the SixXS client (TIC login, then the tunnel):",
                "save as /etc/aiccu.conf, put your password in, then run: aiccu start",
            ],
        )
        + f"username {p.username}\n"
        "password YOUR-ACCOUNT-PASSWORD\n"
        "protocol tic\n"
        f"server {p.broker_host}\n"
        f"tunnel_id T{p.tunnel_id}\n"
        f"ipv6_interface {p.interface}\n"
        "automatic true\n"
        "requiretls false\n"
        "defaultroute true\n"
        + comments(["AICCU can use TLS (requiretls true) when the broker offers STARTTLS."])
    )


def gogoc(p: TunnelConfigInput) -> str:
    return (
        header(
            p,
            "gogoCLIENT",
            [
                "Settings for gogoCLIENT (gogoc), a TSP client: merge into gogoc.conf,",
                "put your password in, then run: gogoc -f gogoc.conf",
            ],
        )
        + f"server={p.broker}\n"
        f"userid={p.username}\n"
        "passwd=YOUR-ACCOUNT-PASSWORD\n"
        "auth_method=any\n"
        "tunnel_mode=v6anyv4\n"
        f"if_tunnel_v6v4={p.interface}\n"
        f"if_tunnel_v6udpv4={p.interface}\n" + _gogoc_router(p)
    )


def _gogoc_router(p: TunnelConfigInput) -> str:
    """Router mode when the tunnel has a prefix to route: asked for by its length."""
    routed = p.delegated or p.routed
    if routed is None:
        return "host_type=host\n"
    return (
        "host_type=router\n"
        f"prefixlen={routed.prefixlen}\n"
        "# Your LAN interface: gogoc puts <prefix>::1/64 on it and advertises the prefix.\n"
        "if_prefix=eth1\n"
    )
