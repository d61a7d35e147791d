"""Linux: iproute2, Debian ifupdown, netplan, systemd-networkd and OpenWrt (UCI)."""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import ConfigError, TunnelConfigInput
from tunnelbroker.web.configs.text import header, lan_hint, local_ipv4, update_hint

_FORWARDING = "sysctl -w net.ipv6.conf.all.forwarding=1"


def iproute2(p: TunnelConfigInput) -> str:
    dev = p.interface
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "Linux (iproute2)",
            [
                f"Creates the sit interface {dev}, gives it the client address and routes",
                "all IPv6 (::/0) through it. Needs root and the sit module. Not kept across",
                f"reboots (see the ifupdown, netplan or networkd files); undo: ip link del {dev}",
            ],
        )
        + "set -e\n"
        f"ip tunnel add {dev} mode sit remote {p.server_ipv4} local {local_ipv4(p)} ttl 255\n"
        f"ip link set {dev} mtu {p.mtu} up\n"
        f"ip -6 addr add {p.client_ipv6}/64 dev {dev}\n"
        f"ip -6 route add ::/0 via {p.server_ipv6} dev {dev}\n"
        + lan_hint(p, [_FORWARDING, "ip -6 addr add {lan} dev eth1  (your LAN interface)"])
        + update_hint(p)
    )


def ifupdown(p: TunnelConfigInput) -> str:
    dev = p.interface
    return (
        header(
            p,
            "Debian ifupdown",
            [
                f"A v4tunnel (sit) stanza: save as /etc/network/interfaces.d/{dev}",
                f"(sourced by the default /etc/network/interfaces), then run: ifup {dev}",
            ],
        )
        + f"auto {dev}\n"
        f"iface {dev} inet6 v4tunnel\n"
        f"    address {p.client_ipv6}\n"
        "    netmask 64\n"
        f"    endpoint {p.server_ipv4}\n"
        f"    local {local_ipv4(p)}\n"
        "    ttl 255\n"
        f"    mtu {p.mtu}\n"
        f"    gateway {p.server_ipv6}\n"
        + lan_hint(
            p,
            [
                "iface eth1 inet6 static  (your LAN interface)",
                f"    address {p.lan_address}",
                "and net.ipv6.conf.all.forwarding=1 in /etc/sysctl.conf",
            ],
        )
        + update_hint(p)
    )


def netplan(p: TunnelConfigInput) -> str:
    dev = p.interface
    return (
        header(
            p,
            "netplan",
            [
                f"A sit tunnel {dev} with its address and the default route: save as",
                f"/etc/netplan/60-{dev}.yaml (chmod 600), then run: netplan apply",
            ],
        )
        + "network:\n"
        "  version: 2\n"
        "  tunnels:\n"
        f"    {dev}:\n"
        "      mode: sit\n"
        f'      remote: "{p.server_ipv4}"\n'
        f'      local: "{local_ipv4(p)}"\n'
        "      ttl: 255\n"
        f"      mtu: {p.mtu}\n"
        "      addresses:\n"
        f'        - "{p.client_ipv6}/64"\n'
        "      routes:\n"
        '        - to: "::/0"\n'
        f'          via: "{p.server_ipv6}"\n'
        + lan_hint(
            p,
            [
                'ethernets: eth1: addresses: ["{lan}"]  (your LAN interface)',
                "and net.ipv6.conf.all.forwarding=1 in /etc/sysctl.d/",
            ],
        )
        + update_hint(p)
    )


def networkd(p: TunnelConfigInput) -> str:
    """One download for two files: a script writing each with a quoted here-document."""
    dev = p.interface
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "systemd-networkd",
            [
                f"Writes /etc/systemd/network/60-{dev}.netdev (the sit tunnel) and",
                f"60-{dev}.network (address, default route), then reloads networkd.",
                "Needs root and systemd 248 or later (Independent=yes: no change to the",
                "uplink's files). Older systemd: delete that line and add Tunnel=" + dev,
                "to the [Network] section of the uplink's .network file.",
            ],
        )
        + "set -e\n"
        f"cat > /etc/systemd/network/60-{dev}.netdev <<'END'\n"
        "[NetDev]\n"
        f"Name={dev}\n"
        "Kind=sit\n"
        f"MTUBytes={p.mtu}\n"
        "\n"
        "[Tunnel]\n"
        f"Local={local_ipv4(p)}\n"
        f"Remote={p.server_ipv4}\n"
        "TTL=255\n"
        "Independent=yes\n"
        "END\n"
        f"cat > /etc/systemd/network/60-{dev}.network <<'END'\n"
        "[Match]\n"
        f"Name={dev}\n"
        "\n"
        "[Network]\n"
        f"Address={p.client_ipv6}/64\n"
        f"Gateway={p.server_ipv6}\n"
        "IPv6AcceptRA=no\n"
        "END\n"
        "networkctl reload\n"
        + lan_hint(
            p,
            [
                "in your LAN interface's .network, [Network]: Address={lan}",
                "IPv6SendRA=yes and IPForward=ipv6",
            ],
        )
        + update_hint(p)
    )


def openwrt(p: TunnelConfigInput) -> str:
    dev = p.interface
    # OpenWrt names the device "6in4-<section>", within Linux's 15 characters.
    if len(dev) > 10:
        raise ConfigError(f"interface: OpenWrt needs at most 10 characters, not {dev!r}")
    prefixes = "".join(
        f"uci add_list network.{dev}.ip6prefix='{net}'\n"
        for net in (p.routed, p.delegated)
        if net is not None
    )
    return (
        "#!/bin/sh\n"
        + header(
            p,
            "OpenWrt (UCI)",
            [
                f"Adds the 6in4 interface {dev} (needs the 6in4 package: opkg install 6in4),",
                "puts it in the wan firewall zone and reloads. Run on the router as root.",
                *(
                    ["The routed prefixes (ip6prefix) go to your LAN by prefix delegation."]
                    if prefixes
                    else []
                ),
            ],
        )
        + "set -e\n"
        "# The firewall zone called wan, wherever it is in the list.\n"
        "zone=$(uci show firewall | sed -n "
        "\"s/^firewall\\.\\(@zone\\[[0-9]*\\]\\)\\.name='wan'$/\\1/p\")\n"
        'if [ -z "$zone" ]; then echo "no firewall zone named wan" >&2; exit 1; fi\n'
        f"uci -q delete network.{dev} || true\n"
        f"uci set network.{dev}=interface\n"
        f"uci set network.{dev}.proto='6in4'\n"
        f"uci set network.{dev}.peeraddr='{p.server_ipv4}'\n"
        f"uci set network.{dev}.ipaddr='{local_ipv4(p)}'\n"
        f"uci set network.{dev}.ip6addr='{p.client_ipv6}/64'\n"
        + prefixes
        + f"uci set network.{dev}.mtu='{p.mtu}'\n"
        f"uci set network.{dev}.ttl='255'\n"
        "uci commit network\n"
        f'uci -q del_list "firewall.$zone.network={dev}" || true\n'
        f'uci add_list "firewall.$zone.network={dev}"\n'
        "uci commit firewall\n"
        "/etc/init.d/network reload\n"
        "/etc/init.d/firewall reload\n" + update_hint(p)
    )
