"""Router command lines: MikroTik RouterOS, Cisco IOS, Juniper Junos, VyOS and EdgeOS.

Debian has no checker for these syntaxes; they follow each vendor's documentation and are
pinned by golden files.
"""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import TunnelConfigInput
from tunnelbroker.web.configs.text import header, lan_hint, local_ipv4, update_hint


def routeros(p: TunnelConfigInput) -> str:
    dev = p.interface
    return (
        header(
            p,
            "MikroTik RouterOS",
            [
                f"Adds the 6to4 (6in4) interface {dev}, its address and the default route.",
                "Paste into a terminal, or upload and run: /import file-name=tb.rsc",
            ],
        )
        + f"/interface 6to4 add name={dev} local-address={local_ipv4(p)} "
        f'remote-address={p.server_ipv4} mtu={p.mtu} comment="tunnelbroker T{p.tunnel_id}"\n'
        f"/ipv6 address add address={p.client_ipv6}/64 interface={dev} advertise=no\n"
        f"/ipv6 route add dst-address=::/0 gateway={p.server_ipv6}\n"
        + lan_hint(
            p,
            ["/ipv6 address add address={lan} interface=bridge advertise=yes  (your LAN)"],
        )
        + update_hint(p)
    )


def ios(p: TunnelConfigInput) -> str:
    tunnel = f"Tunnel{p.tunnel_id}"
    return (
        header(
            p,
            "Cisco IOS",
            [
                f"Interface {tunnel} in ipv6ip (6in4) mode and the default route.",
                "Paste in privileged EXEC mode (after enable).",
            ],
            comment="!",
        )
        + "configure terminal\n"
        f"interface {tunnel}\n"
        f" description tunnelbroker T{p.tunnel_id}\n"
        " no ip address\n"
        " ipv6 enable\n"
        f" ipv6 address {p.client_ipv6}/64\n"
        f" ipv6 mtu {p.mtu}\n"
        f" tunnel source {local_ipv4(p)}\n"
        f" tunnel destination {p.server_ipv4}\n"
        " tunnel mode ipv6ip\n"
        " exit\n"
        f"ipv6 route ::/0 {tunnel} {p.server_ipv6}\n"
        "end\n"
        "write memory\n"
        + lan_hint(
            p,
            [
                "ipv6 unicast-routing",
                "interface GigabitEthernet0/1  (your LAN interface)",
                " ipv6 address {lan}",
            ],
            comment="!",
        )
        + update_hint(p, comment="!")
    )


def junos(p: TunnelConfigInput) -> str:
    unit = "ip-0/0/0 unit 0"
    return (
        header(
            p,
            "Juniper Junos",
            [
                "An ip-0/0/0 (IPv6 over IPv4) tunnel unit and the default route. In",
                "configuration mode: load set terminal, paste, Ctrl-D, commit. On an SRX,",
                "also put ip-0/0/0.0 in a security zone and enable IPv6 flow mode.",
            ],
        )
        + f'set interfaces {unit} description "tunnelbroker T{p.tunnel_id}"\n'
        f"set interfaces {unit} tunnel source {local_ipv4(p)}\n"
        f"set interfaces {unit} tunnel destination {p.server_ipv4}\n"
        f"set interfaces {unit} family inet6 mtu {p.mtu}\n"
        f"set interfaces {unit} family inet6 address {p.client_ipv6}/64\n"
        f"set routing-options rib inet6.0 static route ::/0 next-hop {p.server_ipv6}\n"
        + lan_hint(
            p,
            [
                "set interfaces ge-0/0/1 unit 0 family inet6 address {lan}  (your LAN)",
                "set protocols router-advertisement interface ge-0/0/1.0 prefix {net}",
            ],
        )
        + update_hint(p)
    )


def vyos(p: TunnelConfigInput) -> str:
    dev = f"tun{p.tunnel_id}"
    return (
        header(
            p,
            "VyOS 1.3 or later",
            [
                f"The sit tunnel {dev} and the default route. In configuration mode",
                "(configure): paste, then commit and save.",
            ],
        )
        + f"set interfaces tunnel {dev} encapsulation sit\n"
        f"set interfaces tunnel {dev} source-address {local_ipv4(p)}\n"
        f"set interfaces tunnel {dev} remote {p.server_ipv4}\n"
        f"set interfaces tunnel {dev} address {p.client_ipv6}/64\n"
        f"set interfaces tunnel {dev} mtu {p.mtu}\n"
        f"set interfaces tunnel {dev} description 'tunnelbroker T{p.tunnel_id}'\n"
        f"set protocols static route6 ::/0 next-hop {p.server_ipv6}\n"
        + lan_hint(
            p,
            [
                "set interfaces ethernet eth1 address {lan}  (your LAN interface)",
                "set service router-advert interface eth1 prefix {net}",
            ],
        )
        + update_hint(p)
    )


def edgeos(p: TunnelConfigInput) -> str:
    dev = f"tun{p.tunnel_id}"
    return (
        header(
            p,
            "Ubiquiti EdgeOS",
            [
                f"The sit tunnel {dev} and the default route. In configuration mode",
                "(configure): paste, then commit and save.",
            ],
        )
        + f"set interfaces tunnel {dev} encapsulation sit\n"
        f"set interfaces tunnel {dev} local-ip {local_ipv4(p)}\n"
        f"set interfaces tunnel {dev} remote-ip {p.server_ipv4}\n"
        f"set interfaces tunnel {dev} address {p.client_ipv6}/64\n"
        f"set interfaces tunnel {dev} mtu {p.mtu}\n"
        f"set interfaces tunnel {dev} ttl 255\n"
        f"set interfaces tunnel {dev} multicast disable\n"
        f'set interfaces tunnel {dev} description "tunnelbroker T{p.tunnel_id}"\n'
        f"set protocols static interface-route6 ::/0 next-hop-interface {dev}\n"
        + lan_hint(
            p,
            [
                "set interfaces switch switch0 ipv6 address eui64 {net}  (your LAN)",
                "set interfaces switch switch0 ipv6 router-advert prefix {net}",
            ],
        )
        + update_hint(p)
    )
