"""Getting a SixXS-style tunnel: log in over TIC and describe the tunnel as the data plane
needs it (:class:`~tunnelbroker.client.tsp.Negotiated`, like a TSP grant).

``6in4-static`` becomes ``v6v4``; ``6in4-heartbeat`` becomes ``heartbeat`` (6in4 plus a
signed beat to UDP 3740 every ``Heartbeat_Interval``); ``ayiya`` stays ``ayiya`` (IPv6 in
signed UDP datagrams to port 5072, which also crosses NATs).
"""

from __future__ import annotations

from tunnelbroker.client.dataplane import local_ipv4_towards
from tunnelbroker.client.tic import TicClientError, fetch
from tunnelbroker.client.tsp import Negotiated
from tunnelbroker.protocols.ayiya import PORT as AYIYA_PORT
from tunnelbroker.protocols.tic import PORT as TIC_PORT
from tunnelbroker.protocols.tic import TicTunnel

#: TIC's tunnel types and what this client runs them as.
TYPES = {"ayiya": "ayiya", "6in4-heartbeat": "heartbeat", "6in4-static": "v6v4"}


def as_negotiated(server: str, tunnel: TicTunnel, local: str) -> Negotiated:
    """A TIC tunnel in the shape the data plane takes."""
    kind = TYPES.get(tunnel.type)
    if kind is None:
        raise TicClientError(
            f"tunnel {tunnel.tunnel_id} is of type {tunnel.type!r}, not one we run"
        )
    if not tunnel.enabled:
        raise TicClientError(f"tunnel {tunnel.tunnel_id} is not enabled")
    if kind != "v6v4" and not tunnel.password:
        raise TicClientError(f"tunnel {tunnel.tunnel_id} has no password")
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
    )


async def tic_negotiate(
    server: str,
    *,
    username: str,
    password: str,
    tunnel_id: str | None = None,
    port: int = TIC_PORT,
    starttls: bool = False,
    verify: bool = True,
    timeout: float = 30.0,
) -> Negotiated:
    """Fetch the tunnel over TIC (the account's only one unless ``tunnel_id``).

    Raises:
        TicClientError: the login, the tunnel or the connection failed.
    """
    result = await fetch(
        server,
        username,
        password,
        port=port,
        tunnel_id=tunnel_id,
        starttls=starttls,
        verify=verify,
        timeout=timeout,
    )
    if result.tunnel is None:
        raise TicClientError("the server described no tunnel")
    local = local_ipv4_towards(result.tunnel.ipv4_pop, AYIYA_PORT)
    if local is None:
        raise TicClientError(f"no route to the tunnel server {result.tunnel.ipv4_pop}")
    return as_negotiated(server, result.tunnel, local)
