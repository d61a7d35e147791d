"""A replay window for protocols whose only freshness field is an epoch in seconds.

AYIYA and the heartbeat carry no sequence number: the signed epoch (``time(NULL)`` in AICCU)
is all there is, several packets share one second (AICCU sends three identical NOOPs at start)
and the client's clock may be stepped. sixxsd therefore only checks ``|now - epoch| <= 120``,
which lets anyone who saw a packet replay it for two minutes, from any address: with endpoint
learning that moves the tunnel to the replayer.

This window remembers the signature (any per-datagram digest) of every datagram it accepted,
bucketed by epoch second, for as long as that epoch could still pass the clock check. So an
exact replay is always caught, while a different datagram from the same second, or an older
second after a clock step, is accepted: nothing requires epochs to increase.

Memory is bounded by ``capacity`` digests. Past it, the oldest seconds are forgotten and
``floor`` moves up: epochs below it are refused as stale, because a replay among them could no
longer be recognised. A second that alone fills the window refuses further new datagrams
(:attr:`Verdict.FULL`): a tunnel sending more than ``capacity`` packets in one second.
"""

from __future__ import annotations

from enum import Enum

#: Clock window of AICCU and sixxsd (``MAX_CLOCK_OFF``), seconds either way.
CLOCK_WINDOW = 120
#: Digests remembered per tunnel by default (about 105 bytes each, measured).
DEFAULT_CAPACITY = 32768
#: Bytes of each digest kept: a collision only costs one legitimate packet.
_KEY_BYTES = 8


class Verdict(Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"
    STALE = "stale"
    FULL = "full"


class ReplayWindow:
    """Exact-replay detection over a span of epoch seconds. See the module docstring.

    Call :meth:`check_and_record` only for datagrams that passed the clock check *and* the
    signature check, so forged traffic cannot fill the window.
    """

    def __init__(self, span: int = 2 * CLOCK_WINDOW, capacity: int = DEFAULT_CAPACITY) -> None:
        """Args:
        span: seconds of epochs remembered below the newest one. Twice the clock window
            covers every epoch the clock check can still let through.
        capacity: digests remembered at most.
        """
        if span < 0 or capacity < 1:
            raise ValueError("span must be >= 0 and capacity >= 1")
        self.span = span
        self.capacity = capacity
        self.newest: int | None = None
        #: Epochs below this were forgotten under memory pressure.
        self.floor: int | None = None
        self._buckets: dict[int, set[bytes]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def check_and_record(self, epoch: int, digest: bytes) -> Verdict:
        """Accept and remember ``digest`` at ``epoch``, or say why not."""
        if self.floor is not None and epoch < self.floor:
            return Verdict.STALE
        if self.newest is not None and epoch < self.newest - self.span:
            return Verdict.STALE
        key = digest[:_KEY_BYTES]
        bucket = self._buckets.get(epoch)
        if bucket is not None and key in bucket:
            return Verdict.REPLAYED
        if self.newest is None or epoch > self.newest:
            self.newest = epoch
            self._expire(epoch - self.span)
        while self._size >= self.capacity:
            oldest = min(self._buckets)
            if oldest >= epoch:
                # Only this second (or newer ones, where live traffic goes) is left to shed.
                return Verdict.FULL
            self._drop(oldest)
            self.floor = oldest + 1
        if bucket is None:
            bucket = self._buckets[epoch] = set()
        bucket.add(key)
        self._size += 1
        return Verdict.ACCEPTED

    def _expire(self, below: int) -> None:
        for epoch in [e for e in self._buckets if e < below]:
            self._drop(epoch)

    def _drop(self, epoch: int) -> None:
        self._size -= len(self._buckets.pop(epoch))
