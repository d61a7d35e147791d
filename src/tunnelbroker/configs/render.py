"""One template per platform; each returns the file the user downloads.

Static 6in4 (protocol 41) runs everywhere; heartbeat and AYIYA tunnels need a client that
speaks those protocols (ours, or AICCU); TSP tunnels are set up by the client itself (ours,
or gogoc). The scripts say what they do, which values came from the broker, and what to do
with the routed /64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunnelbroker.configs.params import ConfigError, TunnelParams


@dataclass(frozen=True)
class Rendered:
    filename: str
    media_type: str
    text: str


@dataclass(frozen=True)
class Platform:
    id: str
    name: str
    #: File name pattern ({id} is the tunnel id) and media type of the download.
    filename: str
    media_type: str
    kinds: frozenset[str]
    template: Callable[[TunnelParams], str]


_STATIC = frozenset({"static"})


def _header(p: TunnelParams, comment: str = "#") -> str:
    lines = [
        f"tunnelbroker: tunnel {p.label}, 6in4 (IPv6 in IPv4, protocol 41)",
        f"Server IPv4 {p.server_ipv4}, client IPv4 {p.client_ipv4 or 'learnt'}",
        f"Link {p.link}: server {p.server_ipv6}, client {p.client_ipv6}; MTU {p.mtu}",
    ]
    if p.routed is not None:
        lines.append(f"Routed /64: {p.routed}")
    if p.prefix48 is not None:
        lines.append(f"Routed prefix: {p.prefix48}")
    return "\n".join(f"{comment} {line}" for line in lines) + "\n"


def _local(p: TunnelParams) -> str:
    if p.client_ipv4 is None:
        raise ConfigError("a 6in4 configuration needs the client's IPv4 address")
    return str(p.client_ipv4)


def _lan_hint(p: TunnelParams, comment: str, example: str) -> str:
    if p.lan_address is None:
        return ""
    text = f"{comment} For your LAN: {example.format(lan=p.lan_address)}\n"
    if p.update_url:
        text += f"{comment} A changing IPv4 address: {p.update_url}\n"
    return text


def linux(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    return (
        "#!/bin/sh\n" + _header(p) + "# Linux, iproute2 (needs the sit module). Run as root.\n"
        "set -e\n"
        f"ip tunnel add {dev} mode sit remote {p.server_ipv4} local {_local(p)} ttl 255\n"
        f"ip link set {dev} up mtu {p.mtu}\n"
        f"ip -6 addr add {p.client_ipv6}/64 dev {dev}\n"
        f"ip -6 route add ::/0 dev {dev}\n"
        + _lan_hint(p, "#", "ip -6 addr add {lan} dev eth1 (and enable forwarding)")
    )


def ifupdown(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    return (
        _header(p)
        + f"# Debian ifupdown: save as /etc/network/interfaces.d/{dev}, then: ifup {dev}\n"
        f"auto {dev}\n"
        f"iface {dev} inet6 v4tunnel\n"
        f"    address {p.client_ipv6}\n"
        "    netmask 64\n"
        f"    endpoint {p.server_ipv4}\n"
        f"    local {_local(p)}\n"
        "    ttl 255\n"
        f"    gateway {p.server_ipv6}\n"
        f"    mtu {p.mtu}\n"
        + _lan_hint(p, "#", "address {lan} on your LAN interface's inet6 stanza")
    )


def netplan(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    return (
        _header(p)
        + f"# netplan: save as /etc/netplan/60-{dev}.yaml (mode 600), then: netplan apply\n"
        "network:\n"
        "  version: 2\n"
        "  tunnels:\n"
        f"    {dev}:\n"
        "      mode: sit\n"
        f'      remote: "{p.server_ipv4}"\n'
        f'      local: "{_local(p)}"\n'
        f"      mtu: {p.mtu}\n"
        f'      addresses: ["{p.client_ipv6}/64"]\n'
        "      routes:\n"
        '        - to: "::/0"\n'
        f'          via: "{p.server_ipv6}"\n'
        + _lan_hint(p, "#", "addresses: [{lan}] on your LAN interface")
    )


def networkd(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    return (
        "#!/bin/sh\n"
        + _header(p)
        + "# systemd-networkd: writes the tunnel's .netdev and .network. Run as root.\n"
        "set -e\n"
        f"cat > /etc/systemd/network/60-{dev}.netdev <<'END'\n"
        "[NetDev]\n"
        f"Name={dev}\n"
        "Kind=sit\n"
        f"MTUBytes={p.mtu}\n"
        "\n[Tunnel]\n"
        f"Local={_local(p)}\n"
        f"Remote={p.server_ipv4}\n"
        "TTL=255\n"
        "END\n"
        f"cat > /etc/systemd/network/60-{dev}.network <<'END'\n"
        "[Match]\n"
        f"Name={dev}\n"
        "\n[Network]\n"
        f"Address={p.client_ipv6}/64\n"
        f"Gateway={p.server_ipv6}\n"
        "END\n"
        f'echo "Now add Tunnel={dev} to the [Network] section of your uplink\'s .network file,"\n'
        'echo "then run: networkctl reload"\n'
        + _lan_hint(p, "#", "Address={lan} in your LAN interface's .network")
    )


def openwrt(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    routed = f"uci set network.{dev}.ip6prefix='{p.routed}'\n" if p.routed else ""
    return (
        "#!/bin/sh\n" + _header(p) + "# OpenWrt (needs the 6in4 package): run on the router.\n"
        "set -e\n"
        f"uci set network.{dev}=interface\n"
        f"uci set network.{dev}.proto='6in4'\n"
        f"uci set network.{dev}.peeraddr='{p.server_ipv4}'\n"
        f"uci set network.{dev}.ip6addr='{p.client_ipv6}/64'\n"
        + routed
        + f"uci set network.{dev}.mtu='{p.mtu}'\n"
        "uci commit network\n"
        f"uci add_list firewall.@zone[1].network='{dev}'\n"
        "uci commit firewall\n"
        "/etc/init.d/network reload\n"
        "/etc/init.d/firewall reload\n"
    )


def freebsd(p: TunnelParams) -> str:
    return (
        "#!/bin/sh\n" + _header(p) + "# FreeBSD: run as root. To keep it, put in /etc/rc.conf:\n"
        '#   cloned_interfaces="gif0"\n'
        f'#   ifconfig_gif0="tunnel {_local(p)} {p.server_ipv4} mtu {p.mtu}"\n'
        f'#   ifconfig_gif0_ipv6="inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128"\n'
        f'#   ipv6_defaultrouter="{p.server_ipv6}"\n'
        "set -e\n"
        "ifconfig gif0 create\n"
        f"ifconfig gif0 tunnel {_local(p)} {p.server_ipv4}\n"
        f"ifconfig gif0 inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128\n"
        f"ifconfig gif0 mtu {p.mtu} up\n"
        f"route -n add -inet6 default {p.server_ipv6}\n"
        + _lan_hint(p, "#", 'ifconfig_em1_ipv6="inet6 {lan}"')
    )


def openbsd(p: TunnelParams) -> str:
    return (
        _header(p) + "# OpenBSD: save as /etc/hostname.gif0, then: sh /etc/netstart gif0\n"
        f"tunnel {_local(p)} {p.server_ipv4}\n"
        f"inet6 alias {p.client_ipv6} 128\n"
        f"dest {p.server_ipv6}\n"
        f"mtu {p.mtu}\n"
        f"!/sbin/route -n add -inet6 default {p.server_ipv6}\n"
        "up\n"
    )


def macos(p: TunnelParams) -> str:
    return (
        "#!/bin/sh\n" + _header(p) + "# macOS: run with sudo (gif0 exists by default).\n"
        "set -e\n"
        f"ifconfig gif0 tunnel {_local(p)} {p.server_ipv4}\n"
        f"ifconfig gif0 inet6 {p.client_ipv6} {p.server_ipv6} prefixlen 128\n"
        f"ifconfig gif0 mtu {p.mtu}\n"
        f"route -n add -inet6 default {p.server_ipv6}\n"
    )


def windows(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    return (
        "@echo off\r\n"
        + _header(p, "rem").replace("\n", "\r\n")
        + "rem Windows: run in an administrator command prompt.\r\n"
        f"netsh interface ipv6 add v6v4tunnel interface={dev} localaddress={_local(p)} "
        f"remoteaddress={p.server_ipv4}\r\n"
        f"netsh interface ipv6 add address interface={dev} address={p.client_ipv6}\r\n"
        f"netsh interface ipv6 add route prefix=::/0 interface={dev} nexthop={p.server_ipv6}\r\n"
        f"netsh interface ipv6 set subinterface {dev} mtu={p.mtu} store=persistent\r\n"
    )


def mikrotik(p: TunnelParams) -> str:
    dev = f"tb{p.tunnel_id}"
    routed = (
        f"/ipv6 address add address={p.lan_address} interface=bridge advertise=yes "
        f'comment="tunnelbroker T{p.tunnel_id} LAN"\n'
        if p.lan_address is not None
        else ""
    )
    return (
        _header(p) + "# MikroTik RouterOS: paste into a terminal, or /import this file.\n"
        f"/interface 6to4 add name={dev} local-address={_local(p)} "
        f'remote-address={p.server_ipv4} mtu={p.mtu} comment="tunnelbroker T{p.tunnel_id}"\n'
        f"/ipv6 address add address={p.client_ipv6}/64 interface={dev} advertise=no\n"
        f"/ipv6 route add dst-address=::/0 gateway={p.server_ipv6}\n" + routed
    )


def cisco(p: TunnelParams) -> str:
    return (
        "!\n" + _header(p, "!") + "! Cisco IOS: paste in privileged mode.\n"
        "configure terminal\n"
        f"interface Tunnel{p.tunnel_id}\n"
        f" description tunnelbroker T{p.tunnel_id}\n"
        " no ip address\n"
        " ipv6 enable\n"
        f" ipv6 address {p.client_ipv6}/64\n"
        f" ipv6 mtu {p.mtu}\n"
        f" tunnel source {_local(p)}\n"
        f" tunnel destination {p.server_ipv4}\n"
        " tunnel mode ipv6ip\n"
        "exit\n"
        f"ipv6 route ::/0 Tunnel{p.tunnel_id}\n"
        "end\n"
        "write memory\n"
    )


def junos(p: TunnelParams) -> str:
    unit = f"ip-0/0/0 unit {p.tunnel_id}"
    return (
        _header(p) + "# Juniper Junos: load set terminal, paste, commit.\n"
        f"set interfaces {unit} tunnel source {_local(p)}\n"
        f"set interfaces {unit} tunnel destination {p.server_ipv4}\n"
        f"set interfaces {unit} family inet6 mtu {p.mtu}\n"
        f"set interfaces {unit} family inet6 address {p.client_ipv6}/64\n"
        f"set routing-options rib inet6.0 static route ::/0 next-hop {p.server_ipv6}\n"
    )


def vyos(p: TunnelParams) -> str:
    dev = f"tun{p.tunnel_id}"
    return (
        _header(p) + "# VyOS 1.3+ (EdgeOS: local-ip/remote-ip instead of source-address/remote):\n"
        "# configure, paste, commit, save.\n"
        f"set interfaces tunnel {dev} encapsulation sit\n"
        f"set interfaces tunnel {dev} source-address {_local(p)}\n"
        f"set interfaces tunnel {dev} remote {p.server_ipv4}\n"
        f"set interfaces tunnel {dev} address {p.client_ipv6}/64\n"
        f"set interfaces tunnel {dev} mtu {p.mtu}\n"
        f"set interfaces tunnel {dev} description 'tunnelbroker T{p.tunnel_id}'\n"
        f"set protocols static route6 ::/0 next-hop {p.server_ipv6}\n"
    )


def tunnelbroker_client(p: TunnelParams) -> str:
    if p.kind == "tsp":
        how = f"tunnelbroker client {p.broker_host} --user {p.username} --password-stdin --up"
        what = "TSP: the client sets the tunnel up itself (6in4, or IPv6 in UDP behind a NAT)"
    else:
        how = (
            f"tunnelbroker client {p.broker_host} --tic --user {p.username} "
            f"--tunnel T{p.tunnel_id} --password-stdin --up"
        )
        what = {
            "static": "6in4, described over TIC",
            "heartbeat": "6in4 with a signed heartbeat that follows your IPv4 address",
            "ayiya": "AYIYA: IPv6 in signed UDP, through NATs",
        }[p.kind]
    return (
        "#!/bin/sh\n"
        f"# tunnelbroker: tunnel {p.label}: {what}\n"
        "# Run as root; it stays in the foreground and keeps the tunnel up (Ctrl-C ends it).\n"
        "# Your account password is read from standard input:\n"
        "set -e\n"
        f'printf "%s\\n" "$TUNNELBROKER_PASSWORD" | {how}\n'
    )


def aiccu(p: TunnelParams) -> str:
    return (
        f"# tunnelbroker: tunnel {p.label} for AICCU: save as /etc/aiccu.conf\n"
        f"username {p.username}\n"
        "password YOUR-ACCOUNT-PASSWORD\n"
        "protocol tic\n"
        f"server {p.broker_host}\n"
        f"tunnel_id T{p.tunnel_id}\n"
        "ipv6_interface sixxs\n"
        "automatic true\n"
        "requiretls false\n"
        "defaultroute true\n"
    )


def gogoc(p: TunnelParams) -> str:
    return (
        "# tunnelbroker: TSP with gogoCLIENT: gogoc.conf\n"
        f"server={p.broker_host}\n"
        f"userid={p.username}\n"
        "passwd=YOUR-ACCOUNT-PASSWORD\n"
        "auth_method=any\n"
        "tunnel_mode=v6anyv4\n"
        "host_type=host\n"
    )


PLATFORMS: dict[str, Platform] = {
    p.id: p
    for p in (
        Platform(
            "linux", "Linux (iproute2)", "tb{id}-linux.sh", "text/x-shellscript", _STATIC, linux
        ),
        Platform(
            "ifupdown", "Debian ifupdown", "tb{id}.interfaces", "text/plain", _STATIC, ifupdown
        ),
        Platform("netplan", "netplan", "60-tb{id}.yaml", "application/yaml", _STATIC, netplan),
        Platform(
            "networkd",
            "systemd-networkd",
            "tb{id}-networkd.sh",
            "text/x-shellscript",
            _STATIC,
            networkd,
        ),
        Platform(
            "openwrt", "OpenWrt (UCI)", "tb{id}-openwrt.sh", "text/x-shellscript", _STATIC, openwrt
        ),
        Platform("freebsd", "FreeBSD", "tb{id}-freebsd.sh", "text/x-shellscript", _STATIC, freebsd),
        Platform("openbsd", "OpenBSD", "hostname.gif0", "text/plain", _STATIC, openbsd),
        Platform("macos", "macOS", "tb{id}-macos.sh", "text/x-shellscript", _STATIC, macos),
        Platform(
            "windows", "Windows (netsh)", "tb{id}-windows.cmd", "text/plain", _STATIC, windows
        ),
        Platform("mikrotik", "MikroTik RouterOS", "tb{id}.rsc", "text/plain", _STATIC, mikrotik),
        Platform("cisco", "Cisco IOS", "tb{id}-ios.txt", "text/plain", _STATIC, cisco),
        Platform("junos", "Juniper Junos", "tb{id}-junos.txt", "text/plain", _STATIC, junos),
        Platform("vyos", "VyOS / EdgeOS", "tb{id}-vyos.txt", "text/plain", _STATIC, vyos),
        Platform(
            "tunnelbroker-client",
            "tunnelbroker client",
            "tb{id}-client.sh",
            "text/x-shellscript",
            frozenset({"static", "heartbeat", "ayiya", "tsp"}),
            tunnelbroker_client,
        ),
        Platform(
            "aiccu",
            "AICCU",
            "aiccu.conf",
            "text/plain",
            frozenset({"static", "heartbeat", "ayiya"}),
            aiccu,
        ),
        Platform("gogoc", "gogoCLIENT", "gogoc.conf", "text/plain", frozenset({"tsp"}), gogoc),
    )
}


def platforms_for(kind: str) -> list[Platform]:
    """The platforms that can run a tunnel of this kind, in display order."""
    return [p for p in PLATFORMS.values() if kind in p.kinds]


def render(platform: str, params: TunnelParams) -> Rendered:
    """The download for ``platform``. Raises :class:`ConfigError` for an unknown platform or
    one that cannot run this kind of tunnel."""
    p = PLATFORMS.get(platform)
    if p is None:
        raise ConfigError(f"unknown platform {platform[:40]!r}")
    if params.kind not in p.kinds:
        raise ConfigError(f"{p.name} cannot run a {params.kind} tunnel")
    return Rendered(p.filename.format(id=params.tunnel_id), p.media_type, p.template(params))
