"""The learnt endpoint and liveness of one dynamic tunnel (AYIYA or heartbeat), sans-IO.

sixxsd (sixxs.md §3.8, §4.2): every datagram that passes all checks, keepalives included,
sets the tunnel's remote address (and, for AYIYA, port) to the datagram's source, the local
address to where it was sent, and marks the tunnel up. NAT rebinding is followed that way.
A tunnel silent for ``silence`` seconds (sixxsd: 120) goes down until the next valid datagram.
"""

from __future__ import annotations

from dataclasses import dataclass

#: sixxsd marks a dynamic tunnel down after this long without a valid beat or packet.
DEFAULT_SILENCE = 120.0

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class EndpointUpdate:
    """What one valid datagram changed."""

    remote: Address
    local: Address | None
    #: The remote address or port differs from the one learnt before (or none was).
    moved: bool
    #: The tunnel was down (or never up) and is up now.
    came_up: bool


class DynamicEndpoint:
    """Where a dynamic tunnel's client is, and whether it is alive."""

    def __init__(self, silence: float = DEFAULT_SILENCE) -> None:
        if silence <= 0:
            raise ValueError("silence must be positive")
        self.silence = silence
        self.remote: Address | None = None
        self.local: Address | None = None
        self.last_beat: float | None = None
        self.up = False

    def beat(self, remote: Address, local: Address | None, now: float) -> EndpointUpdate:
        """Record a datagram that passed every check, from ``remote`` to ``local``."""
        moved = remote != self.remote
        came_up = not self.up
        self.remote, self.local = remote, local
        self.last_beat = now
        self.up = True
        return EndpointUpdate(remote, local, moved, came_up)

    def get_timer(self) -> float | None:
        """When the tunnel goes down unless another beat arrives, or None if it is down."""
        if not self.up or self.last_beat is None:
            return None
        return self.last_beat + self.silence

    def handle_timer(self, now: float) -> bool:
        """Mark the tunnel down if it has been silent too long; True if it just went down.

        The remote address is kept: traffic for a down tunnel is refused, not misdirected,
        and the next valid datagram sets it anyway.
        """
        timer = self.get_timer()
        if timer is None or now < timer:
            return False
        self.up = False
        return True
