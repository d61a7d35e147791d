"""AYIYA header field values (draft-massar-v6ops-ayiya-02) and the decoded packet."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum


class IdentityType(IntEnum):
    NONE = 0
    #: An integer of 2^IdLen bytes; with IdLen 4 the sender's tunnel IPv6 address.
    INTEGER = 1
    ASCII = 2


class HashMethod(IntEnum):
    NONE = 0
    MD5 = 1
    SHA1 = 2
    #: Listed in AICCU's enum only; never implemented anywhere.
    UMAC = 3


class AuthMethod(IntEnum):
    NONE = 0
    SHARED_SECRET = 1
    PUBLIC_KEY = 2


class OpCode(IntEnum):
    #: Keepalive ("heartbeat"): updates the endpoint, carries nothing.
    NOOP = 0
    FORWARD = 1
    ECHO_REQUEST = 2
    ECHO_REQUEST_FORWARD = 3
    ECHO_RESPONSE = 4
    MOTD = 5
    QUERY_REQUEST = 6
    QUERY_RESPONSE = 7


#: IANA protocol numbers AYIYA payloads use.
NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59

#: Byte 0-3 fixed fields, 4 bytes epoch.
FIXED_HEADER_SIZE = 8
#: The profile of AICCU and sixxsd: IdLen 4, IdType integer, SigLen 5, SHA-1, shared secret.
IDENTITY_SIZE = 16
SIGNATURE_SIZE = 20
HEADER_SIZE = FIXED_HEADER_SIZE + IDENTITY_SIZE + SIGNATURE_SIZE
#: UDP port of AYIYA (IANA), hard-coded in AICCU.
PORT = 5072


# Not frozen: one is built per datagram on the data plane's path, and a frozen dataclass's
# __init__ costs a call per field. Nothing mutates it.
@dataclass(slots=True)
class AyiyaPacket:
    """One decoded datagram of the SHA-1/IPv6-identity profile.

    ``signed`` is the datagram as received; verification hashes it with the key in place of
    ``signature`` (the offsets are fixed by the profile).
    """

    opcode: OpCode
    next_header: int
    epoch: int
    #: The sender's identity as sent: its tunnel IPv6 address, 16 bytes.
    identity_packed: bytes
    signature: bytes
    payload: bytes
    signed: bytes = field(repr=False, compare=False)

    @property
    def identity(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(self.identity_packed)

    @property
    def forwards(self) -> bool:
        """True if the payload is to be delivered (Forward, Echo Request and Forward)."""
        return (
            self.opcode in (OpCode.FORWARD, OpCode.ECHO_REQUEST_FORWARD)
            and self.next_header != NEXT_HEADER_NONE
        )
