"""The server half of TSP's reliable UDP (RFC 5572 §3.2), per peer, sans-IO.

Every signalling datagram from the client carries an 8-byte header (0xF, a 28-bit sequence
number, a 32-bit timestamp). The server MUST echo both fields unaltered in its reply, and must
answer *every* datagram (gogoc waits for the reply carrying its sequence number even after
payload-less writes, tsp.md §2.3). Retransmissions reuse the sequence number, so:

* the same sequence as the last answered datagram: resend the cached reply, do not reprocess;
* the same sequence as a datagram whose answer is still being decided: stay silent (the client
  keeps retransmitting; the answer goes out once the decision is made);
* an older sequence (serial-number arithmetic over 28 bits): a stray, dropped;
* anything else is new.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from tunnelbroker.protocols.tsp.framing import SEQ_MASK, UdpHeader, split_datagram

_HALF = (SEQ_MASK + 1) // 2


def seq_newer(a: int, b: int) -> bool:
    """True if sequence ``a`` comes after ``b`` (RFC 1982 style, 28-bit)."""
    return a != b and ((a - b) & SEQ_MASK) < _HALF


class Disposition(Enum):
    #: A new message: feed ``payload`` to the session.
    NEW = auto()
    #: A retransmission of the last answered datagram: send ``reply`` again.
    RESEND = auto()
    #: A retransmission of the datagram being decided, or a stray: do nothing.
    DROP = auto()


@dataclass(frozen=True, slots=True)
class Received:
    disposition: Disposition
    header: UdpHeader | None = None
    payload: bytes = b""
    reply: bytes = b""


class ReliableUdpServer:
    """Per-peer duplicate detection and reply cache. Bounded: one cached reply."""

    __slots__ = ("_last_seq", "_last_reply", "_pending", "duplicates", "strays")

    def __init__(self) -> None:
        self._last_seq: int | None = None
        self._last_reply = b""
        self._pending: UdpHeader | None = None
        #: Retransmissions answered from the cache.
        self.duplicates = 0
        #: Old or out-of-order datagrams dropped.
        self.strays = 0

    @property
    def pending(self) -> UdpHeader | None:
        """The header of the datagram whose answer is outstanding, if any."""
        return self._pending

    def receive(self, datagram: bytes) -> Received:
        """Classify one signalling datagram. Raises DecodeError for a bad header."""
        header, payload = split_datagram(datagram)
        if self._pending is not None:
            if header.seq == self._pending.seq or not seq_newer(header.seq, self._pending.seq):
                return Received(Disposition.DROP, header)
            # A newer message while one is pending means the client moved on (it only does so
            # after giving up); the pending answer is abandoned.
            self._pending = None
        elif self._last_seq is not None:
            if header.seq == self._last_seq:
                self.duplicates += 1
                # Echo the retransmission's own timestamp: the client measures RTT from it.
                return Received(
                    Disposition.RESEND, header, reply=header.to_wire() + self._last_reply
                )
            if not seq_newer(header.seq, self._last_seq):
                self.strays += 1
                return Received(Disposition.DROP, header)
        self._pending = header
        return Received(Disposition.NEW, header, payload)

    def reply(self, payload: bytes) -> bytes:
        """The datagram answering the pending message; cached for retransmissions."""
        if self._pending is None:
            raise RuntimeError("no message is awaiting a reply")
        datagram = self._pending.to_wire() + payload
        self._last_seq = self._pending.seq
        self._last_reply = payload
        self._pending = None
        return datagram
