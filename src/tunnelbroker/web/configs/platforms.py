"""The platforms a configuration can be downloaded for, and :func:`render`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunnelbroker.web.configs import bsd, clients, linux, routers, windows
from tunnelbroker.web.configs.inputs import ConfigError, TunnelConfigInput, TunnelKind
from tunnelbroker.web.configs.text import KIND_NAMES


@dataclass(frozen=True, slots=True)
class Rendered:
    """A download: its file name, media type and text."""

    filename: str
    media_type: str
    text: str


@dataclass(frozen=True, slots=True)
class Platform:
    id: str
    #: As the portal's menu shows it.
    name: str
    #: The download's file name; ``{id}`` is the tunnel id.
    filename: str
    media_type: str
    #: The tunnel types it can run.
    kinds: frozenset[TunnelKind]
    template: Callable[[TunnelConfigInput], str]


_STATIC = frozenset({TunnelKind.STATIC})
#: Over TIC, our client and AICCU run every SixXS-style type.
_TIC = frozenset({TunnelKind.STATIC, TunnelKind.HEARTBEAT, TunnelKind.AYIYA})
_SH = "text/x-shellscript"
_TXT = "text/plain"

#: In the portal's order: our client first, then hosts, then routers, then other clients.
PLATFORMS: dict[str, Platform] = {
    p.id: p
    for p in (
        Platform(
            "tunnelbroker-client",
            "tunnelbroker client",
            "tb{id}-client.sh",
            _SH,
            _TIC | {TunnelKind.TSP},
            clients.tunnelbroker_client,
        ),
        Platform("linux", "Linux (iproute2)", "tb{id}-linux.sh", _SH, _STATIC, linux.iproute2),
        Platform("ifupdown", "Debian ifupdown", "tb{id}.interfaces", _TXT, _STATIC, linux.ifupdown),
        Platform(
            "netplan", "netplan", "60-tb{id}.yaml", "application/yaml", _STATIC, linux.netplan
        ),
        Platform(
            "networkd", "systemd-networkd", "tb{id}-networkd.sh", _SH, _STATIC, linux.networkd
        ),
        Platform("openwrt", "OpenWrt (UCI)", "tb{id}-openwrt.sh", _SH, _STATIC, linux.openwrt),
        Platform("freebsd", "FreeBSD", "tb{id}-freebsd.sh", _SH, _STATIC, bsd.freebsd),
        Platform("openbsd", "OpenBSD", "hostname.gif0", _TXT, _STATIC, bsd.openbsd),
        Platform("macos", "macOS", "tb{id}-macos.sh", _SH, _STATIC, bsd.macos),
        Platform(
            "windows",
            "Windows (netsh)",
            "tb{id}-windows.cmd",
            "application/x-bat",
            _STATIC,
            windows.netsh,
        ),
        Platform("mikrotik", "MikroTik RouterOS", "tb{id}.rsc", _TXT, _STATIC, routers.routeros),
        Platform("cisco", "Cisco IOS", "tb{id}-ios.txt", _TXT, _STATIC, routers.ios),
        Platform("junos", "Juniper Junos", "tb{id}-junos.txt", _TXT, _STATIC, routers.junos),
        Platform("vyos", "VyOS", "tb{id}-vyos.txt", _TXT, _STATIC, routers.vyos),
        Platform("edgeos", "Ubiquiti EdgeOS", "tb{id}-edgeos.txt", _TXT, _STATIC, routers.edgeos),
        Platform("aiccu", "AICCU", "aiccu.conf", _TXT, _TIC, clients.aiccu),
        Platform(
            "gogoc", "gogoCLIENT", "gogoc.conf", _TXT, frozenset({TunnelKind.TSP}), clients.gogoc
        ),
    )
}


def platforms_for(kind: str) -> list[Platform]:
    """The platforms that can run a tunnel of this type, in display order."""
    return [p for p in PLATFORMS.values() if kind in p.kinds]


def render(platform: str, tunnel: TunnelConfigInput) -> Rendered:
    """The download for ``platform``.

    Raises:
        ConfigError: an unknown platform, one that cannot run this type of tunnel, or a
            value that platform cannot take.
    """
    p = PLATFORMS.get(platform)
    if p is None:
        raise ConfigError(f"unknown platform {platform[:40]!r}")
    if tunnel.kind not in p.kinds:
        others = ", ".join(q.name for q in platforms_for(tunnel.kind))
        raise ConfigError(
            f"{p.name} cannot run {KIND_NAMES[tunnel.kind]} tunnels; these can: {others}"
        )
    return Rendered(p.filename.format(id=tunnel.tunnel_id), p.media_type, p.template(tunnel))
