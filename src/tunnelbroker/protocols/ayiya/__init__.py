"""AYIYA ("Anything In Anything", draft-massar-v6ops-ayiya-02) as AICCU and sixxsd speak it.

Sans-IO: :func:`decode` turns a datagram into an :class:`AyiyaPacket` or an
:class:`AyiyaDrop` (never an exception), :func:`verify` checks identity, clock, SHA-1
signature and replays, :func:`build_forward`/:func:`build_noop` make signed datagrams, and
:class:`AyiyaLink` bundles all of it for one tunnel. Where a tunnel's client is, and whether
it is up, is the tunnel server's (``ForwardingCore.from_ayiya`` and ``silence``). See
docs/sixxs.md.
"""

from tunnelbroker.protocols.ayiya.codec import (
    Header,
    build_forward,
    build_noop,
    check_header,
    check_payload,
    compute_signature,
    decode,
    encode,
    signature_valid,
    signing_key,
)
from tunnelbroker.protocols.ayiya.errors import AyiyaDrop
from tunnelbroker.protocols.ayiya.messages import (
    HEADER_SIZE,
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    PORT,
    AuthMethod,
    AyiyaPacket,
    HashMethod,
    IdentityType,
    OpCode,
)
from tunnelbroker.protocols.ayiya.replay import CLOCK_WINDOW, ReplayCache, ReplayWindow, Verdict
from tunnelbroker.protocols.ayiya.verify import AyiyaLink, Role, verify

__all__ = [
    "CLOCK_WINDOW",
    "HEADER_SIZE",
    "NEXT_HEADER_IPV4",
    "NEXT_HEADER_IPV6",
    "NEXT_HEADER_NONE",
    "PORT",
    "AuthMethod",
    "AyiyaDrop",
    "AyiyaLink",
    "AyiyaPacket",
    "HashMethod",
    "Header",
    "IdentityType",
    "OpCode",
    "ReplayCache",
    "ReplayWindow",
    "Role",
    "Verdict",
    "build_forward",
    "build_noop",
    "check_header",
    "check_payload",
    "compute_signature",
    "decode",
    "encode",
    "signature_valid",
    "signing_key",
    "verify",
]
