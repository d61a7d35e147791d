"""TIC values: reply codes and what ``tunnel show``, ``tunnel list``, ``route list`` and
``pop show`` carry (sixxs.md §2.6)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

#: IANA port of TIC, hard-coded in AICCU.
PORT = 3874
#: AICCU's ``TIC_VERSION``.
TIC_VERSION = "draft-00"
#: Tunnel types AICCU knows (others become plain sit tunnels without beats).
TUNNEL_TYPES = ("ayiya", "6in4-heartbeat", "6in4-static")


class ReplyCode(IntEnum):
    OK = 200
    #: Start of a multi-line block.
    BLOCK_START = 201
    #: End of a multi-line block.
    BLOCK_END = 202
    #: Any failure (SixXS used only 400).
    ERROR = 400


@dataclass(frozen=True, slots=True)
class TicTunnel:
    """Everything ``tunnel show`` says about one tunnel, in AICCU's terms."""

    #: ``T<number>``.
    tunnel_id: str
    #: ``ayiya``, ``6in4-heartbeat`` or ``6in4-static``.
    type: str
    #: The client's tunnel IPv6 address (also its AYIYA identity).
    ipv6_endpoint: str
    #: The PoP's tunnel IPv6 address (also its AYIYA identity).
    ipv6_pop: str
    ipv6_prefix_length: int
    pop_id: str
    #: ``ayiya``, ``heartbeat`` or the client's static IPv4 address.
    ipv4_endpoint: str
    #: The PoP's IPv4 address (or host name): where AYIYA, beats and protocol 41 go.
    ipv4_pop: str
    user_state: str = "enabled"
    admin_state: str = "enabled"
    #: The tunnel's own secret (AYIYA SHA-1, heartbeat MD5); None for static tunnels.
    password: str | None = None
    #: Seconds between beats; AICCU loops without pause on 0.
    heartbeat_interval: int = 60
    mtu: int = 1280
    name: str = ""

    @property
    def enabled(self) -> bool:
        """AICCU refuses a tunnel unless both states are exactly ``enabled``."""
        return self.user_state == "enabled" and self.admin_state == "enabled"


@dataclass(frozen=True, slots=True)
class TicListEntry:
    """One ``tunnel list`` line: ``<TunnelId> <IPv6 Endpoint> <IPv4 Endpoint> <POP Id>``."""

    tunnel_id: str
    ipv6_endpoint: str
    ipv4_endpoint: str
    pop_id: str


@dataclass(frozen=True, slots=True)
class TicRoute:
    """One ``route list`` line: ``<RouteId> <TunnelId> <prefix>`` (pyaiccu's reading)."""

    route_id: str
    tunnel_id: str
    prefix: str


@dataclass(frozen=True, slots=True)
class TicPop:
    """What ``pop show`` says about one PoP (AICCU's ``tic_Get_POP`` keys)."""

    pop_id: str
    city: str = ""
    country: str = ""
    ipv4: str = ""
    ipv6: str = ""
    isp_short: str = ""
    isp_name: str = ""
    isp_website: str = ""
    isp_asn: str = ""
    isp_lir: str = ""
