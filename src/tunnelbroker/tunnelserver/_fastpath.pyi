"""Types of the C fast path (``_fastpath.c``)."""

KIND_PUNT: int
KIND_V6V4: int
KIND_V6UDPV4: int
PUNT_TUN: int
PUNT_PROTO41: int
PUNT_UDP: int
BATCH: int
MAX_PREFIXES: int
PUNT_CAP: int

#: (tunnel id, packets in, packets out, bytes in, bytes out, last seen on the monotonic clock)
Counters = tuple[int, int, int, int, int, float]
#: (kind, UDP socket index or -1, packet, outer IPv4 source, UDP port, our IPv4 address)
Punt = tuple[int, int, bytes, bytes, int, bytes]

class Engine:
    punt_fd: int
    running: bool
    def __init__(self, tun_fd: int, raw41_fd: int = -1) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add_udp(self, fd: int) -> int: ...
    def remove_udp(self, index: int) -> None: ...
    def set_tunnel(
        self,
        tunnel_id: int,
        kind: int,
        remote: bytes,
        port: int,
        server_inner: bytes,
        mtu: int,
        prefixes: list[tuple[bytes, int]],
        sock: int = -1,
    ) -> None: ...
    def remove_tunnel(self, tunnel_id: int) -> Counters | None: ...
    def take_counters(self) -> list[Counters]: ...
    def take_drops(self) -> dict[str, int]: ...
    def take_punts(self, max: int = 256) -> list[Punt]: ...
    def stats(self) -> dict[str, int]: ...
