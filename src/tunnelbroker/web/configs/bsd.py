"""The gif(4) platforms: FreeBSD, OpenBSD and macOS."""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import TunnelConfigInput
from tunnelbroker.web.configs.text import comments, header, lan_hint, local_ipv4, update_hint


def freebsd(p: TunnelConfigInput) -> str:
    rc_conf = [
        "To keep it across reboots, put these lines in /etc/rc.conf instead:",
        '  cloned_interfaces="gif0"',
        f'  ifconfig_gif0="tunnel {local_ipv4(p)} {p.server_ipv4} mtu {p.mtu}"',
        f'  ifconfig_gif0_ipv6="inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128"',
        f'  ipv6_defaultrouter="{p.server_ipv6}"',
    ]
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "FreeBSD",
            [
                "Creates gif0 (pick another number if gif0 is taken), sets the tunnel's",
                "endpoints and addresses and routes all IPv6 through it. Run as root.",
            ],
        )
        + comments(rc_conf)
        + "set -e\n"
        "ifconfig gif0 create\n"
        f"ifconfig gif0 tunnel {local_ipv4(p)} {p.server_ipv4}\n"
        f"ifconfig gif0 inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128\n"
        f"ifconfig gif0 mtu {p.mtu} up\n"
        f"route -n add -inet6 default {p.server_ipv6}\n"
        + lan_hint(
            p,
            [
                'in /etc/rc.conf: ipv6_gateway_enable="YES"',
                'ifconfig_em1_ipv6="inet6 {lan}"  (your LAN interface)',
                'rtadvd_enable="YES" and rtadvd_interfaces="em1"',
            ],
        )
        + update_hint(p)
    )


def openbsd(p: TunnelConfigInput) -> str:
    return (
        header(
            p,
            "OpenBSD",
            [
                "Interface file for gif0: save as /etc/hostname.gif0, then run",
                "sh /etc/netstart gif0 (it is read again at each boot).",
            ],
        )
        + f"tunnel {local_ipv4(p)} {p.server_ipv4}\n"
        f"inet6 alias {p.client_ipv6} 128\n"
        f"dest {p.server_ipv6}\n"
        f"mtu {p.mtu}\n"
        "up\n"
        f"!/sbin/route -n add -inet6 default {p.server_ipv6}\n"
        + lan_hint(
            p,
            [
                "net.inet6.ip6.forwarding=1 in /etc/sysctl.conf",
                "inet6 {lan} in /etc/hostname.em1  (your LAN interface)",
                "and for router advertisements: 'interface em1' in /etc/rad.conf, rcctl enable rad",
            ],
        )
        + update_hint(p)
    )


def macos(p: TunnelConfigInput) -> str:
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "macOS",
            [
                "Sets up gif0 (present by default) and routes all IPv6 through it.",
                "Run with sudo; not kept across reboots.",
            ],
        )
        + "set -e\n"
        f"ifconfig gif0 tunnel {local_ipv4(p)} {p.server_ipv4}\n"
        f"ifconfig gif0 inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128\n"
        f"ifconfig gif0 mtu {p.mtu} up\n"
        f"route -n add -inet6 default {p.server_ipv6}\n" + update_hint(p)
    )
