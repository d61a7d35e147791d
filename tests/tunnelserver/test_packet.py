"""Packets for the data plane: accessors, checks, builders, checksums, Echo Reply, Packet Too Big
and ICMPv4 Fragmentation Needed.

Results are checked independently of the module: a word-by-word RFC 1071 checksum written here,
and scapy's parsers and checksum routines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from tunnelbroker.tunnelserver import packet as P
from tunnelbroker.tunnelserver.packet import PacketError

A = ipaddress.IPv6Address("2001:db8::1").packed
B = ipaddress.IPv6Address("2001:db8:1::2").packed
SERVER = ipaddress.IPv6Address("2001:db8:ffff::1").packed
MCAST = ipaddress.IPv6Address("ff02::1").packed
UNSPEC = bytes(16)

addr6 = st.binary(min_size=16, max_size=16)
unicast6 = addr6.filter(lambda a: a[0] != 0xFF and a != UNSPEC)
addr4 = st.binary(min_size=4, max_size=4)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)


def ref_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ref_icmpv6_ok(pkt: bytes, offset: int = 40) -> bool:
    """Whether the ICMPv6 message at ``offset`` has a correct checksum (reference sum)."""
    icmp = pkt[offset:]
    pseudo = pkt[8:40] + struct.pack("!I3xB", len(icmp), 58)
    return ref_checksum(pseudo + icmp) == 0


def echo_request(
    src: bytes = A, dst: bytes = B, ident: int = 1, seq: int = 1, data: bytes = b"ping"
) -> bytes:
    ip = IPv6(src=_text(src), dst=_text(dst), hlim=57, tc=0x28, fl=0x12345)
    return bytes(ip / ICMPv6EchoRequest(id=ident, seq=seq, data=data))


def _text(addr: bytes) -> str:
    return str(ipaddress.IPv6Address(addr))


def udp6(size: int, src: bytes = A, dst: bytes = B) -> bytes:
    """An IPv6/UDP packet of exactly ``size`` bytes."""
    payload = bytes(i & 0xFF for i in range(size - 48))
    return bytes(IPv6(src=_text(src), dst=_text(dst)) / UDP(sport=1234, dport=5678) / Raw(payload))


# --------------------------------------------------------------------------------------------
# Checksums


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert P.internet_checksum(data) == 0x220D
    assert P.internet_checksum(data + b"\x22\x0d") == 0


@given(st.binary(max_size=3000))
@example(b"")
@example(b"\0")
@example(b"\0\0\0\0")
@example(b"\xff\xff")
@example(b"\xff\xff\xff\xff\xff")
@example(b"\x80\x00\x7f\xff")
def test_internet_checksum_matches_reference(data: bytes) -> None:
    assert P.internet_checksum(data) == ref_checksum(data) == scapy_checksum(data)


@given(addr6, addr6, st.binary(max_size=1500))
def test_icmpv6_checksum_matches_reference(src: bytes, dst: bytes, icmp: bytes) -> None:
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    assert P.icmpv6_checksum(src, dst, icmp) == ref_checksum(pseudo + icmp)


def test_icmpv6_checksum_matches_scapy() -> None:
    raw = echo_request(data=b"odd")
    assert P.icmpv6_checksum(A, B, raw[40:]) == 0
    zeroed = raw[40:42] + b"\0\0" + raw[44:]
    assert P.icmpv6_checksum(A, B, zeroed) == IPv6(raw)[ICMPv6EchoRequest].cksum


# --------------------------------------------------------------------------------------------
# IPv4: known vector, checks, round trips

# The usual worked example: a UDP datagram 192.168.0.1 -> 192.168.0.199, DF, TTL 64.
V4_HEADER = bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7".replace(" ", ""))


def test_ipv4_header_checksum_known_vector() -> None:
    zeroed = V4_HEADER[:10] + b"\0\0" + V4_HEADER[12:]
    assert P.internet_checksum(zeroed) == 0xB861
    payload = bytes(0x73 - 20)
    pkt = P.build_ipv4(V4_HEADER[12:16], V4_HEADER[16:20], 17, payload, ttl=64, df=True)
    assert pkt[:20] == V4_HEADER
    P.check_ipv4(pkt)
    h = P.parse_ipv4(pkt)
    assert (h.checksum, h.df, h.mf, h.ttl, h.protocol) == (0xB861, True, False, 64, 17)
    assert (str(h.src_address), str(h.dst_address)) == ("192.168.0.1", "192.168.0.199")
    assert IP(pkt).chksum == 0xB861
    bad = pkt[:10] + b"\xb8\x62" + pkt[12:]
    with pytest.raises(PacketError, match="checksum"):
        P.check_ipv4(bad)


@pytest.mark.parametrize(
    ("pkt", "match"),
    [
        (b"", "shorter"),
        (V4_HEADER[:19], "shorter"),
        (b"\x65" + V4_HEADER[1:], "version"),
        (b"\x44" + V4_HEADER[1:], "IHL"),
        (V4_HEADER, "Total Length"),
        (V4_HEADER + bytes(0x73 - 20) + b"\0", "Total Length"),
    ],
)
def test_check_ipv4_rejects(pkt: bytes, match: str) -> None:
    with pytest.raises(PacketError, match=match):
        P.check_ipv4(pkt)


def test_check_ipv4_header_longer_than_packet() -> None:
    # IHL 15 (60 bytes) in a 20-byte packet whose Total Length says 20.
    hdr = bytearray(P.build_ipv4(b"\1\2\3\4", b"\5\6\7\x08", 6, b""))
    hdr[0] = 0x4F
    with pytest.raises(PacketError, match="header of 60 bytes"):
        P.check_ipv4(bytes(hdr))


@given(
    src=addr4,
    dst=addr4,
    protocol=u8,
    payload=st.binary(max_size=600),
    ttl=u8,
    ident=u16,
    tos=u8,
    df=st.booleans(),
)
def test_build_parse_ipv4_roundtrip(
    src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int, ident: int, tos: int, df: bool
) -> None:
    pkt = P.build_ipv4(src, dst, protocol, payload, ttl, ident, tos=tos, df=df)
    h = P.parse_ipv4(pkt)
    assert (h.src, h.dst, h.protocol, h.payload, h.ttl, h.identification) == (
        src,
        dst,
        protocol,
        payload,
        ttl,
        ident,
    )
    assert (h.tos, h.df, h.mf, h.fragment_offset, h.options, h.ihl, h.version) == (
        tos,
        df,
        False,
        0,
        b"",
        5,
        4,
    )
    assert h.total_length == len(pkt) == 20 + len(payload)
    assert h.to_wire() == pkt
    assert (P.ipv4_src(pkt), P.ipv4_dst(pkt), P.ip_version(pkt)) == (src, dst, 4)
    assert IP(pkt).chksum == h.checksum
    assert ref_checksum(pkt[:20]) == 0


@given(
    header=st.binary(min_size=20, max_size=20),
    options=st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),
    payload=st.binary(max_size=100),
)
def test_parse_ipv4_to_wire_is_identity(header: bytes, options: bytes, payload: bytes) -> None:
    """Any header bits (flags, offset, options) survive parse -> to_wire."""
    hlen = 20 + len(options)
    raw = bytearray(header + options + payload)
    raw[0] = 0x40 | hlen // 4
    raw[2:4] = len(raw).to_bytes(2, "big")
    raw[10:12] = b"\0\0"
    raw[10:12] = ref_checksum(bytes(raw[:hlen])).to_bytes(2, "big")
    pkt = bytes(raw)
    h = P.parse_ipv4(pkt)
    assert h.options == options and h.payload == payload
    assert h.df == bool(pkt[6] & 0x40) and h.mf == bool(pkt[6] & 0x20)
    assert h.to_wire() == pkt


def test_ipv4_to_wire_rejects_bad_fields() -> None:
    h = P.parse_ipv4(P.build_ipv4(b"\1\2\3\4", b"\5\6\7\x08", 6, b""))
    for bad in ({"options": b"\1"}, {"options": bytes(44)}, {"flags": 8}, {"fragment_offset": -1}):
        with pytest.raises(ValueError):
            dataclasses.replace(h, **bad).to_wire()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src": b"\1\2\3"},
        {"ttl": 256},
        {"ident": -1},
        {"tos": 300},
        {"protocol": 256},
        {"payload": bytes(65516)},
    ],
)
def test_build_ipv4_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"src": b"\1\2\3\4", "dst": b"\5\6\7\x08", "protocol": 6}
    args["payload"] = b""
    args.update(kwargs)
    with pytest.raises(ValueError):
        P.build_ipv4(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# IPv6: accessors, checks, round trips


def test_ipv6_accessors() -> None:
    pkt = udp6(100)
    assert P.ip_version(pkt) == 6
    assert P.ipv6_src(pkt) == A and P.ipv6_dst(pkt) == B
    assert P.ipv6_src_int(pkt) == int(ipaddress.IPv6Address(A))
    assert P.ipv6_dst_int(pkt) == int(ipaddress.IPv6Address(B))
    assert P.ipv6_upper_layer(pkt) == (17, 40)


@pytest.mark.parametrize(
    ("accessor", "minimum"),
    [
        (P.ipv6_src, 40),
        (P.ipv6_dst, 40),
        (P.ipv6_src_int, 40),
        (P.ipv6_dst_int, 40),
        (P.ipv6_upper_layer, 40),
        (P.ipv4_src, 20),
        (P.ipv4_dst, 20),
        (P.ip_version, 1),
    ],
)
def test_accessors_reject_short_packets(accessor: Callable[[bytes], object], minimum: int) -> None:
    with pytest.raises(PacketError):
        accessor(b"")
    with pytest.raises(PacketError):
        accessor(bytes(minimum - 1))
    accessor(b"\x60" + bytes(minimum - 1))


@given(st.binary(max_size=60))
def test_accessors_on_arbitrary_bytes(data: bytes) -> None:
    """Each accessor returns a value of the documented size or raises PacketError."""
    for accessor, size in ((P.ipv6_src, 16), (P.ipv6_dst, 16), (P.ipv4_src, 4), (P.ipv4_dst, 4)):
        try:
            assert len(accessor(data)) == size
        except PacketError:
            pass
    for int_accessor in (P.ipv6_src_int, P.ipv6_dst_int):
        try:
            assert 0 <= int_accessor(data) < 1 << 128
        except PacketError:
            assert len(data) < 40
    try:
        assert 0 <= P.ip_version(data) <= 15
    except PacketError:
        assert data == b""


@given(
    src=addr6,
    dst=addr6,
    next_header=u8,
    payload=st.binary(max_size=1600),
    hop_limit=u8,
    tc=u8,
    fl=st.integers(0, 0xFFFFF),
)
def test_build_parse_ipv6_roundtrip(
    src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int, tc: int, fl: int
) -> None:
    pkt = P.build_ipv6(src, dst, next_header, payload, hop_limit, traffic_class=tc, flow_label=fl)
    P.check_ipv6(pkt)
    h = P.parse_ipv6(pkt)
    assert (h.src, h.dst, h.next_header, h.payload, h.hop_limit) == (
        src,
        dst,
        next_header,
        payload,
        hop_limit,
    )
    assert (h.traffic_class, h.flow_label, h.payload_length, h.version) == (
        tc,
        fl,
        len(payload),
        6,
    )
    assert h.src_address == ipaddress.IPv6Address(src)
    assert h.dst_address == ipaddress.IPv6Address(dst)
    assert h.to_wire() == pkt
    assert (P.ipv6_src(pkt), P.ipv6_dst(pkt)) == (src, dst)
    s = IPv6(pkt)
    assert (s.tc, s.fl, s.plen, s.nh, s.hlim) == (tc, fl, len(payload), next_header, hop_limit)


@pytest.mark.parametrize(
    ("pkt", "match"),
    [
        (b"", "shorter"),
        (bytes(39), "shorter"),
        (b"\x40" + bytes(39), "version"),
        (udp6(100)[:99], "Payload Length"),  # truncated
        (udp6(100) + b"\0", "Payload Length"),  # trailing padding
        # A jumbogram: Payload Length 0 and more than a header (RFC 2675).
        (b"\x60\0\0\0\0\0\0\x40" + A + B + bytes(70000), "Payload Length"),
    ],
)
def test_check_ipv6_rejects(pkt: bytes, match: str) -> None:
    with pytest.raises(PacketError, match=match):
        P.check_ipv6(pkt)
    with pytest.raises(PacketError):
        P.parse_ipv6(pkt)


def test_check_ipv6_accepts_bare_header() -> None:
    pkt = P.build_ipv6(A, B, 59, b"")  # No Next Header, Payload Length 0
    P.check_ipv6(pkt)
    assert P.parse_ipv6(pkt).payload == b""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src": bytes(15)},
        {"dst": bytes(17)},
        {"next_header": 256},
        {"hop_limit": -1},
        {"traffic_class": 256},
        {"flow_label": 1 << 20},
        {"payload": bytes(65536)},
    ],
)
def test_build_ipv6_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"src": A, "dst": B, "next_header": 17, "payload": b""}
    args.update(kwargs)
    with pytest.raises(ValueError):
        P.build_ipv6(**args)  # type: ignore[arg-type]


def test_ipv6_upper_layer_walks_extension_headers() -> None:
    inner = ICMPv6EchoRequest(data=b"x")
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    pkt = bytes(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / inner)
    assert P.ipv6_upper_layer(pkt) == (58, 56)
    pkt = bytes(base / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(offset=0, m=1) / inner)
    assert P.ipv6_upper_layer(pkt) == (58, 56)
    # AH (RFC 4302): Payload Len 4 means (4 + 2) * 4 = 24 octets.
    ah = bytes([58, 4, 0, 0]) + bytes(20)
    pkt = P.build_ipv6(A, B, 51, ah + bytes(inner))
    assert P.ipv6_upper_layer(pkt) == (58, 64)
    # Non-first fragments and truncated chains have no upper-layer header to find.
    assert P.ipv6_upper_layer(bytes(base / IPv6ExtHdrFragment(offset=10) / inner)) is None
    assert P.ipv6_upper_layer(P.build_ipv6(A, B, 0, bytes([58, 0, 0]))) is None
    assert P.ipv6_upper_layer(P.build_ipv6(A, B, 0, bytes([58, 1]) + bytes(6))) is None
    assert P.ipv6_upper_layer(P.build_ipv6(A, B, 50, bytes(16))) == (50, 40)  # ESP: opaque


# --------------------------------------------------------------------------------------------
# Address classes


@given(addr6)
@example(ipaddress.IPv6Address("fe80::1").packed)
@example(ipaddress.IPv6Address("febf::1").packed)
@example(ipaddress.IPv6Address("fec0::1").packed)
@example(MCAST)
@example(UNSPEC)
@example(ipaddress.IPv6Address("::1").packed)
def test_ipv6_address_classes_match_ipaddress(a: bytes) -> None:
    ref = ipaddress.IPv6Address(a)
    assert P.is_link_local(a) == ref.is_link_local
    assert P.is_multicast6(a) == ref.is_multicast
    assert P.is_unspecified6(a) == ref.is_unspecified
    assert P.is_loopback6(a) == ref.is_loopback


@given(addr4)
def test_ipv4_multicast_matches_ipaddress(a: bytes) -> None:
    assert P.is_multicast4(a) == ipaddress.IPv4Address(a).is_multicast


# --------------------------------------------------------------------------------------------
# Hostile input: only PacketError, or None where documented


def _v6ish(data: bytes) -> bytes:
    """Arbitrary bytes made to look like IPv6 half the time, so the deeper checks run."""
    if len(data) >= 40 and data[0] & 1:
        b = bytearray(data)
        b[0] = 0x60 | b[0] & 0x0F
        b[4:6] = (len(b) - 40).to_bytes(2, "big")
        return bytes(b)
    return data


@given(st.binary(max_size=200).map(_v6ish))
@example(b"")
@example(bytes(40))
@example(b"\x60" + bytes(39))
@example(b"\x60\0\0\0\0\x01\x3a\x40" + A + B + b"\x01")
def test_hostile_input_ipv6(data: bytes) -> None:
    for fn in (P.check_ipv6, P.parse_ipv6, P.ipv6_upper_layer, P.icmpv6_error_forbidden):
        try:
            fn(data)
        except PacketError:
            pass
    reply = P.echo_reply(data)
    assert reply is None or len(reply) == len(data)
    assert P.echo_reply(data, frozenset()) is None
    ptb = P.packet_too_big(data, 1280, SERVER)
    assert ptb is None or len(ptb) <= 1280
    ptb = P.packet_too_big(data * 40, 1280, SERVER)
    assert ptb is None or len(ptb) <= 1280


def _v4ish(data: bytes) -> bytes:
    """Arbitrary bytes made into a checksummed IPv4 header half the time."""
    if len(data) >= 20 and data[0] & 1:
        b = bytearray(data)
        ihl = max(5, b[0] & 0x0F)
        if ihl * 4 > len(b):
            ihl = 5
        b[0] = 0x40 | ihl
        b[2:4] = len(b).to_bytes(2, "big")
        b[10:12] = b"\0\0"
        b[10:12] = ref_checksum(bytes(b[: ihl * 4])).to_bytes(2, "big")
        return bytes(b)
    return data


@given(st.binary(max_size=1000).map(_v4ish), st.integers(68, 1500))
@example(b"", 68)
@example(bytes(20), 68)
def test_hostile_input_ipv4(data: bytes, mtu: int) -> None:
    for fn in (P.check_ipv4, P.parse_ipv4):
        try:
            fn(data)
        except PacketError:
            pass
    err = P.frag_needed_v4(data, mtu, b"\xc6\x33\x64\x01")
    assert err is None or len(err) <= 576


# --------------------------------------------------------------------------------------------
# Echo Reply (RFC 4443 §4.2)


def check_echo_reply(request: bytes, reply: bytes | None) -> None:
    assert reply is not None
    req = IPv6(request)
    rep = IPv6(reply)
    assert rep.src == req.dst and rep.dst == req.src
    assert rep.hlim == 64 and rep.nh == 58 and rep.plen == req.plen
    assert (rep.tc, rep.fl) == (req.tc, req.fl)
    echo = rep[ICMPv6EchoReply]
    assert (echo.type, echo.code) == (129, 0)
    assert (echo.id, echo.seq, echo.data) == (req.id, req.seq, req.data)
    assert reply[48:] == request[48:]
    assert ref_icmpv6_ok(reply)
    # scapy's own checksum over the rebuilt message agrees.
    icmp = reply[40:42] + b"\0\0" + reply[44:]
    assert in6_chksum(58, rep[ICMPv6EchoReply], icmp) == echo.cksum  # type: ignore[no-untyped-call]


@given(
    src=unicast6,
    dst=unicast6,
    ident=u16,
    seq=u16,
    data=st.binary(max_size=1400),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_echo_reply(src: bytes, dst: bytes, ident: int, seq: int, data: bytes) -> None:
    request = echo_request(src, dst, ident, seq, data)
    check_echo_reply(request, P.echo_reply(request))
    check_echo_reply(request, P.echo_reply(request, {dst}))
    assert P.echo_reply(request, {src} if src != dst else set()) is None


def _request_with_sum(target: int) -> bytes:
    """An Echo Request whose ones' complement sum, checksum field excluded, is ``target``."""
    base = bytearray(echo_request(data=b"\0\0tail"))
    base[42:44] = b"\0\0"
    pseudo = base[8:40] + struct.pack("!I3xB", len(base) - 40, 58)
    current = ~ref_checksum(bytes(pseudo + base[40:])) & 0xFFFF
    base[48:50] = ((target - current) % 0xFFFF).to_bytes(2, "big")
    base[42:44] = (~target & 0xFFFF).to_bytes(2, "big")
    assert ref_icmpv6_ok(bytes(base))
    return bytes(base)


@pytest.mark.parametrize("target", [0xFEFF, 0xFFFF, 0xFF00, 0x0100, 0x0001, 0x00FF])
def test_echo_reply_checksum_edges(target: int) -> None:
    """Sums around the type change (+0x0100) and ones' complement zero, both checksum forms."""
    request = _request_with_sum(target)
    check_echo_reply(request, P.echo_reply(request))
    if request[42:44] == b"\0\0":  # 0xFFFF is the other spelling of a zero checksum
        other = request[:42] + b"\xff\xff" + request[44:]
        check_echo_reply(other, P.echo_reply(other))
    if target == 0xFEFF:  # the reply sums to 0xFFFF: its checksum is 0
        reply = P.echo_reply(request)
        assert reply is not None and reply[42:44] == b"\0\0"


def _patch(pkt: bytes, offset: int, value: bytes) -> bytes:
    return pkt[:offset] + value + pkt[offset + len(value) :]


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("bad checksum", lambda p: _patch(p, 42, bytes([p[42] ^ 1]))),
        ("reply, not request", lambda p: bytes(IPv6(p[:40]) / ICMPv6EchoReply(data=b"ping"))),
        ("code 1", lambda p: _patch(p, 41, b"\x01")),
        ("truncated", lambda p: p[:-1]),
        ("padded", lambda p: p + b"\0"),
        ("too short for echo", lambda p: _patch(p[:47], 4, b"\x00\x07")),
        ("IPv4 version", lambda p: _patch(p, 0, b"\x46")),
        ("multicast destination", lambda p: echo_request(dst=MCAST)),
        ("multicast source", lambda p: echo_request(src=MCAST)),
        ("unspecified source", lambda p: echo_request(src=UNSPEC)),
        (
            "behind an extension header",
            lambda p: bytes(IPv6(p[:40]) / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest(data=b"p")),
        ),
        ("UDP", lambda p: udp6(64)),
    ],
)
def test_echo_reply_none(case: str, make: Callable[[bytes], bytes]) -> None:
    assert P.echo_reply(make(echo_request())) is None, case


# --------------------------------------------------------------------------------------------
# Packet Too Big (RFC 4443 §3.2, §2.4)


def check_ptb(invoking: bytes, mtu: int, ptb: bytes | None) -> None:
    assert ptb is not None
    assert len(ptb) == min(1280, 48 + len(invoking))
    s = IPv6(ptb)
    assert s.src == str(ipaddress.IPv6Address(SERVER))
    assert s.dst == str(ipaddress.IPv6Address(invoking[8:24]))
    assert s.nh == 58 and s.hlim == 64 and s.plen == len(ptb) - 40
    msg = s[ICMPv6PacketTooBig]
    assert (msg.type, msg.code, msg.mtu) == (2, 0, mtu)
    assert ptb[48:] == invoking[: len(ptb) - 48]
    assert ref_icmpv6_ok(ptb)


@given(size=st.integers(1281, 9000), mtu=st.integers(1280, 1480), dst=addr6)
@example(size=1281, mtu=1280, dst=B)
@example(size=1480, mtu=1479, dst=B)
@example(size=9000, mtu=1480, dst=B)
def test_packet_too_big_size(size: int, mtu: int, dst: bytes) -> None:
    invoking = udp6(size, dst=dst)
    if size <= mtu:
        assert P.packet_too_big(invoking, mtu, SERVER) is None
        return
    check_ptb(invoking, mtu, P.packet_too_big(invoking, mtu, SERVER))


def test_packet_too_big_small_mtu_edge() -> None:
    # A 1,300-byte packet carries 1,232 bytes of itself; a 1,233-byte packet is cut by 1.
    check_ptb(udp6(1300), 1280, P.packet_too_big(udp6(1300), 1280, SERVER))
    assert P.packet_too_big(udp6(1280), 1280, SERVER) is None


def _icmp6(type_: int, size: int = 1400, src: bytes = A, dst: bytes = B) -> bytes:
    body = bytes([type_, 0, 0, 0]) + bytes(size - 44)
    cks = P.icmpv6_checksum(src, dst, body)
    return P.build_ipv6(src, dst, 58, body[:2] + cks.to_bytes(2, "big") + body[4:])


@pytest.mark.parametrize("type_", [1, 2, 3, 4, 100, 101, 127, 137])
def test_no_packet_too_big_for_icmpv6_errors_and_redirects(type_: int) -> None:
    # §2.4(e.1) "An ICMPv6 error message." (e.2) "An ICMPv6 redirect message".
    assert P.packet_too_big(_icmp6(type_), 1280, SERVER) is None
    assert P.icmpv6_error_forbidden(_icmp6(type_))


@pytest.mark.parametrize("type_", [128, 129, 133, 135, 136, 143, 200, 255])
def test_packet_too_big_for_informational_icmpv6(type_: int) -> None:
    check_ptb(_icmp6(type_), 1280, P.packet_too_big(_icmp6(type_), 1280, SERVER))


def test_no_packet_too_big_for_icmpv6_error_behind_extension_headers() -> None:
    err = ICMPv6DestUnreach() / Raw(bytes(1400))
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    for chain in (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0)):
        pkt = bytes(base / chain / err)
        assert P.packet_too_big(pkt, 1280, SERVER) is None
    # UDP behind a Hop-by-Hop header gets the error.
    pkt = bytes(base / IPv6ExtHdrHopByHop() / UDP() / Raw(bytes(1400)))
    assert not P.icmpv6_error_forbidden(pkt)
    check_ptb(pkt, 1280, P.packet_too_big(pkt, 1280, SERVER))
    # A non-first fragment carries no ICMPv6 header, so it gets the error.
    pkt = bytes(base / IPv6ExtHdrFragment(offset=100) / Raw(bytes(1400)))
    check_ptb(pkt, 1280, P.packet_too_big(pkt, 1280, SERVER))
    # An ICMPv6 header with no type byte: nothing is sent (as Linux does).
    pkt = P.build_ipv6(A, B, 0, bytes([58, 0]) + bytes(6))
    assert P.icmpv6_error_forbidden(pkt)


@pytest.mark.parametrize("src", [MCAST, UNSPEC])
def test_no_packet_too_big_for_sources_that_are_not_one_node(src: bytes) -> None:
    # §2.4(e.6) "A packet whose source address does not uniquely identify a single node".
    assert P.packet_too_big(udp6(1500, src=src), 1280, SERVER) is None


def test_packet_too_big_for_multicast_destination() -> None:
    # §2.4(e.3): Packet Too Big is the exception "to allow Path MTU discovery to work for IPv6
    # multicast"; other errors are not sent for multicast destinations.
    invoking = udp6(1500, dst=MCAST)
    check_ptb(invoking, 1280, P.packet_too_big(invoking, 1280, SERVER))
    assert P.icmpv6_error_forbidden(invoking)
    assert not P.icmpv6_error_forbidden(invoking, multicast_exempt=True)
    assert not P.icmpv6_error_forbidden(udp6(1500))


def test_packet_too_big_for_echo_of_multicast_and_malformed() -> None:
    assert P.packet_too_big(udp6(1500) + b"\0", 1280, SERVER) is None
    assert P.packet_too_big(b"\x40" + udp6(1500)[1:], 1280, SERVER) is None
    with pytest.raises(PacketError):
        P.icmpv6_error_forbidden(b"\x60")


@pytest.mark.parametrize(("mtu", "src"), [(1279, SERVER), (1 << 32, SERVER), (1280, b"\1" * 4)])
def test_packet_too_big_rejects_bad_arguments(mtu: int, src: bytes) -> None:
    with pytest.raises(ValueError):
        P.packet_too_big(udp6(1500), mtu, src)


# --------------------------------------------------------------------------------------------
# Destination Unreachable (RFC 4443 §3.1, §2.4): AYIYA tunnels not heard from


# (Not to multicast: §2.4(e.3) forbids the error, a case of its own below.)
@given(
    size=st.integers(48, 3000),
    code=st.sampled_from([0, 1, 3]),
    dst=addr6.filter(lambda a: a[0] != 0xFF),
)
@example(size=1232, code=0, dst=B)
@example(size=1233, code=3, dst=B)
def test_destination_unreachable(size: int, code: int, dst: bytes) -> None:
    invoking = udp6(size, dst=dst)
    err = P.destination_unreachable(invoking, code, SERVER)
    assert err is not None and len(err) == min(1280, 48 + len(invoking))
    s = IPv6(err)
    assert s.src == str(ipaddress.IPv6Address(SERVER))
    assert s.dst == str(ipaddress.IPv6Address(invoking[8:24]))
    assert s.nh == 58 and s.hlim == 64 and s.plen == len(err) - 40
    msg = s[ICMPv6DestUnreach]
    assert (msg.type, msg.code) == (1, code) and err[44:48] == b"\0\0\0\0"
    assert err[48:] == invoking[: len(err) - 48]
    assert ref_icmpv6_ok(err)


def test_no_destination_unreachable_where_rfc_4443_forbids_or_for_malformed() -> None:
    # §2.4(e): not for errors, nor for multicast destinations (only PTB is exempt), nor for
    # sources that are not one node.
    assert P.destination_unreachable(_icmp6(1), 0, SERVER) is None
    assert P.destination_unreachable(udp6(100, dst=MCAST), 0, SERVER) is None
    assert P.destination_unreachable(udp6(100, src=UNSPEC), 0, SERVER) is None
    assert P.destination_unreachable(_icmp6(128), 0, SERVER) is not None
    assert P.destination_unreachable(udp6(100) + b"\0", 0, SERVER) is None
    assert P.destination_unreachable(b"\x40" + udp6(100)[1:], 0, SERVER) is None
    assert P.destination_unreachable(b"\x60", 0, SERVER) is None
    for code, src in ((256, SERVER), (-1, SERVER), (0, b"\1" * 4)):
        with pytest.raises(ValueError):
            P.destination_unreachable(udp6(100), code, src)


# --------------------------------------------------------------------------------------------
# ICMPv4 Fragmentation Needed (RFC 1191) for 4in6 tunnels

V4_SRC = bytes([192, 0, 2, 10])
V4_DST = bytes([198, 51, 100, 20])
V4_ROUTER = bytes([203, 0, 113, 1])


def udp4(size: int, df: bool = True, src: bytes = V4_SRC, dst: bytes = V4_DST) -> bytes:
    payload = bytes(i & 0xFF for i in range(size - 28))
    udp = struct.pack("!HHHH", 1234, 5678, size - 20, 0) + payload
    return P.build_ipv4(src, dst, 17, udp, ident=0x4242, df=df)


@given(size=st.integers(69, 9000), mtu=st.integers(68, 1480))
@example(size=1481, mtu=1480)
@example(size=1480, mtu=1480)
@example(size=600, mtu=576)
def test_frag_needed(size: int, mtu: int) -> None:
    invoking = udp4(size)
    err = P.frag_needed_v4(invoking, mtu, V4_ROUTER)
    if size <= mtu:
        assert err is None
        return
    assert err is not None
    assert len(err) == min(576, 28 + size)
    P.check_ipv4(err)
    s = IP(err)
    assert (s.src, s.dst, s.proto, s.ttl) == ("203.0.113.1", "192.0.2.10", 1, 64)
    icmp = s[ICMP]
    assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, mtu)
    assert ref_checksum(err[20:]) == 0
    assert err[28:] == invoking[: len(err) - 28]
    assert s[IPerror].src == "192.0.2.10"


def _icmp4(type_: int, size: int = 1500) -> bytes:
    body = bytes([type_, 0, 0, 0]) + bytes(size - 24)
    body = body[:2] + P.internet_checksum(body).to_bytes(2, "big") + body[4:]
    return P.build_ipv4(V4_SRC, V4_DST, 1, body, df=True)


@pytest.mark.parametrize(
    ("case", "pkt"),
    [
        ("DF clear", udp4(1500, df=False)),
        ("fits", udp4(1400)),
        ("bad header checksum", _patch(udp4(1500), 10, b"\0\0")),
        ("not IPv4", udp6(1500)),
        ("dst multicast", udp4(1500, dst=bytes([224, 0, 0, 1]))),
        ("dst broadcast", udp4(1500, dst=bytes([255, 255, 255, 255]))),
        ("src zero", udp4(1500, src=bytes([0, 0, 0, 0]))),
        ("src loopback", udp4(1500, src=bytes([127, 0, 0, 1]))),
        ("src multicast", udp4(1500, src=bytes([239, 1, 2, 3]))),
        ("src class E", udp4(1500, src=bytes([240, 0, 0, 1]))),
        ("ICMP unreachable", _icmp4(3)),
        ("ICMP source quench", _icmp4(4)),
        ("ICMP redirect", _icmp4(5)),
        ("ICMP time exceeded", _icmp4(11)),
        ("ICMP parameter problem", _icmp4(12)),
    ],
)
def test_no_frag_needed(case: str, pkt: bytes) -> None:
    assert P.frag_needed_v4(pkt, 1400, V4_ROUTER) is None


def test_no_frag_needed_for_non_initial_fragment() -> None:
    h = P.parse_ipv4(udp4(1500))
    later = dataclasses.replace(h, flags=0b010, fragment_offset=100).to_wire()
    assert P.frag_needed_v4(later, 1400, V4_ROUTER) is None
    first = dataclasses.replace(h, flags=0b011, fragment_offset=0).to_wire()  # DF and MF
    assert P.frag_needed_v4(first, 1400, V4_ROUTER) is not None


@pytest.mark.parametrize("type_", [0, 8, 13])
def test_frag_needed_for_icmp_queries(type_: int) -> None:
    assert P.frag_needed_v4(_icmp4(type_), 1400, V4_ROUTER) is not None
    assert not P.icmpv4_is_error(type_)


@pytest.mark.parametrize(("mtu", "src"), [(67, V4_ROUTER), (65536, V4_ROUTER), (1400, A)])
def test_frag_needed_rejects_bad_arguments(mtu: int, src: bytes) -> None:
    with pytest.raises(ValueError):
        P.frag_needed_v4(udp4(1500), mtu, src)


def test_packet_module_is_pure() -> None:
    """Sans-IO: the module imports only the standard library's pure parts."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(P))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "struct",
        "collections.abc",
        "dataclasses",
        "enum",
        "ipaddress",
    }


def test_echo_reply4_matches_scapy() -> None:
    req = bytes(IP(src="100.64.0.5", dst="100.64.0.6") / ICMP(type=8, id=7, seq=3) / b"hello")
    rep = P.echo_reply4(req, bytes([100, 64, 0, 6]))
    assert rep is not None
    parsed = IP(rep)
    assert (parsed.src, parsed.dst, parsed[ICMP].type, parsed[ICMP].id, parsed[ICMP].seq) == (
        "100.64.0.6",
        "100.64.0.5",
        0,
        7,
        3,
    )
    again = IP(rep)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(IP(bytes(again))) == rep  # both checksums as scapy computes them
    assert P.echo_reply4(req, bytes([100, 64, 0, 7])) is None  # not for us
    bad = bytearray(req)
    bad[-1] ^= 1
    assert P.echo_reply4(bytes(bad)) is None  # ICMP checksum
    frag = bytes(IP(src="100.64.0.5", dst="100.64.0.6", flags="MF") / ICMP() / b"x")
    assert P.echo_reply4(frag) is None


@given(st.binary(max_size=200))
def test_echo_reply4_never_raises(data: bytes) -> None:
    P.echo_reply4(data)
