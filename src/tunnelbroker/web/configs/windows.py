"""Windows: netsh commands in a .cmd file (CRLF line ends, as cmd.exe expects)."""

from __future__ import annotations

from tunnelbroker.web.configs.inputs import TunnelConfigInput
from tunnelbroker.web.configs.text import header, local_ipv4, update_hint


def netsh(p: TunnelConfigInput) -> str:
    dev = p.interface
    text = (
        "@echo off\n"
        + header(
            p,
            "Windows (netsh)",
            [
                f"Creates the 6in4 interface {dev}, gives it the client address and MTU and",
                "routes all IPv6 through it; kept across reboots. Run in a command prompt",
                f'opened as administrator. Undo: netsh interface ipv6 delete interface "{dev}"',
            ],
            comment="rem",
        )
        + f"netsh interface ipv6 add v6v4tunnel interface={dev} "
        f"localaddress={local_ipv4(p)} remoteaddress={p.server_ipv4}\n"
        f"netsh interface ipv6 add address interface={dev} address={p.client_ipv6}\n"
        f"netsh interface ipv6 add route prefix=::/0 interface={dev} nexthop={p.server_ipv6}\n"
        f"netsh interface ipv6 set subinterface interface={dev} mtu={p.mtu} store=persistent\n"
        + update_hint(p, comment="rem")
    )
    return text.replace("\n", "\r\n")
