"""Types of the C fast path (``_fastpath.c``)."""

KIND_PUNT: int
KIND_V6V4: int
KIND_V6UDPV4: int
KIND_AYIYA: int
PUNT_TUN: int
PUNT_PROTO41: int
PUNT_UDP: int
PUNT_AYIYA: int
BATCH: int
MAX_PREFIXES: int
PUNT_CAP: int
REPLAY_SLOTS: int
#: 1 where AYIYA's SHA-1 runs in sixteen AVX-512 lanes (sha1x16.c), 0 where it does not.
SHA1_LANES: int
#: Signatures in one batch from which the lanes are used.
X16_MIN: int

def sha1_lanes(messages: list[tuple[bytes, ...]]) -> list[bytes]: ...

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
    def add_ayiya(self, fd: int) -> None: ...
    def remove_ayiya(self) -> None: ...
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
        identity: bytes = b"",
        local: bytes = b"",
        key: bytes = b"",
        clock_window: int = 120,
    ) -> None: ...
    def set_endpoint(self, tunnel_id: int, remote: bytes, port: int) -> bool: ...
    def remove_tunnel(self, tunnel_id: int) -> Counters | None: ...
    #: 0 accepted, 1 replayed, 2 stale (replay.Verdict); KeyError: no such AYIYA tunnel.
    def ayiya_replay_check(
        self, tunnel_id: int, epoch: int, digest: bytes, moving: bool
    ) -> int: ...
    def ayiya_replay_state(self, tunnel_id: int) -> tuple[int | None, int]: ...
    def ayiya_replay_seen(self, tunnel_id: int, digest: bytes) -> bool: ...
    def take_counters(self) -> list[Counters]: ...
    def take_drops(self) -> dict[str, int]: ...
    def take_ayiya_drops(self) -> dict[str, int]: ...
    def take_punts(self, max: int = 256) -> list[Punt]: ...
    def stats(self) -> dict[str, int]: ...
