"""Getting a SixXS-style tunnel: log in over TIC and describe the tunnel as the data plane
needs it (:class:`~tunnelbroker.client.tsp.Negotiated`, like a TSP grant).

``6in4-static`` becomes ``v6v4``; ``6in4-heartbeat`` becomes ``heartbeat`` (6in4 plus a
signed beat to UDP 3740 every ``Heartbeat_Interval``); ``ayiya`` stays ``ayiya`` (IPv6 in
signed UDP datagrams to port 5072, which also crosses NATs).

The interface is set up as AICCU sets it up (sixxs.md §5.2): MTU ``Tunnel MTU`` and the
address ``IPv6 Endpoint/IPv6 PrefixLength``. A value we cannot use is replaced, with a
warning: an MTU is clamped into 1280..1480 (the IPv6 minimum; 1500 less 6in4's IPv4 header),
a prefix length outside 1..128 becomes 128.
"""

from __future__ import annotations

import logging

from tunnelbroker.client.dataplane import local_ipv4_towards
from tunnelbroker.client.tic import TicClientError, fetch
from tunnelbroker.client.tsp import Negotiated
from tunnelbroker.protocols.ayiya import PORT as AYIYA_PORT
from tunnelbroker.protocols.tic import PORT as TIC_PORT
from tunnelbroker.protocols.tic import TicTunnel

log = logging.getLogger(__name__)

#: TIC's tunnel types and what this client runs them as.
TYPES = {"ayiya": "ayiya", "6in4-heartbeat": "heartbeat", "6in4-static": "v6v4"}
#: The MTUs we set on a tunnel interface: IPv6's minimum, and what 6in4 leaves of an
#: Ethernet path (1500 less a 20-byte IPv4 header).
MTU_MIN = 1280
MTU_MAX = 1480


def tunnel_mtu(tunnel: TicTunnel) -> int:
    """The tunnel's ``Tunnel MTU``, clamped into :data:`MTU_MIN`..:data:`MTU_MAX`."""
    mtu = min(MTU_MAX, max(MTU_MIN, tunnel.mtu))
    if mtu != tunnel.mtu:
        log.warning(
            "tunnel %s: Tunnel MTU %d is outside %d..%d: using %d",
            tunnel.tunnel_id,
            tunnel.mtu,
            MTU_MIN,
            MTU_MAX,
            mtu,
        )
    return mtu


def link_prefix_length(tunnel: TicTunnel) -> int:
    """The tunnel's ``IPv6 PrefixLength``, or 128 when it is no IPv6 prefix length."""
    length = tunnel.ipv6_prefix_length
    if 1 <= length <= 128:
        return length
    log.warning(
        "tunnel %s: IPv6 PrefixLength %d is not 1..128: using a /128", tunnel.tunnel_id, length
    )
    return 128


def as_negotiated(server: str, tunnel: TicTunnel, local: str) -> Negotiated:
    """A TIC tunnel in the shape the data plane takes.

    Raises:
        TicClientError: (permanent) a tunnel type we do not run, a disabled tunnel, or a
            dynamic one without its secret.
    """
    kind = TYPES.get(tunnel.type)
    if kind is None:
        raise TicClientError(
            f"tunnel {tunnel.tunnel_id} is of type {tunnel.type!r}, not one we run",
            permanent=True,
        )
    if not tunnel.enabled:
        raise TicClientError(f"tunnel {tunnel.tunnel_id} is not enabled", permanent=True)
    if kind != "v6v4" and not tunnel.password:
        raise TicClientError(f"tunnel {tunnel.tunnel_id} has no password", permanent=True)
    return Negotiated(
        server=server,
        server_address=tunnel.ipv4_pop,
        port=AYIYA_PORT if kind == "ayiya" else TIC_PORT,
        transport="udp" if kind == "ayiya" else "tic",
        version="tic",
        mechanism="md5",
        requested_type=tunnel.type,
        tunnel_type=kind,
        server_ipv4=tunnel.ipv4_pop,
        server_ipv6=tunnel.ipv6_pop,
        client_ipv4=local if kind != "v6v4" else tunnel.ipv4_endpoint,
        client_ipv6=tunnel.ipv6_endpoint,
        local_address=local,
        keepalive_interval=tunnel.heartbeat_interval,
        keepalive_address=tunnel.ipv6_pop,
        secret=tunnel.password,
        mtu=tunnel_mtu(tunnel),
        link_prefix_length=link_prefix_length(tunnel),
    )


async def tic_negotiate(
    server: str,
    *,
    username: str,
    password: str,
    tunnel_id: str | None = None,
    port: int = TIC_PORT,
    starttls: bool = False,
    require_tls: bool = False,
    verify: bool = True,
    timeout: float = 30.0,
) -> Negotiated:
    """Fetch the tunnel over TIC (the account's only one unless ``tunnel_id``).

    ``require_tls`` (AICCU's ``requiretls``) implies ``starttls`` and gives up, rather than
    going on in plaintext, when the server refuses it.

    Raises:
        TicClientError: the login, the tunnel or the connection failed (``permanent`` says
            whether another attempt could help).
    """
    result = await fetch(
        server,
        username,
        password,
        port=port,
        tunnel_id=tunnel_id,
        starttls=starttls,
        require_tls=require_tls,
        verify=verify,
        timeout=timeout,
    )
    if result.tunnel is None:
        raise TicClientError("the server described no tunnel")
    local = local_ipv4_towards(result.tunnel.ipv4_pop, AYIYA_PORT)
    if local is None:
        raise TicClientError(f"no route to the tunnel server {result.tunnel.ipv4_pop}")
    return as_negotiated(server, result.tunnel, local)
