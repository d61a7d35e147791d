"""Shared fixtures for the TIC tests: the sixxs.md §2.2 tunnel and an in-memory pair."""

from __future__ import annotations

from tunnelbroker.protocols.tic import (
    ClientSettings,
    MemoryBackend,
    ServerSettings,
    StartTls,
    TicClient,
    TicServer,
    TicTunnel,
    TlsRequested,
)
from tunnelbroker.protocols.tic.events import Event

T = 1795323171.0
CHALLENGE = "0085d68fcd0dc670304021476a66accd"

#: The tunnel of the sixxs.md §2.2 transcript.
MOCK_TUNNEL = TicTunnel(
    tunnel_id="T1",
    type="ayiya",
    ipv6_endpoint="2001:db8:1:1::2",
    ipv6_pop="2001:db8:1:1::1",
    ipv6_prefix_length=64,
    pop_id="mock01",
    ipv4_endpoint="ayiya",
    ipv4_pop="127.0.0.1",
    password="tunnelpw",
    heartbeat_interval=5,
    mtu=1280,
    name="Mock tunnel",
)


def fixed_random(n: int) -> bytes:
    return bytes.fromhex(CHALLENGE)[:n]


def backend(*tunnels: TicTunnel) -> MemoryBackend:
    b = MemoryBackend()
    b.add_user("TEST-SIXXS", "secretpass", tunnels or (MOCK_TUNNEL,))
    return b


def server(b: MemoryBackend | None = None, **settings: object) -> TicServer:
    return TicServer(
        ServerSettings(host_name="mock", **settings),  # type: ignore[arg-type]
        b if b is not None else backend(),
        peer="127.0.0.1",
        now=T,
        random_bytes=fixed_random,
    )


def run_pair(client: TicClient, srv: TicServer, now: float = T) -> tuple[list[Event], list[Event]]:
    """Shuttle bytes between the machines until neither has more; TLS is a no-op here."""
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(200):
        moved = False
        for write in srv.data_to_send():
            client.receive_data(write, now)
            moved = True
        out = client.data_to_send()
        if out:
            srv.receive_data(out, now)
            moved = True
        while (ev := srv.next_event()) is not None:
            server_events.append(ev)
            if isinstance(ev, StartTls):
                srv.tls_started()
        while (ev := client.next_event()) is not None:
            client_events.append(ev)
            if isinstance(ev, TlsRequested):
                client.tls_started()
                moved = True
        if not moved:
            break
    return client_events, server_events


def client(**kw: object) -> TicClient:
    values: dict[str, object] = {"username": "TEST-SIXXS", "password": "secretpass"}
    values.update(kw)
    return TicClient(ClientSettings(**values), now=T)  # type: ignore[arg-type]
