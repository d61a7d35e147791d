"""AYIYA datagrams: the generic header, decoding to the SHA-1 profile, signing and building.

Layout (draft-massar-v6ops-ayiya-02 §4; sixxs.md §3.2), network byte order::

     0       4       8      12      16      20      24              31
    +-------+-------+-------+-------+-------+-------+---------------+
    | IdLen | IdType| SigLen|HshMeth|AutMeth| OpCode|  Next Header  |
    +-------+-------+-------+-------+-------+-------+---------------+
    |                  Epoch Time (uint32, seconds)                 |
    +---------------------------------------------------------------+
    |          Identity (2^IdLen bytes; 16: an IPv6 address)         |
    +---------------------------------------------------------------+
    |          Signature (SigLen * 4 bytes; 20: SHA-1)               |
    +---------------------------------------------------------------+
    |          Payload                                               |

Every field is decoded; values the draft does not define, and defined values that AICCU and
sixxsd never use (MD5, ASCII identities, public keys), are refused with their own
:class:`AyiyaDrop`. Decoding never raises: it returns the packet or the reason.

Signature (sixxs.md §3.4): ``K = SHA1(tunnel secret)``; the sender puts ``K`` in the
signature field, hashes the whole datagram with SHA-1 and overwrites the field with the
result. The receiver does the same with the received bytes and compares.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

from tunnelbroker.protocols.ayiya.errors import AyiyaDrop
from tunnelbroker.protocols.ayiya.messages import (
    FIXED_HEADER_SIZE,
    HEADER_SIZE,
    IDENTITY_SIZE,
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    SIGNATURE_SIZE,
    AuthMethod,
    AyiyaPacket,
    HashMethod,
    IdentityType,
    OpCode,
)

_FIXED = struct.Struct("!BBBBI")
_SIG_START = FIXED_HEADER_SIZE + IDENTITY_SIZE
_SIG_END = _SIG_START + SIGNATURE_SIZE
_NEXT_HEADERS = frozenset({NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE})
#: Bytes 0 and 1 of every datagram of the profile: IdLen 4, IdType integer; SigLen 5, SHA-1.
_B0 = (4 << 4) | IdentityType.INTEGER
_B1 = ((SIGNATURE_SIZE // 4) << 4) | HashMethod.SHA1
_OPCODES: dict[int, OpCode] = {int(o): o for o in OpCode}


@dataclass(frozen=True, slots=True)
class Header:
    """The 8-byte fixed header, every nibble as sent (no validation)."""

    id_len: int
    id_type: int
    sig_len: int
    hash_method: int
    auth_method: int
    opcode: int
    next_header: int
    epoch: int

    @property
    def identity_size(self) -> int:
        return 1 << self.id_len

    @property
    def signature_size(self) -> int:
        return 4 * self.sig_len

    @classmethod
    def from_wire(cls, data: bytes) -> Header | None:
        """The fixed header of ``data``, or None if it is shorter than 8 bytes."""
        if len(data) < FIXED_HEADER_SIZE:
            return None
        b0, b1, b2, nh, epoch = _FIXED.unpack_from(data)
        return cls(b0 >> 4, b0 & 15, b1 >> 4, b1 & 15, b2 >> 4, b2 & 15, nh, epoch)

    def to_wire(self) -> bytes:
        for name in ("id_len", "id_type", "sig_len", "hash_method", "auth_method", "opcode"):
            if not 0 <= getattr(self, name) <= 15:
                raise ValueError(f"{name} must fit in 4 bits")
        if not 0 <= self.next_header <= 255 or not 0 <= self.epoch <= 0xFFFFFFFF:
            raise ValueError("next_header must fit in 8 bits and epoch in 32")
        return _FIXED.pack(
            (self.id_len << 4) | self.id_type,
            (self.sig_len << 4) | self.hash_method,
            (self.auth_method << 4) | self.opcode,
            self.next_header,
            self.epoch,
        )


def _defined(enum: type[IdentityType | HashMethod | AuthMethod | OpCode], value: int) -> bool:
    return value in enum._value2member_map_


def check_header(header: Header) -> AyiyaDrop | None:
    """Why ``header`` is outside the profile we speak, or None.

    The fields are checked in AICCU's and sixxsd's order (sixxs.md §3.6: IdLen, IdType,
    SigLen, HshMeth, AutMeth, then Next Header and OpCode), so a datagram wrong in several
    fields is dropped for the same reason sixxsd would give.
    """
    if header.id_len != 4:
        return AyiyaDrop.BAD_ID_LENGTH
    if header.id_type != IdentityType.INTEGER:
        return AyiyaDrop.BAD_ID_TYPE
    if header.sig_len != SIGNATURE_SIZE // 4:
        return AyiyaDrop.BAD_SIGNATURE_LENGTH
    if header.hash_method != HashMethod.SHA1:
        return AyiyaDrop.BAD_HASH_METHOD
    if header.auth_method != AuthMethod.SHARED_SECRET:
        return AyiyaDrop.BAD_AUTH_METHOD
    if header.next_header not in _NEXT_HEADERS:
        return AyiyaDrop.BAD_NEXT_HEADER
    if not _defined(OpCode, header.opcode):
        return AyiyaDrop.BAD_OPCODE
    return None


def check_payload(next_header: int, payload: bytes) -> AyiyaDrop | None:
    """Why ``payload`` does not match ``next_header`` (version, length), or None."""
    if next_header == NEXT_HEADER_NONE:
        return AyiyaDrop.PAYLOAD_MISMATCH if payload else None
    if not payload:
        return AyiyaDrop.TRUNCATED
    if next_header == NEXT_HEADER_IPV6:
        if payload[0] >> 4 != 6:
            return AyiyaDrop.PAYLOAD_MISMATCH
        if len(payload) < 40:
            return AyiyaDrop.TRUNCATED
        total = 40 + int.from_bytes(payload[4:6], "big")
    else:
        if payload[0] >> 4 != 4 or (payload[0] & 15) < 5:
            return AyiyaDrop.PAYLOAD_MISMATCH
        if len(payload) < 20:
            return AyiyaDrop.TRUNCATED
        total = int.from_bytes(payload[2:4], "big")
        if total < 4 * (payload[0] & 15):
            return AyiyaDrop.PAYLOAD_MISMATCH
    if total > len(payload):
        return AyiyaDrop.TRUNCATED
    if total < len(payload):
        return AyiyaDrop.PAYLOAD_MISMATCH
    return None


def decode(datagram: bytes) -> AyiyaPacket | AyiyaDrop:
    """Decode one received datagram, or say why it is dropped. Never raises."""
    # The profile's datagrams take the short way (the data plane's per-packet path); anything
    # else goes through the field-by-field checks, which name the reason.
    opcode = None
    if len(datagram) >= HEADER_SIZE and datagram[0] == _B0 and datagram[1] == _B1:
        b2 = datagram[2]
        if b2 >> 4 == AuthMethod.SHARED_SECRET and datagram[3] in _NEXT_HEADERS:
            opcode = _OPCODES.get(b2 & 15)
    if opcode is None:
        header = Header.from_wire(datagram)
        if header is None:
            return AyiyaDrop.TRUNCATED
        drop = check_header(header)
        if drop is not None:
            return drop
        # A valid header: the datagram is shorter than identity and signature.
        return AyiyaDrop.TRUNCATED
    next_header = datagram[3]
    payload = datagram[HEADER_SIZE:]
    drop = check_payload(next_header, payload)
    if drop is not None:
        return drop
    return AyiyaPacket(
        opcode=opcode,
        next_header=next_header,
        epoch=int.from_bytes(datagram[4:8], "big"),
        identity_packed=datagram[FIXED_HEADER_SIZE:_SIG_START],
        signature=datagram[_SIG_START:_SIG_END],
        payload=payload,
        signed=datagram,
    )


def signing_key(secret: str | bytes) -> bytes:
    """``K = SHA1(secret)``: the tunnel secret (TIC's ``Password``) as UTF-8, no NUL."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha1(raw).digest()


def compute_signature(datagram: bytes, key: bytes) -> bytes:
    """SHA-1 of ``datagram`` with ``key`` in the signature field (whatever the field holds)."""
    if len(key) != SIGNATURE_SIZE:
        raise ValueError("the key is SHA1(secret), 20 bytes")
    view = memoryview(datagram)
    h = hashlib.sha1(view[:_SIG_START])
    h.update(key)
    h.update(view[_SIG_END:])
    return h.digest()


def signature_valid(packet: AyiyaPacket, key: bytes) -> bool:
    return hmac.compare_digest(compute_signature(packet.signed, key), packet.signature)


def encode(
    opcode: OpCode,
    next_header: int,
    epoch: int,
    identity: ipaddress.IPv6Address | bytes,
    payload: bytes,
    key: bytes,
) -> bytes:
    """A signed datagram of the SHA-1/IPv6-identity profile.

    ``identity`` is an address or its 16 packed bytes (a link keeps them ready).
    """
    if not 0 <= opcode <= 15 or not 0 <= next_header <= 255 or not 0 <= epoch <= 0xFFFFFFFF:
        raise ValueError("opcode must fit in 4 bits, next_header in 8 and epoch in 32")
    ident = identity.packed if isinstance(identity, ipaddress.IPv6Address) else identity
    if len(ident) != IDENTITY_SIZE or len(key) != SIGNATURE_SIZE:
        raise ValueError("the identity is 16 bytes and the key SHA1(secret), 20 bytes")
    # Signed as if the key stood in the signature field, which then gets the digest.
    head = bytes((_B0, _B1, (AuthMethod.SHARED_SECRET << 4) | opcode, next_header))
    head += epoch.to_bytes(4, "big") + ident
    h = hashlib.sha1(head)
    h.update(key)
    h.update(payload)
    return head + h.digest() + payload


def build_forward(
    identity: ipaddress.IPv6Address | bytes, key: bytes, payload: bytes, now: float
) -> bytes:
    """A Forward datagram carrying an IPv6 or IPv4 packet (Next Header from its version).

    ``identity`` is the sender's: the client's tunnel address from a client, the PoP's from
    the server (sixxs.md §3.5).
    """
    version = payload[0] >> 4 if payload else 0
    if version == 6:
        next_header = NEXT_HEADER_IPV6
    elif version == 4:
        next_header = NEXT_HEADER_IPV4
    else:
        raise ValueError("the payload is not an IPv4 or IPv6 packet")
    return encode(OpCode.FORWARD, next_header, _epoch(now), identity, payload, key)


def build_noop(identity: ipaddress.IPv6Address | bytes, key: bytes, now: float) -> bytes:
    """A NOOP (keepalive) datagram: Next Header 59, no payload.

    Only clients send these: AICCU drops a NOOP from the PoP (sixxs.md §3.3).
    """
    return encode(OpCode.NOOP, NEXT_HEADER_NONE, _epoch(now), identity, b"", key)


def _epoch(now: float) -> int:
    return int(now) & 0xFFFFFFFF
