"""Why an AYIYA datagram was dropped: one enum, so the data plane can count drops by reason."""

from __future__ import annotations

from enum import Enum


class AyiyaDrop(Enum):
    """The reason a received datagram was not accepted. The value is the metrics label."""

    #: Shorter than its fixed header, identity and signature, or the inner packet is cut short.
    TRUNCATED = "truncated"
    #: IdLen is not 4 (a 16-byte identity), the only length AICCU and sixxsd use.
    BAD_ID_LENGTH = "bad_id_length"
    #: IdType is undefined (>2) or not "integer" (1), the only type AICCU and sixxsd use.
    BAD_ID_TYPE = "bad_id_type"
    #: SigLen does not fit the hash method (SHA-1: 5 words).
    BAD_SIGNATURE_LENGTH = "bad_signature_length"
    #: Hash method undefined (>3) or not accepted (none, MD5, UMAC: only SHA-1 is).
    BAD_HASH_METHOD = "bad_hash_method"
    #: Authentication method undefined (>2) or not "shared secret".
    BAD_AUTH_METHOD = "bad_auth_method"
    #: OpCode undefined, or not one this side acts on (AICCU drops NOOPs from the PoP).
    BAD_OPCODE = "bad_opcode"
    #: Next Header other than 4 (IPv4), 41 (IPv6) or 59 (none).
    BAD_NEXT_HEADER = "bad_next_header"
    #: The payload does not match Next Header (wrong IP version, length, data after 59).
    PAYLOAD_MISMATCH = "payload_mismatch"
    #: The identity is not the peer's (client side: not the PoP's tunnel address).
    WRONG_IDENTITY = "wrong_identity"
    #: No tunnel has this identity (server side; decided by the caller's lookup).
    UNKNOWN_IDENTITY = "unknown_identity"
    #: The tunnel exists but is disabled or not an AYIYA tunnel (caller's decision).
    TUNNEL_DISABLED = "tunnel_disabled"
    #: The epoch is more than the clock window (120 s) away from our clock.
    CLOCK_SKEW = "clock_skew"
    #: The SHA-1 signature does not match the tunnel secret.
    BAD_SIGNATURE = "bad_signature"
    #: This exact datagram was accepted before (and is still in the replay cache).
    REPLAYED = "replayed"
    #: From an address other than the tunnel's endpoint, but not newer than every datagram
    #: accepted so far: a replayed datagram must not move the tunnel (docs/sixxs.md).
    STALE_MOVE = "stale_move"
