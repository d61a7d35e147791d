"""AYIYA codec: the sixxs.md vector, every header field's bad values, payload checks, fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelbroker.protocols.ayiya import (
    HEADER_SIZE,
    AyiyaDrop,
    AyiyaPacket,
    Header,
    OpCode,
    build_forward,
    build_noop,
    compute_signature,
    decode,
    encode,
    signature_valid,
    signing_key,
)

CLIENT = ipaddress.IPv6Address("2001:db8:1:1::2")
POP = ipaddress.IPv6Address("2001:db8:1:1::1")
KEY = signing_key("tunnelpw")
# sixxs.md §3.4: NOOP from 2001:db8:1:1::2 at 1700000000, password "tunnelpw".
NOOP_VECTOR = bytes.fromhex(
    "4152103b6553f10020010db8000100010000000000000002c789aaa7704de7ab8df13ed43d498433a9bbc86b"
)


def ipv6_packet(payload: bytes = b"hello", src: str = "2001:db8:1:1::2") -> bytes:
    """A minimal IPv6 header (next header 59) followed by ``payload``."""
    header = struct.pack("!IHBB", 6 << 28, len(payload), 59, 64)
    dst = ipaddress.IPv6Address("2001:db8::99").packed
    return header + ipaddress.IPv6Address(src).packed + dst + payload


def ipv4_packet(payload: bytes = b"hi") -> bytes:
    total = 20 + len(payload)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0, bytes(4), bytes(4)) + (
        payload
    )


def test_signing_key_vector() -> None:
    assert KEY.hex() == "e2f341d4acf600659cbb83e33f69113717714197"


def test_noop_vector_is_built_bit_for_bit() -> None:
    assert build_noop(CLIENT, KEY, 1700000000.9) == NOOP_VECTOR
    assert NOOP_VECTOR[:4] == bytes.fromhex("4152103b")


def test_noop_vector_decodes_and_verifies() -> None:
    packet = decode(NOOP_VECTOR)
    assert isinstance(packet, AyiyaPacket)
    assert packet.opcode is OpCode.NOOP
    assert packet.next_header == 59
    assert packet.epoch == 1700000000
    assert packet.identity == CLIENT
    assert packet.payload == b""
    assert not packet.forwards
    assert signature_valid(packet, KEY)
    assert not signature_valid(packet, signing_key("tunnelpx"))


def test_forward_header_bytes() -> None:
    datagram = build_forward(POP, KEY, ipv6_packet(), 1700000000)
    assert datagram[:4] == bytes.fromhex("41521129")
    packet = decode(datagram)
    assert isinstance(packet, AyiyaPacket)
    assert packet.forwards and packet.payload == ipv6_packet()
    assert signature_valid(packet, KEY)


def test_forward_ipv4_payload_uses_next_header_4() -> None:
    datagram = build_forward(CLIENT, KEY, ipv4_packet(), 1)
    assert datagram[3] == 4
    packet = decode(datagram)
    assert isinstance(packet, AyiyaPacket) and packet.payload == ipv4_packet()


def test_forward_refuses_non_ip_payload() -> None:
    with pytest.raises(ValueError):
        build_forward(CLIENT, KEY, b"\x00junk", 1)
    with pytest.raises(ValueError):
        build_forward(CLIENT, KEY, b"", 1)


def test_header_round_trip_and_sizes() -> None:
    header = Header(4, 1, 5, 2, 1, 1, 41, 1700000000)
    assert Header.from_wire(header.to_wire()) == header
    assert header.identity_size == 16 and header.signature_size == 20
    assert Header.from_wire(b"\x41\x52\x11") is None
    with pytest.raises(ValueError):
        Header(16, 1, 5, 2, 1, 1, 41, 0).to_wire()
    with pytest.raises(ValueError):
        Header(4, 1, 5, 2, 1, 1, 256, 0).to_wire()


def with_header(datagram: bytes, **fields: int) -> bytes:
    header = Header.from_wire(datagram)
    assert header is not None
    values = {name: getattr(header, name) for name in Header.__slots__}
    values.update(fields)
    return Header(**values).to_wire() + datagram[8:]


@pytest.mark.parametrize(
    ("fields", "drop"),
    [
        ({"id_len": 3}, AyiyaDrop.BAD_ID_LENGTH),
        ({"id_len": 15}, AyiyaDrop.BAD_ID_LENGTH),
        ({"id_type": 0}, AyiyaDrop.BAD_ID_TYPE),
        ({"id_type": 2}, AyiyaDrop.BAD_ID_TYPE),
        ({"id_type": 9}, AyiyaDrop.BAD_ID_TYPE),
        ({"hash_method": 0}, AyiyaDrop.BAD_HASH_METHOD),
        ({"hash_method": 1, "sig_len": 4}, AyiyaDrop.BAD_SIGNATURE_LENGTH),
        ({"hash_method": 3}, AyiyaDrop.BAD_HASH_METHOD),
        ({"hash_method": 12}, AyiyaDrop.BAD_HASH_METHOD),
        ({"sig_len": 4}, AyiyaDrop.BAD_SIGNATURE_LENGTH),
        ({"sig_len": 0}, AyiyaDrop.BAD_SIGNATURE_LENGTH),
        ({"auth_method": 0}, AyiyaDrop.BAD_AUTH_METHOD),
        ({"auth_method": 2}, AyiyaDrop.BAD_AUTH_METHOD),
        ({"auth_method": 7}, AyiyaDrop.BAD_AUTH_METHOD),
        ({"next_header": 17}, AyiyaDrop.BAD_NEXT_HEADER),
        ({"next_header": 0}, AyiyaDrop.BAD_NEXT_HEADER),
        ({"opcode": 8}, AyiyaDrop.BAD_OPCODE),
        ({"opcode": 15}, AyiyaDrop.BAD_OPCODE),
    ],
)
def test_bad_header_fields_have_their_reason(fields: dict[str, int], drop: AyiyaDrop) -> None:
    assert decode(with_header(NOOP_VECTOR, **fields)) is drop


# sixxs.md §3.6: AICCU and sixxsd check IdLen 4, IdType 1, SigLen 5, HshMeth 2, AutMeth 1,
# then Next Header and OpCode, in this order. Written out here, apart from the codec.
PROFILE_ORDER: list[tuple[str, frozenset[int], AyiyaDrop]] = [
    ("id_len", frozenset({4}), AyiyaDrop.BAD_ID_LENGTH),
    ("id_type", frozenset({1}), AyiyaDrop.BAD_ID_TYPE),
    ("sig_len", frozenset({5}), AyiyaDrop.BAD_SIGNATURE_LENGTH),
    ("hash_method", frozenset({2}), AyiyaDrop.BAD_HASH_METHOD),
    ("auth_method", frozenset({1}), AyiyaDrop.BAD_AUTH_METHOD),
    ("next_header", frozenset({4, 41, 59}), AyiyaDrop.BAD_NEXT_HEADER),
    ("opcode", frozenset(range(8)), AyiyaDrop.BAD_OPCODE),
]


@pytest.mark.parametrize(
    ("fields", "drop"),
    [
        # Every field wrong: the first in the reference's order names the drop.
        (
            {"id_len": 3, "id_type": 2, "sig_len": 4, "hash_method": 1, "auth_method": 0},
            AyiyaDrop.BAD_ID_LENGTH,
        ),
        ({"id_type": 2, "sig_len": 4, "hash_method": 1, "auth_method": 0}, AyiyaDrop.BAD_ID_TYPE),
        # SigLen before HshMeth: an MD5 header with MD5's signature length (4 words) is a
        # length drop, as in sixxsd; only with SHA-1's length is it a hash method drop.
        ({"sig_len": 4, "hash_method": 1}, AyiyaDrop.BAD_SIGNATURE_LENGTH),
        ({"sig_len": 4, "hash_method": 0, "auth_method": 0}, AyiyaDrop.BAD_SIGNATURE_LENGTH),
        ({"hash_method": 1}, AyiyaDrop.BAD_HASH_METHOD),
        ({"hash_method": 1, "auth_method": 2}, AyiyaDrop.BAD_HASH_METHOD),
        ({"auth_method": 2, "next_header": 17, "opcode": 9}, AyiyaDrop.BAD_AUTH_METHOD),
        ({"next_header": 17, "opcode": 9}, AyiyaDrop.BAD_NEXT_HEADER),
    ],
)
def test_several_bad_fields_drop_for_the_first_in_sixxsd_order(
    fields: dict[str, int], drop: AyiyaDrop
) -> None:
    assert decode(with_header(NOOP_VECTOR, **fields)) is drop


def nibble(good: int) -> st.SearchStrategy[int]:
    """Half the time the profile's value, so that every field's check is reached."""
    return st.one_of(st.just(good), st.integers(0, 15))


@given(
    id_len=nibble(4),
    id_type=nibble(1),
    sig_len=nibble(5),
    hash_method=nibble(2),
    auth_method=nibble(1),
    opcode=nibble(1),
    next_header=st.sampled_from([0, 4, 17, 41, 59, 255]),
    tail=st.sampled_from([b"", NOOP_VECTOR[8:]]),
)
def test_header_drop_is_the_first_bad_field_in_sixxsd_order(tail: bytes, **fields: int) -> None:
    """Any header: the drop is the first field outside the profile, in sixxs.md §3.6 order."""
    expected = next((drop for name, good, drop in PROFILE_ORDER if fields[name] not in good), None)
    header = Header(epoch=1700000000, **fields)
    result = decode(header.to_wire() + tail)
    if expected is not None:
        assert result is expected
    elif tail and fields["next_header"] == 59:
        assert isinstance(result, AyiyaPacket)
    else:
        # A good header with nothing behind it, or Next Header 4/41 with no packet.
        assert result is AyiyaDrop.TRUNCATED


@pytest.mark.parametrize("opcode", list(OpCode))
def test_every_defined_opcode_decodes(opcode: OpCode) -> None:
    packet = decode(with_header(NOOP_VECTOR, opcode=opcode))
    assert isinstance(packet, AyiyaPacket) and packet.opcode is opcode


@pytest.mark.parametrize("length", [0, 1, 7, 8, 23, 43])
def test_short_datagrams_are_truncated(length: int) -> None:
    assert decode(NOOP_VECTOR[:length]) is AyiyaDrop.TRUNCATED


def test_payload_checks() -> None:
    def forward(payload: bytes, next_header: int = 41) -> bytes:
        return encode(OpCode.FORWARD, next_header, 1, CLIENT, payload, KEY)

    good = ipv6_packet(b"x" * 30)
    assert isinstance(decode(forward(good)), AyiyaPacket)
    # Cut short, or with bytes after the IPv6 packet.
    assert decode(forward(good)[:-1]) is AyiyaDrop.TRUNCATED
    assert decode(forward(good[:39])) is AyiyaDrop.TRUNCATED
    assert decode(forward(good + b"\0")) is AyiyaDrop.PAYLOAD_MISMATCH
    # Version nibble against Next Header.
    assert decode(forward(ipv4_packet())) is AyiyaDrop.PAYLOAD_MISMATCH
    assert decode(forward(good, next_header=4)) is AyiyaDrop.PAYLOAD_MISMATCH
    assert decode(forward(ipv4_packet(), next_header=4)) != AyiyaDrop.PAYLOAD_MISMATCH
    assert decode(forward(ipv4_packet()[:19], next_header=4)) is AyiyaDrop.TRUNCATED
    assert decode(forward(ipv4_packet()[:-1], next_header=4)) is AyiyaDrop.TRUNCATED
    bad_ihl = b"\x44" + ipv4_packet()[1:]
    assert decode(forward(bad_ihl, next_header=4)) is AyiyaDrop.PAYLOAD_MISMATCH
    short_total = ipv4_packet()[:2] + b"\x00\x10" + ipv4_packet()[4:]
    assert decode(forward(short_total, next_header=4)) is AyiyaDrop.PAYLOAD_MISMATCH
    # No Next Header means no payload.
    assert decode(NOOP_VECTOR + b"\0") is AyiyaDrop.PAYLOAD_MISMATCH


def test_signature_covers_every_byte() -> None:
    datagram = build_forward(CLIENT, KEY, ipv6_packet(b"abc"), 1700000000)
    for i in range(len(datagram)):
        if 24 <= i < 44:
            continue  # the signature field itself
        tampered = bytearray(datagram)
        tampered[i] ^= 0x01
        packet = decode(bytes(tampered))
        if isinstance(packet, AyiyaPacket):
            assert not signature_valid(packet, KEY), i


def test_compute_signature_needs_a_20_byte_key() -> None:
    with pytest.raises(ValueError):
        compute_signature(NOOP_VECTOR, b"short")


@given(
    opcode=st.sampled_from(list(OpCode)),
    epoch=st.integers(0, 0xFFFFFFFF),
    identity=st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    body=st.binary(max_size=200),
    secret=st.text(max_size=40),
    ipv4=st.booleans(),
)
def test_round_trip(
    opcode: OpCode, epoch: int, identity: ipaddress.IPv6Address, body: bytes, secret: str,
    ipv4: bool,
) -> None:  # fmt: skip
    key = signing_key(secret)
    payload = ipv4_packet(body) if ipv4 else ipv6_packet(body)
    datagram = encode(opcode, 4 if ipv4 else 41, epoch, identity, payload, key)
    packet = decode(datagram)
    assert isinstance(packet, AyiyaPacket)
    assert (packet.opcode, packet.epoch, packet.identity, packet.payload) == (
        opcode,
        epoch,
        identity,
        payload,
    )
    assert packet.signed == datagram and len(datagram) == HEADER_SIZE + len(payload)
    assert signature_valid(packet, key)


@given(st.binary(max_size=300))
def test_fuzz_never_raises(data: bytes) -> None:
    result = decode(data)
    assert isinstance(result, AyiyaPacket | AyiyaDrop)
    if isinstance(result, AyiyaPacket):
        assert not signature_valid(result, KEY) or result.signed == data


@given(st.binary(min_size=0, max_size=120), st.integers(0, 43))
def test_fuzz_behind_a_valid_prefix(tail: bytes, cut: int) -> None:
    """Valid header bytes followed by junk: still only a packet or a drop reason."""
    result = decode(NOOP_VECTOR[:cut] + tail)
    assert isinstance(result, AyiyaPacket | AyiyaDrop)
