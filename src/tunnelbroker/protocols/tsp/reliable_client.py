"""The client half of TSP's reliable UDP (RFC 5572 §3.2), sans-IO.

Each signalling message goes out with the 8-byte header ``0xF | seq (28 bits) | timestamp``;
the server answers with exactly one datagram echoing that header. Like gogoc (tsp.md §2.3):

* sequence numbers start at 240 (``f0 00 00 f0``) and grow by one per new message;
* one message is outstanding at a time, and only the reply carrying its sequence number
  counts; anything else is stale and dropped;
* a retransmission reuses the sequence number with a fresh timestamp, so that the echoed
  timestamp always measures the round trip of the copy that was answered (no Karn ambiguity).

The retransmission timeout is Jacobson's (g = 1/8, h = 1/4, RTO = srtt + 4·rttvar) as in
Stevens UNP §22.5, which the RFC cites. It is clamped to [0.5, 30] s where gogoc uses [2, 30]:
on a LAN or loopback we need not wait 2 s, and the backoff is still exponential. The RTO
doubles on every retransmission of the same message; after ``max_tries`` transmissions
without an answer :meth:`handle_timer` raises :class:`RetransmitTimeout`. A flow that has never
been answered gives up after ``max_tries_unanswered`` (gogoc: 3), so that a client can switch
to TCP quickly when nothing listens on UDP.

Time is passed in (seconds, any monotonic origin); timestamps on the wire are milliseconds
since ``base_time``, modulo 2**32.
"""

from __future__ import annotations

from tunnelbroker.protocols.tsp.errors import DecodeError, LocalProtocolError, TspError
from tunnelbroker.protocols.tsp.framing import SEQ_MASK, UdpHeader, split_datagram

__all__ = ["GOGOC_FIRST_SEQ", "ReliableUdpClient", "RetransmitTimeout"]

#: gogoc's first sequence number on every socket (a workaround for old HexOS servers).
GOGOC_FIRST_SEQ = 240

_U32 = 0x1_0000_0000
# Jacobson/Karels gains.
_G = 1 / 8
_H = 1 / 4


class RetransmitTimeout(TspError):
    """The outstanding message was sent ``tries`` times without an answer."""

    def __init__(self, tries: int, answered_before: bool) -> None:
        what = "no answer" if not answered_before else "the server stopped answering"
        super().__init__(f"{what} after {tries} transmissions")
        self.tries = tries
        #: Whether any earlier message on this flow was answered.
        self.answered_before = answered_before


class ReliableUdpClient:
    """Sequence numbers, RTT estimation and retransmission for one UDP signalling flow."""

    def __init__(
        self,
        *,
        base_time: float,
        first_seq: int = GOGOC_FIRST_SEQ,
        initial_rto: float = 1.0,
        min_rto: float = 0.5,
        max_rto: float = 30.0,
        max_tries: int = 8,
        max_tries_unanswered: int = 3,
    ) -> None:
        """Args:
        base_time: the time timestamps count from (the socket's opening, for gogoc).
        first_seq: the first sequence number (28 bits).
        initial_rto: the RTO before any round trip was measured (RFC 6298 §2.1: 1 s).
        min_rto, max_rto: clamp of the computed RTO and of its backoff.
        max_tries: transmissions of one message (the first included) before giving up.
        max_tries_unanswered: the same while nothing on the flow has been answered yet.
        """
        if not 0 <= first_seq <= SEQ_MASK:
            raise LocalProtocolError(f"first_seq out of range: {first_seq}")
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise LocalProtocolError("need 0 < min_rto <= initial_rto <= max_rto")
        if max_tries < 1 or max_tries_unanswered < 1:
            raise LocalProtocolError("max_tries must be positive")
        self._base = base_time
        self._next_seq = first_seq
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._max_tries = max_tries
        self._max_tries_unanswered = max_tries_unanswered
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = initial_rto
        # The outstanding message: its sequence number, payload, transmissions so far, the
        # current (backed-off) timeout and when it expires.
        self._seq: int | None = None
        self._payload = b""
        self._tries = 0
        self._timeout = initial_rto
        self._deadline: float | None = None
        self._answered = False
        #: Retransmissions sent over the flow's lifetime.
        self.retransmissions = 0

    # ---------------------------------------------------------------- state

    @property
    def rto(self) -> float:
        """The current retransmission timeout for a new message, seconds."""
        return self._rto

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time, or None before the first sample."""
        return self._srtt

    @property
    def outstanding(self) -> bool:
        """True while a message waits for its reply."""
        return self._seq is not None

    @property
    def next_seq(self) -> int:
        return self._next_seq

    # ---------------------------------------------------------------- sending

    def wrap(self, payload: bytes, now: float) -> bytes:
        """Start sending ``payload`` (``b""``: a header-only probe); returns the datagram.

        Raises:
            LocalProtocolError: a message is still outstanding (one at a time).
        """
        if self._seq is not None:
            raise LocalProtocolError("a message is still waiting for its reply")
        self._seq = self._next_seq
        self._next_seq = (self._next_seq + 1) & SEQ_MASK
        self._payload = payload
        self._tries = 0
        self._timeout = self._rto
        return self._transmit(now)

    def _transmit(self, now: float) -> bytes:
        assert self._seq is not None
        self._tries += 1
        self._deadline = now + self._timeout
        return UdpHeader(self._seq, self._timestamp(now)).to_wire() + self._payload

    def _timestamp(self, now: float) -> int:
        return int(round((now - self._base) * 1000)) % _U32

    # ---------------------------------------------------------------- receiving

    def receive(self, datagram: bytes, now: float) -> bytes | None:
        """The reply's payload (maybe ``b""``) if it answers the outstanding message.

        Returns None for anything else: no message outstanding, another sequence number (a
        late reply to an earlier message), or not a signalling datagram at all.
        """
        try:
            header, payload = split_datagram(datagram)
        except DecodeError:
            return None
        if self._seq is None or header.seq != self._seq:
            return None
        self._sample((self._timestamp(now) - header.timestamp) % _U32 / 1000)
        self._seq = None
        self._deadline = None
        self._payload = b""
        self._answered = True
        return payload

    def _sample(self, rtt: float) -> None:
        if rtt > self._max_rto:
            # Not a plausible round trip: a server that does not echo our timestamp.
            return
        if self._srtt is None:
            # RFC 6298 §2.2 for the first measurement.
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar += _H * (abs(rtt - self._srtt) - self._rttvar)
            self._srtt += _G * (rtt - self._srtt)
        self._rto = min(self._max_rto, max(self._min_rto, self._srtt + 4 * self._rttvar))

    # ---------------------------------------------------------------- timer

    def get_timer(self) -> float | None:
        """When the outstanding message times out, or None."""
        return self._deadline

    def handle_timer(self, now: float) -> bytes | None:
        """The retransmission to send if the timer expired, else None.

        Raises:
            RetransmitTimeout: the message was already sent as often as allowed.
        """
        if self._deadline is None or now < self._deadline:
            return None
        limit = self._max_tries if self._answered else self._max_tries_unanswered
        if self._tries >= limit:
            tries = self._tries
            self._seq = None
            self._deadline = None
            raise RetransmitTimeout(tries, self._answered)
        self._timeout = min(self._max_rto, self._timeout * 2)
        self.retransmissions += 1
        return self._transmit(now)
