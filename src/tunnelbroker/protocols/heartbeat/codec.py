"""Heartbeat lines (draft-massar-v6ops-heartbeat; sixxs.md §4): parse, sign, verify, build.

One UDP datagram to port 3740, ASCII, no newline from AICCU::

    HEARTBEAT TUNNEL <client tunnel IPv6> <IPv4|"sender"> <epoch> <md5hex>

The MD5 is taken over the same line with the tunnel secret in place of the digest, using the
fields exactly as sent. ``sender`` means "the datagram's source address"; an explicit address
must equal that source (sixxsd), so the learnt endpoint is always the source.

Checks, in sixxsd's order with the replay window last (only authentic beats are remembered):
prefix and fields, address, sender, time within ±120 s, MD5, replay.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from tunnelbroker.protocols.ayiya.replay import CLOCK_WINDOW, ReplayWindow, Verdict
from tunnelbroker.protocols.heartbeat.errors import HeartbeatDrop

#: UDP port of the heartbeat protocol, hard-coded in AICCU.
PORT = 3740
#: sixxsd refuses messages of this size or more.
MAX_SIZE = 256
PREFIX = "HEARTBEAT TUNNEL "
#: The second field when the client means "whatever address this came from".
SENDER = "sender"
_HEX = frozenset("0123456789abcdefABCDEF")

_REPLAY_DROPS = {
    Verdict.REPLAYED: HeartbeatDrop.REPLAYED,
    Verdict.STALE: HeartbeatDrop.STALE,
    Verdict.FULL: HeartbeatDrop.REPLAY_WINDOW_FULL,
}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One parsed beat. The ``*_text`` fields are kept as sent: the MD5 covers them."""

    address: ipaddress.IPv6Address
    address_text: str
    #: None for the literal ``sender``.
    sender: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    sender_text: str
    epoch: int
    epoch_text: str
    #: 32 lowercase hex digits.
    digest: str

    def signed_text(self, secret: str) -> str:
        """The line the MD5 is computed over."""
        return f"{PREFIX}{self.address_text} {self.sender_text} {self.epoch_text} {secret}"


def compute_digest(address: str, sender: str, epoch: str, secret: str) -> str:
    """``md5hex("HEARTBEAT TUNNEL <address> <sender> <epoch> <secret>")``."""
    line = f"{PREFIX}{address} {sender} {epoch} {secret}"
    return hashlib.md5(line.encode()).hexdigest()


def build(
    address: ipaddress.IPv6Address | str, secret: str, now: float, sender: str = SENDER
) -> bytes:
    """A signed beat, as AICCU sends it (``sender`` unless an address is given)."""
    address_text = str(address)
    epoch = str(int(now))
    if " " in sender or not sender:
        raise ValueError("sender is one word")
    digest = compute_digest(address_text, sender, epoch, secret)
    return f"{PREFIX}{address_text} {sender} {epoch} {digest}".encode("ascii")


def parse(datagram: bytes) -> Heartbeat | HeartbeatDrop:
    """Parse one datagram (without checking time or signature). Never raises."""
    if len(datagram) >= MAX_SIZE:
        return HeartbeatDrop.TOO_LONG
    try:
        line = datagram.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        return HeartbeatDrop.MALFORMED
    if not line.startswith(PREFIX):
        return HeartbeatDrop.NOT_HEARTBEAT
    fields = line[len(PREFIX) :].split(" ")
    if len(fields) != 4 or not all(fields):
        return HeartbeatDrop.MALFORMED
    address_text, sender_text, epoch_text, digest = fields
    try:
        address = ipaddress.IPv6Address(address_text)
    except ValueError:
        return HeartbeatDrop.BAD_ADDRESS
    sender: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if sender_text != SENDER:
        try:
            sender = ipaddress.ip_address(sender_text)
        except ValueError:
            return HeartbeatDrop.BAD_SENDER
    if not (epoch_text.isascii() and epoch_text.isdigit()) or len(epoch_text) > 20:
        return HeartbeatDrop.BAD_TIME
    if len(digest) != 32 or not set(digest) <= _HEX:
        return HeartbeatDrop.BAD_DIGEST
    return Heartbeat(
        address, address_text, sender, sender_text, int(epoch_text), epoch_text, digest.lower()
    )


def verify(
    beat: Heartbeat,
    secret: str,
    now: float,
    source: str,
    *,
    replay: ReplayWindow | None = None,
    clock_window: int = CLOCK_WINDOW,
) -> Heartbeat | HeartbeatDrop:
    """Check a parsed beat from ``source`` (the datagram's source IP) against its tunnel.

    Args:
        secret: the tunnel's own secret (TIC's ``Password``), not the account password.
        now: the current time, epoch seconds.
        replay: the tunnel's replay window; None checks the clock only (sixxsd).
    """
    if beat.sender is not None:
        try:
            if ipaddress.ip_address(source) != beat.sender:
                return HeartbeatDrop.SENDER_MISMATCH
        except ValueError:
            return HeartbeatDrop.SENDER_MISMATCH
    if abs(now - beat.epoch) > clock_window:
        return HeartbeatDrop.CLOCK_SKEW
    expected = hashlib.md5(beat.signed_text(secret).encode()).hexdigest()
    if not hmac.compare_digest(expected, beat.digest):
        return HeartbeatDrop.BAD_SIGNATURE
    if replay is not None:
        verdict = replay.check_and_record(beat.epoch, bytes.fromhex(beat.digest))
        if verdict is not Verdict.ACCEPTED:
            return _REPLAY_DROPS[verdict]
    return beat


def receive(
    datagram: bytes,
    secret: str,
    now: float,
    source: str,
    *,
    replay: ReplayWindow | None = None,
    clock_window: int = CLOCK_WINDOW,
) -> Heartbeat | HeartbeatDrop:
    """Parse and verify, for a caller that already knows the tunnel (a client test, a lab)."""
    beat = parse(datagram)
    if isinstance(beat, HeartbeatDrop):
        return beat
    return verify(beat, secret, now, source, replay=replay, clock_window=clock_window)
