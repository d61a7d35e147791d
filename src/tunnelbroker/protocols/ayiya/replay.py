"""Replay detection for protocols whose only freshness field is an epoch in seconds.

AYIYA and the heartbeat carry no sequence number: the signed epoch (``time(NULL)`` in AICCU)
is all there is, several packets share one second (AICCU sends three identical NOOPs at start)
and the client's clock may be stepped. sixxsd therefore only checks ``|now - epoch| <= 120``,
which lets anyone who saw a packet replay it for two minutes, from any address: with endpoint
learning that moves the tunnel to the replayer.

Two structures, for two rates:

* :class:`ReplayWindow` (heartbeats: one a minute) remembers every accepted digest for as long
  as its epoch could still pass the clock check, so every exact replay is caught.
* :class:`ReplayCache` (AYIYA: up to line rate) keeps the digests of recent datagrams in a
  fixed 8 KiB table, and the newest epoch accepted. Remembering every datagram of a busy tunnel
  for four minutes is not affordable (tens of MB per tunnel at 100,000 packets/s), and a cap
  would stop the tunnel once reached. What a replay can actually harm is the endpoint: so a
  datagram from a new address moves the tunnel only if it is newer than every datagram
  accepted so far, which no replayed datagram is. Replays from the tunnel's own endpoint are
  caught while their digest is still in the table (always for a quiet tunnel; for the last
  few hundred datagrams of a busy one) and are otherwise a duplicated IP packet, which IP
  allows.
"""

from __future__ import annotations

from enum import Enum

#: Clock window of AICCU and sixxsd (``MAX_CLOCK_OFF``), seconds either way.
CLOCK_WINDOW = 120
#: Digests a ReplayWindow remembers by default (about 105 bytes each, measured).
DEFAULT_CAPACITY = 32768
#: Slots of a ReplayCache by default: 8 bytes each.
DEFAULT_SLOTS = 1024
#: Bytes of each digest kept: a collision only costs one legitimate packet.
_KEY_BYTES = 8


class Verdict(Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"
    STALE = "stale"
    FULL = "full"


class ReplayWindow:
    """Exact-replay detection over a span of epoch seconds, for low rates.

    Memory is bounded by ``capacity`` digests. Past it, the oldest seconds are forgotten and
    ``floor`` moves up: epochs below it are refused as stale, because a replay among them
    could no longer be recognised. A second that alone fills the window refuses further new
    datagrams (:attr:`Verdict.FULL`).

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


class ReplayCache:
    """Recent-replay detection in fixed memory, and the newest epoch. See the module docstring.

    A direct-mapped table: each accepted digest (a SHA-1 or MD5 output, so its bits are
    uniform) takes the slot its bytes 8-9 name and keeps its first 8 bytes there, evicting
    whatever was in it. A datagram whose digest is still in its slot is a replay. The table is
    allocated at the first datagram, so tunnels that never carry traffic cost nothing.

    Call :meth:`check_and_record` only for datagrams that passed the clock check *and* the
    signature check, so forged traffic cannot evict anything.
    """

    __slots__ = ("_keys", "_mask", "newest", "used")

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1 or slots > 65536 or slots & (slots - 1):
            raise ValueError("slots must be a power of two from 1 to 65536")
        self._mask = slots - 1
        self._keys: bytearray | None = None
        #: The newest epoch accepted, or None before the first datagram.
        self.newest: int | None = None
        #: Slots holding a digest.
        self.used = 0

    def __len__(self) -> int:
        return self.used

    @property
    def slots(self) -> int:
        return self._mask + 1

    def seen(self, digest: bytes) -> bool:
        """True if ``digest`` is still in the table."""
        keys = self._keys
        if keys is None:
            return False
        off = (((digest[8] << 8) | digest[9]) & self._mask) << 3
        key = digest[:_KEY_BYTES]
        return key != _EMPTY and keys[off : off + _KEY_BYTES] == key

    def check_and_record(self, epoch: int, digest: bytes, moving: bool = False) -> Verdict:
        """Accept and remember ``digest`` at ``epoch``, or say why not.

        ``moving``: the datagram would move the tunnel to a new address; it must then be
        newer than every datagram accepted before, or it is :attr:`Verdict.STALE`.
        """
        keys = self._keys
        if keys is None:
            keys = self._keys = bytearray((self._mask + 1) * _KEY_BYTES)
        off = (((digest[8] << 8) | digest[9]) & self._mask) << 3
        key = digest[:_KEY_BYTES]
        held = keys[off : off + _KEY_BYTES]
        # An all-zero key would read as an empty slot: such a digest (one in 2^64) is not
        # remembered.
        remember = key != _EMPTY
        if remember and held == key:
            return Verdict.REPLAYED
        newest = self.newest
        if moving and newest is not None and epoch <= newest:
            return Verdict.STALE
        if remember:
            if held == _EMPTY:
                self.used += 1
            keys[off : off + _KEY_BYTES] = key
        if newest is None or epoch > newest:
            self.newest = epoch
        return Verdict.ACCEPTED


_EMPTY = bytes(_KEY_BYTES)
