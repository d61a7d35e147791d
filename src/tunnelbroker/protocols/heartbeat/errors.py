"""Why a heartbeat datagram was dropped; the value is the metrics label."""

from __future__ import annotations

from enum import Enum


class HeartbeatDrop(Enum):
    #: 256 bytes or more (sixxsd's limit).
    TOO_LONG = "too_long"
    #: Does not start with ``HEARTBEAT TUNNEL``.
    NOT_HEARTBEAT = "not_heartbeat"
    #: Not ASCII, or not exactly six fields separated by single spaces.
    MALFORMED = "malformed"
    #: The tunnel address is not an IPv6 address.
    BAD_ADDRESS = "bad_address"
    #: The second field is neither ``sender`` nor an IP address.
    BAD_SENDER = "bad_sender"
    #: The second field names an address other than the datagram's source.
    SENDER_MISMATCH = "sender_mismatch"
    #: The time is not a decimal number.
    BAD_TIME = "bad_time"
    #: The time is more than the clock window (120 s) away from our clock.
    CLOCK_SKEW = "clock_skew"
    #: The last field is not 32 hex digits.
    BAD_DIGEST = "bad_digest"
    #: The MD5 does not match the tunnel secret.
    BAD_SIGNATURE = "bad_signature"
    #: No tunnel has this address (the caller's lookup).
    UNKNOWN_TUNNEL = "unknown_tunnel"
    #: The tunnel is disabled or not a heartbeat tunnel (the caller's decision).
    TUNNEL_DISABLED = "tunnel_disabled"
    #: This exact beat was accepted before.
    REPLAYED = "replayed"
    #: Older than what the replay window still remembers.
    STALE = "stale"
    #: The replay window is full for this second.
    REPLAY_WINDOW_FULL = "replay_window_full"
