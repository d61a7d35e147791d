"""TSP tunnel keepalive (RFC 5572 §4.2 and §6.2), sans-IO: when to probe, and when to give up.

Theory of operation
-------------------
When the broker's answer carries ``<keepalive interval="T" address="K">``, the client sends an
ICMPv6 Echo Request through the tunnel, from its tunnel address to K, every T seconds. "The
client MUST use the keepalive interval sent by the broker", and jitter SHOULD be used, the
send time being drawn from [0.75T, T] (tsp.md §1.5). The broker answers and uses the echoes,
or any other traffic, to find dead tunnels; the client uses the answers to find a dead path
(a NAT that forgot its mapping, a broker restart, a new address) and then signals again.

Like gogoc (tsp.md §2.6), each echo gets ``timeout`` seconds (5 s) for its reply, and
``max_missed`` (3) echoes in a row without one make the tunnel :attr:`~KeepaliveMachine.dead`.
Several echoes may be outstanding at once when T is shorter than the timeout; each one that
expires counts once. A reply to any outstanding echo proves the path and clears the count,
and also retires the older echoes still waiting (the path is alive, their replies are moot).

The machine never reads a clock or draws random numbers: ``now`` (seconds, any monotonic
origin) and ``rand01`` (uniform in [0, 1)) are passed in, so the schedule is exact in tests.

Driving it::

    ka.next_send(now, random())          # arm the first echo
    while not ka.dead:
        sleep until ka.get_timer()
        ka.handle_timer(now)             # count expired echoes as missed
        if (pkt := ka.due(now)) is not None:
            send pkt into the tunnel
            ka.next_send(now, random())  # arm the next one
    # and for every packet out of the tunnel: if ka.receive(pkt, now): it was ours, swallow it
"""

from __future__ import annotations

import struct

from tunnelbroker.tunnelserver.packet import (
    build_ipv4,
    build_ipv6,
    icmpv6_checksum,
    internet_checksum,
)

__all__ = ["KeepaliveMachine"]

_ECHO_REQUEST = 128
_ECHO_REPLY = 129
_NEXT_HEADER_ICMPV6 = 58
# ICMPv4 (RFC 792), for v4v6 tunnels whose keepalive address is IPv4.
_ECHO_REQUEST4 = 8
_ECHO_REPLY4 = 0
_PROTOCOL_ICMP = 1
# Type, code, checksum, identifier, sequence number (RFC 4443 §4.1).
_ECHO = struct.Struct("!BBHHH")
#: Payload of our echoes, so they are recognisable in a capture.
_PAYLOAD = b"tunnelbroker-keepalive"


class KeepaliveMachine:
    """Schedules keepalive echoes and counts the ones that go unanswered.

    Args:
        interval: T, the broker's keepalive interval in seconds (> 0).
        address: the keepalive address, the echoes' destination: 16 bytes (ICMPv6 echoes)
            or 4 bytes (ICMPv4 echoes, for a v4v6 tunnel).
        source: our tunnel address, their source, of the same family.
        ident: the ICMPv6 echo identifier (0..65535; gogoc uses its pid).
        timeout: seconds each echo waits for its reply before it counts as missed.
        max_missed: consecutive misses after which the tunnel is dead.

    Raises:
        ValueError: an address is not 16 bytes, or a number is out of range.
    """

    def __init__(
        self,
        interval: float,
        address: bytes,
        source: bytes,
        ident: int,
        timeout: float = 5.0,
        max_missed: int = 3,
    ) -> None:
        if len(address) not in (4, 16) or len(source) != len(address):
            raise ValueError("keepalive addresses are both 16 bytes (IPv6) or both 4 (IPv4)")
        if interval <= 0 or timeout <= 0 or max_missed < 1:
            raise ValueError("interval and timeout must be positive, max_missed at least 1")
        if not 0 <= ident <= 0xFFFF:
            raise ValueError(f"echo identifier {ident} is not 16 bits")
        self.interval = interval
        self.address = address
        self.source = source
        self.ident = ident
        self.timeout = timeout
        self.max_missed = max_missed
        #: Consecutive echoes that went unanswered.
        self.missed = 0
        #: Echoes sent and replies matched, over the machine's life.
        self.sent = 0
        self.answered = 0
        #: Round-trip time of the last matched reply, seconds.
        self.last_rtt: float | None = None
        self._seq = 0
        self._send_at: float | None = None
        # Outstanding echoes: sequence number -> (sent at, reply deadline), oldest first.
        self._waiting: dict[int, tuple[float, float]] = {}

    # ------------------------------------------------------------------ schedule

    def next_send(self, now: float, rand01: float) -> float:
        """Arm the next echo at ``now + T * (0.75 + 0.25 * rand01)``; returns that time."""
        rand01 = min(max(rand01, 0.0), 1.0)
        self._send_at = now + self.interval * (0.75 + 0.25 * rand01)
        return self._send_at

    def due(self, now: float) -> bytes | None:
        """The echo request to send now, if one is due; the caller then arms the next one."""
        if self._send_at is None or now < self._send_at:
            return None
        self._send_at = None
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        v4 = len(self.address) == 4
        body = _ECHO.pack(_ECHO_REQUEST4 if v4 else _ECHO_REQUEST, 0, 0, self.ident, seq)
        body += _PAYLOAD
        if v4:
            cksum = internet_checksum(body)
        else:
            cksum = icmpv6_checksum(self.source, self.address, body)
        body = body[:2] + cksum.to_bytes(2, "big") + body[4:]
        # A wrapped sequence number may still wait from long ago: the new echo replaces it.
        self._waiting.pop(seq, None)
        self._waiting[seq] = (now, now + self.timeout)
        self.sent += 1
        if v4:
            return build_ipv4(self.source, self.address, _PROTOCOL_ICMP, body)
        return build_ipv6(self.source, self.address, _NEXT_HEADER_ICMPV6, body)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (or :meth:`due`) next has something to do, or None."""
        times = [deadline for _, deadline in self._waiting.values()]
        if self._send_at is not None:
            times.append(self._send_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Count every echo whose reply is overdue at ``now`` as missed."""
        for seq, (_, deadline) in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[seq]
                self.missed += 1

    @property
    def dead(self) -> bool:
        """``max_missed`` echoes in a row went unanswered."""
        return self.missed >= self.max_missed

    # ------------------------------------------------------------------ replies

    def receive(self, pkt: bytes, now: float) -> bool:
        """Whether ``pkt`` (an IPv6 packet out of the tunnel) answers an outstanding echo.

        It must be an ICMPv6 Echo Reply (type 129, code 0, no extension headers) from the
        keepalive address to our source, with a correct checksum, our identifier and the
        sequence number of an echo still waiting. Then the miss count is cleared and True
        returned: the packet is ours and need not reach the host's stack. Never raises.
        """
        if len(self.address) == 4:
            return self._receive4(pkt, now)
        if (
            len(pkt) < 48
            or pkt[0] >> 4 != 6
            or pkt[6] != _NEXT_HEADER_ICMPV6
            or pkt[40] != _ECHO_REPLY
            or pkt[41] != 0
            or (pkt[4] << 8 | pkt[5]) + 40 != len(pkt)
            or pkt[8:24] != self.address
            or pkt[24:40] != self.source
        ):
            return False
        _, _, _, ident, seq = _ECHO.unpack_from(pkt, 40)
        if ident != self.ident or seq not in self._waiting:
            return False
        # Verified over the message with its checksum in place: a correct one sums to 0.
        if icmpv6_checksum(self.source, self.address, pkt[40:]) != 0:
            return False
        return self._answered(seq, now)

    def _receive4(self, pkt: bytes, now: float) -> bool:
        """:meth:`receive` for ICMPv4: an Echo Reply from the keepalive address to us."""
        n = len(pkt)
        if n < 28 or pkt[0] >> 4 != 4 or pkt[9] != _PROTOCOL_ICMP:
            return False
        ihl = (pkt[0] & 0x0F) * 4
        if (
            ihl < 20
            or n < ihl + 8
            or (pkt[2] << 8 | pkt[3]) != n
            or pkt[12:16] != self.address
            or pkt[16:20] != self.source
            or pkt[ihl] != _ECHO_REPLY4
            or pkt[ihl + 1] != 0
        ):
            return False
        _, _, _, ident, seq = _ECHO.unpack_from(pkt, ihl)
        if ident != self.ident or seq not in self._waiting:
            return False
        if internet_checksum(pkt[ihl:]) != 0:
            return False
        return self._answered(seq, now)

    def _answered(self, seq: int, now: float) -> bool:
        sent_at, _ = self._waiting[seq]
        # Echoes sent before this one are answered by implication (dicts keep insertion order).
        for s in list(self._waiting):
            del self._waiting[s]
            if s == seq:
                break
        self.missed = 0
        self.answered += 1
        self.last_rtt = now - sent_at
        return True
