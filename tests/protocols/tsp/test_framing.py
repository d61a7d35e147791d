"""TSP framing: UDP header, lines, Content-length bodies and authentication-phase lines.

Vectors come from RFC 5572 and from gogoc 1.2 as captured in /work/shared/reference/tsp.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tunnelbroker.protocols.tsp.errors import DecodeError, LocalProtocolError, StatusCode
from tunnelbroker.protocols.tsp.framing import (
    HEADER_SIZE,
    SEQ_MASK,
    Capability,
    MessageReader,
    Reply,
    UdpHeader,
    encode_capability,
    encode_content,
    encode_reply,
    encode_request,
    encode_version,
    is_ipv6_data,
    is_signalling,
    parse_authenticate,
    parse_capability,
    parse_reply,
    parse_status_line,
    parse_version,
    split_datagram,
    strip_nuls,
)
from tunnelbroker.protocols.tsp.messages import TunnelType

# tsp.md §2.5 "What gogoc sends", byte for byte (every line ends in CRLF).
# tsp.md §2.5 "What gogoc sends", captured byte for byte (CRLF line ends).
GOGOC_CREATE = (Path(__file__).parent / "data" / "gogoc_create_v6udpv4.bin").read_bytes()
GOGOC_ACCEPT = b'Content-length: 35\r\n<tunnel action="accept"></tunnel>\r\n'


def assert_decode_error(fn: Callable[[], object], code: int = 500) -> None:
    with pytest.raises(DecodeError) as info:
        fn()
    assert info.value.code == code


# --------------------------------------------------------------------------------------------
# UDP header (RFC 5572 §3.2 Fig. 7; tsp.md §2.3, §2.9)
# --------------------------------------------------------------------------------------------


def test_gogoc_first_header() -> None:
    # tsp.md §2.9: "C f00000f0 000003a3 VERSION=2.0.2\r\n" - gogoc starts at seq 240.
    wire = bytes.fromhex("f00000f0000003a3")
    header = UdpHeader.from_wire(wire)
    assert header == UdpHeader(seq=240, timestamp=0x3A3)
    assert header.to_wire() == wire
    assert UdpHeader(seq=241, timestamp=0).to_wire()[:4] == bytes.fromhex("f00000f1")


def test_header_extremes() -> None:
    assert UdpHeader(0, 0).to_wire() == b"\xf0\x00\x00\x00\x00\x00\x00\x00"
    top = UdpHeader(SEQ_MASK, 0xFFFFFFFF)
    assert top.to_wire() == b"\xff" * 8
    assert UdpHeader.from_wire(b"\xff" * 8) == top
    assert HEADER_SIZE == 8


@given(seq=st.integers(0, SEQ_MASK), ts=st.integers(0, 2**32 - 1), tail=st.binary(max_size=20))
def test_header_roundtrip(seq: int, ts: int, tail: bytes) -> None:
    wire = UdpHeader(seq, ts).to_wire()
    assert len(wire) == HEADER_SIZE
    assert is_signalling(wire)
    assert split_datagram(wire + tail) == (UdpHeader(seq, ts), tail)


@pytest.mark.parametrize("seq,ts", [(-1, 0), (SEQ_MASK + 1, 0), (0, -1), (0, 2**32)])
def test_header_out_of_range_is_local_error(seq: int, ts: int) -> None:
    with pytest.raises(LocalProtocolError):
        UdpHeader(seq, ts)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xf0",
        b"\xf0\x00\x00\xf0\x00\x00\x03",  # 7 bytes
        bytes.fromhex("600000000000003a"),  # an IPv6 packet, not signalling
        bytes.fromhex("e00000f0000003a3"),
        bytes.fromhex("0f0000f0000003a3"),
    ],
)
def test_header_rejects(data: bytes) -> None:
    assert_decode_error(lambda: UdpHeader.from_wire(data))
    assert_decode_error(lambda: split_datagram(data))


def test_split_datagram() -> None:
    hdr = bytes.fromhex("f00000f0000003a3")
    assert split_datagram(hdr + b"VERSION=2.0.2\r\n") == (
        UdpHeader(240, 0x3A3),
        b"VERSION=2.0.2\r\n",
    )
    # gogoc's header-only "read" probe (tsp.md §2.3).
    assert split_datagram(bytes.fromhex("f00000f300000bb8")) == (UdpHeader(243, 3000), b"")


@pytest.mark.parametrize(
    "data,signalling,ipv6",
    [
        (b"", False, False),
        (b"\xf0", True, False),
        (b"\xff\xff", True, False),
        (b"\x60\x00\x00\x00", False, True),
        (b"\x6f", False, True),
        (b"\x45\x00", False, False),
        (b"\x00", False, False),
    ],
)
def test_classify(data: bytes, signalling: bool, ipv6: bool) -> None:
    assert is_signalling(data) is signalling
    assert is_ipv6_data(data) is ipv6


# --------------------------------------------------------------------------------------------
# Content-length encoding (tsp.md §1.4, §2.5)
# --------------------------------------------------------------------------------------------


def test_gogoc_create_length_counts_final_crlf() -> None:
    header, _, body = GOGOC_CREATE.partition(b"\r\n")
    assert header == b"Content-length: 213"
    assert len(body) == 213
    assert body.endswith(b"</tunnel>\r\n")
    assert encode_content(body) == GOGOC_CREATE


def test_accept_is_35() -> None:
    xml = b'<tunnel action="accept"></tunnel>'
    assert encode_request(xml) == GOGOC_ACCEPT
    assert encode_request(xml + b"\r\n") == GOGOC_ACCEPT


def test_encode_content_spelling() -> None:
    assert encode_content(b"200 Success\r\n") == b"Content-length: 13\r\n200 Success\r\n"
    with pytest.raises(LocalProtocolError):
        encode_content(b"")


def test_encode_reply() -> None:
    xml = b'<tunnel action="info" type="v6v4">\n</tunnel>'
    wire = encode_reply("200 Success", xml)
    body = b"200 Success\r\n" + xml + b"\r\n"
    assert wire == b"Content-length: %d\r\n" % len(body) + body
    # "N counts from the 2 of 200 through the final CRLF" (tsp.md §2.5).
    n = int(wire.split(b"\r\n", 1)[0].split(b":")[1])
    assert n == len(wire) - wire.index(b"200")
    # A final CRLF already present is not doubled; empty XML means none.
    assert encode_reply("200 Success", xml + b"\r\n") == wire
    assert encode_reply("200 Success") == encode_reply("200 Success", b"")
    assert encode_reply(StatusCode.UNSUPPORTED_CLIENT_VERSION.to_line(referral=True)) == (
        b"Content-length: 33\r\n1302 Unsupported client version\r\n"
    )


@pytest.mark.parametrize("line", ["200 Success\r\n", "200\nSuccess", "200 Succ\u00e8s"])
def test_encode_reply_rejects_bad_status(line: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(line)


# --------------------------------------------------------------------------------------------
# Replies and status lines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,expected",
    [
        (b"200 Success", (200, "Success")),
        (b"200 Success\r\n", (200, "Success")),
        (b"1302 Unsupported client version", (1302, "Unsupported client version")),
        (b"300 Authentication failed\r\n\x00", (300, "Authentication failed")),
        (b"\x00 530 Server too busy", (530, "Server too busy")),
        (b"200 Authentication successful", (200, "Authentication successful")),  # Fig. 15
        (b"200", (200, "")),
        (b"200Success", (200, "Success")),  # atoi: leading digits only
        (b"0200 OK", (200, "OK")),
        (b"200 \xff\xfe", (200, "\ufffd\ufffd")),
    ],
)
def test_parse_status_line(line: bytes, expected: tuple[int, str]) -> None:
    assert parse_status_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\x00\r\n",
        b"OK Authentication successful",  # Fig. 17: no number
        b"Success 200",
        b"-200 Success",
        b"1" * 10 + b" too long",
        b"9" * 5000,
    ],
)
def test_parse_status_line_rejects(line: bytes) -> None:
    assert_decode_error(lambda: parse_status_line(line))
    assert_decode_error(lambda: parse_reply(line + b"\r\n<tunnel/>"))


def test_parse_reply_fig13_offer() -> None:
    # RFC 5572 Fig. 13, the broker's reply after its Content-length line (RFC indentation).
    body = (
        b"200 Success\r\n"
        b'<tunnel action="info" type="v6udpv4" lifetime="604800">\r\n'
        b"  <server>\r\n"
        b'    <address type="ipv4">192.0.2.115</address>\r\n'
        b"  </server>\r\n"
        b"</tunnel>\r\n"
    )
    reply = parse_reply(body)
    assert reply.code == 200
    assert reply.text == "Success"
    assert reply.xml.startswith(b'<tunnel action="info"')
    assert reply.xml.endswith(b"</tunnel>")


def test_parse_reply_fig9_referral() -> None:
    # RFC 5572 Fig. 9: at VERSION the referral comes without a Content-length line.
    body = (
        b"1302 Unsupported client version \r\n"
        b'  <tunnel action="list" type="broker">\r\n'
        b"     <broker>\r\n"
        b'        <address type="ipv4">1.2.3.4</address>\r\n'
        b"     </broker>\r\n"
        b"  </tunnel>\r\n"
    )
    reply = parse_reply(body)
    assert (reply.code, reply.text) == (1302, "Unsupported client version")
    assert reply.xml.startswith(b"<tunnel") and reply.xml.endswith(b"</tunnel>")


@pytest.mark.parametrize(
    "body,expected",
    [
        (b"200 Success\r\n", Reply(200, "Success", b"")),
        (b"200 Success", Reply(200, "Success", b"")),
        (b"300 Authentication failed\n", Reply(300, "Authentication failed", b"")),
        (b"\x00200 OK\r\n\r\n<a/>\r\n\x00", Reply(200, "OK", b"<a/>")),
        # The XML starts at the first "<" after the status line, whatever precedes it.
        (b"200 <odd>\r\njunk <tunnel/>", Reply(200, "<odd>", b"<tunnel/>")),
    ],
)
def test_parse_reply_shapes(body: bytes, expected: Reply) -> None:
    assert parse_reply(body) == expected


def test_reply_roundtrip_through_reader() -> None:
    xml = b'<tunnel action="info" type="v6v4" lifetime="1440"></tunnel>'
    reader = MessageReader()
    reader.feed(encode_reply("200 Success", xml))
    body = reader.next_content()
    assert body is not None
    assert parse_reply(body) == Reply(200, "Success", xml)
    assert reader.pending() == 0


# --------------------------------------------------------------------------------------------
# MessageReader
# --------------------------------------------------------------------------------------------

# What a server reads over TCP from gogoc with ANONYMOUS (tsp.md §2.4, §2.5).
GOGOC_TCP_ANONYMOUS = (
    b"VERSION=2.0.2\r\n" + b"AUTHENTICATE ANONYMOUS\r\n\x00" + GOGOC_CREATE + GOGOC_ACCEPT
)
ANONYMOUS_PLAN = ["line", "line", "content", "content"]


def drain(reader: MessageReader, plan: list[str], chunks: Iterator[bytes]) -> list[bytes]:
    """Feed chunks and pull lines/bodies in ``plan`` order as soon as they complete."""
    out: list[bytes] = []
    steps = iter(plan)
    step = next(steps, None)
    for chunk in chunks:
        reader.feed(chunk)
        while step is not None:
            got = reader.next_line() if step == "line" else reader.next_content()
            if got is None:
                break
            out.append(got)
            step = next(steps, None)
    return out


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def test_gogoc_tcp_stream_whole_and_bytewise() -> None:
    expected = [
        b"VERSION=2.0.2",
        b"AUTHENTICATE ANONYMOUS",
        GOGOC_CREATE.partition(b"\r\n")[2],
        GOGOC_ACCEPT.partition(b"\r\n")[2],
    ]
    whole = MessageReader()
    assert drain(whole, ANONYMOUS_PLAN, iter([GOGOC_TCP_ANONYMOUS])) == expected
    bytewise = MessageReader()
    assert drain(bytewise, ANONYMOUS_PLAN, byte_by_byte(GOGOC_TCP_ANONYMOUS)) == expected
    assert whole.pending() == bytewise.pending() == 0


@given(cuts=st.lists(st.integers(0, len(GOGOC_TCP_ANONYMOUS)), max_size=30))
def test_any_split_equals_whole(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(GOGOC_TCP_ANONYMOUS)]
    chunks = [GOGOC_TCP_ANONYMOUS[a:b] for a, b in zip(points, points[1:], strict=False)]
    whole = drain(MessageReader(), ANONYMOUS_PLAN, iter([GOGOC_TCP_ANONYMOUS]))
    assert drain(MessageReader(), ANONYMOUS_PLAN, iter(chunks)) == whole


def test_gogoc_plain_in_one_tcp_read() -> None:
    # tsp.md §2.4: one read may hold the AUTHENTICATE line, its NUL and the credentials.
    reader = MessageReader()
    reader.feed(b"AUTHENTICATE PLAIN\r\n\x00\x00alice\x00secret\r\n")
    assert reader.next_line() == b"AUTHENTICATE PLAIN"
    assert reader.next_line() == b"\x00\x00alice\x00secret"
    assert reader.next_line() is None
    assert reader.pending() == 0


def test_trailing_nul_stays_for_the_caller() -> None:
    # Over UDP the datagram is "AUTHENTICATE ANONYMOUS\r\n\0": the NUL is left pending.
    reader = MessageReader()
    reader.feed(b"AUTHENTICATE ANONYMOUS\r\n\x00")
    assert reader.next_line() == b"AUTHENTICATE ANONYMOUS"
    assert reader.pending() == 1
    assert reader.take_rest() == b"\x00"
    assert reader.pending() == 0


def test_line_terminators() -> None:
    reader = MessageReader()
    reader.feed(b"a\nb\r\n\r\nc\rd\n\n")
    assert [reader.next_line() for _ in range(6)] == [b"a", b"b", b"", b"c\rd", b"", None]


def test_truncated_content_waits_and_header_is_parsed_once() -> None:
    reader = MessageReader()
    reader.feed(b"Content-length: 35\r\n<tunnel action=")
    assert reader.next_content() is None
    assert reader.pending() == len(b"<tunnel action=")
    assert reader.next_content() is None
    reader.feed(b'"accept"></tunnel>')
    assert reader.next_content() is None  # the CRLF is counted and still missing
    reader.feed(b"\r")
    assert reader.next_content() is None
    reader.feed(b"\nVERSION")
    assert reader.next_content() == b'<tunnel action="accept"></tunnel>\r\n'
    assert reader.take_rest() == b"VERSION"


def test_header_only_then_body_in_later_feeds() -> None:
    reader = MessageReader()
    reader.feed(b"Content-len")
    assert reader.next_content() is None
    reader.feed(b"gth: 3\r\n")
    assert reader.next_content() is None
    assert reader.pending() == 0
    reader.feed(b"abcd")
    assert reader.next_content() == b"abc"
    assert reader.pending() == 1


@pytest.mark.parametrize(
    "header",
    [
        b"Content-length: 3\r\n",
        b"content-length:3\n",
        b"CONTENT-LENGTH :  3  \r\n",
        b"\x00Content-length: 3\r\n",  # the NUL that follows gogoc's AUTHENTICATE line
        b"\x00 \t Content-Length:\t3\x00\r\n",
        b"Content-length: 0003\r\n",
    ],
)
def test_content_length_tolerance(header: bytes) -> None:
    reader = MessageReader()
    reader.feed(header + b"xyz")
    assert reader.next_content() == b"xyz"


@pytest.mark.parametrize(
    "header",
    [
        b"Content-length: 0\r\n",
        b"Content-length: 4097\r\n",
        b"Content-length: 99999999999999999999\r\n",
        b"Content-length: -1\r\n",
        b"Content-length: +3\r\n",
        b"Content-length: 3x\r\n",
        b"Content-length: 3 3\r\n",
        b"Content-length:\r\n",
        b"Content-length 3\r\n",
        b"Content-type: 3\r\n",
        b"VERSION=2.0.2\r\n",
        b"\r\n",
        b"Content-length: \xd9\xa3\r\n",  # a non-ASCII digit
    ],
)
def test_content_length_rejects(header: bytes) -> None:
    reader = MessageReader()
    reader.feed(header + b"x" * 5000)
    assert_decode_error(reader.next_content)


def test_content_max_size_is_inclusive() -> None:
    reader = MessageReader(max_size=32)
    reader.feed(b"Content-length: 32\r\n" + b"x" * 32)
    assert reader.next_content() == b"x" * 32
    reader.feed(b"Content-length: 33\r\n")
    assert_decode_error(reader.next_content)


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_line_limit_same_whole_or_bytewise(bytewise: bool, terminator: bytes) -> None:
    def read(line: bytes) -> bytes | None:
        reader = MessageReader(max_size=16)
        data = line + terminator
        for chunk in byte_by_byte(data) if bytewise else [data]:
            reader.feed(chunk)
            got = reader.next_line()
            if got is not None:
                return got
        return None

    assert read(b"x" * 16) == b"x" * 16
    assert_decode_error(lambda: read(b"x" * 17))
    assert_decode_error(lambda: read(b"x" * 17 + b"\r"))


def test_line_limit_without_terminator() -> None:
    reader = MessageReader(max_size=16)
    reader.feed(b"x" * 17)  # the 17th byte could still be a CR
    assert reader.next_line() is None
    reader.feed(b"x")
    assert_decode_error(reader.next_line)
    # The Content-length line is held to the same cap.
    reader = MessageReader(max_size=16)
    reader.feed(b"Content-length: 1" + b" " * 10)
    assert_decode_error(reader.next_content)


def test_default_limit_is_4096() -> None:
    reader = MessageReader()
    reader.feed(b"a" * 4096 + b"\r\n")
    assert reader.next_line() == b"a" * 4096
    reader.feed(b"a" * 5000)
    assert_decode_error(reader.next_line)


def test_peek_does_not_consume() -> None:
    reader = MessageReader()
    reader.feed(b"\x00VERSION=2.0.2\r\n")
    assert reader.peek() == b"\x00VERSION=2.0.2\r\n"
    assert reader.peek() == b"\x00VERSION=2.0.2\r\n"
    assert not reader.in_body
    assert reader.next_line() == b"\x00VERSION=2.0.2"
    assert reader.peek() == b""


def test_take_rest_resets_body_state() -> None:
    reader = MessageReader()
    reader.feed(b"Content-length: 10\r\nabc")
    assert reader.next_content() is None
    assert reader.in_body
    assert reader.peek() == b"abc"
    assert reader.take_rest() == b"abc"
    assert not reader.in_body
    reader.feed(b"VERSION=2.0.0\r\n")
    assert reader.next_line() == b"VERSION=2.0.0"


def test_next_line_inside_body_is_local_error() -> None:
    reader = MessageReader()
    reader.feed(b"Content-length: 10\r\nabc\r\n")
    assert reader.next_content() is None
    with pytest.raises(LocalProtocolError):
        reader.next_line()


def test_invalid_max_size() -> None:
    with pytest.raises(LocalProtocolError):
        MessageReader(max_size=0)


@settings(max_examples=300)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 50), kinds=st.lists(st.booleans()))
def test_reader_fuzz_only_decode_error(data: bytes, chunk: int, kinds: list[bool]) -> None:
    reader = MessageReader(max_size=64)
    kind = iter(kinds)
    try:
        for i in range(0, len(data), chunk):
            reader.feed(data[i : i + chunk])
            while True:
                got = reader.next_content() if next(kind, False) else reader.next_line()
                if got is None:
                    break
                assert len(got) <= 64
    except DecodeError as e:
        assert e.code == StatusCode.INVALID_REQUEST_FORMAT
    except LocalProtocolError:
        pass  # next_line() while a body is pending: the driver's own misuse


# --------------------------------------------------------------------------------------------
# VERSION / CAPABILITY / AUTHENTICATE (RFC 5572 §3.1-3.3; tsp.md §1.3, §2.4)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,version",
    [
        (b"VERSION=2.0.2", "2.0.2"),
        (b"VERSION=2.0.0\r\n", "2.0.0"),
        (b"VERSION=1.0", "1.0"),  # Fig. 17
        (b"\x00version = 2.0.1 \r\n\x00", "2.0.1"),
        (b"Version=1.0.1", "1.0.1"),
    ],
)
def test_parse_version(line: bytes, version: str) -> None:
    assert parse_version(line) == version


@pytest.mark.parametrize(
    "line",
    [b"", b"VERSION=", b"VERSION", b"VERSIONS=2.0", b"VERSION=2.0 x", b"CAPABILITY", b"=2.0.0"],
)
def test_parse_version_rejects(line: bytes) -> None:
    assert_decode_error(lambda: parse_version(line))


def test_encode_version() -> None:
    assert encode_version("2.0.0") == b"VERSION=2.0.0\r\n"
    assert parse_version(encode_version("2.0.2")) == "2.0.2"
    for bad in ["", "2.0.0\r\n", "2 0", "2.0.\u00e9"]:
        with pytest.raises(LocalProtocolError):
            encode_version(bad)


RFC_CAPABILITY = (
    b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=ANONYMOUS AUTH=PLAIN AUTH=DIGEST-MD5\r\n"
)


def test_encode_capability_rfc_line() -> None:
    # tsp.md §1.3: the RFC's wrapped line as it goes on the wire, in one line.
    line = encode_capability(
        [TunnelType.V6V4, TunnelType.V6UDPV4], ["ANONYMOUS", "plain", "DIGEST-MD5"]
    )
    assert line == RFC_CAPABILITY
    assert parse_capability(line) == Capability(
        (TunnelType.V6V4, TunnelType.V6UDPV4), ("ANONYMOUS", "PLAIN", "DIGEST-MD5")
    )


def test_encode_capability_rejects_bad_mechanism() -> None:
    with pytest.raises(LocalProtocolError):
        encode_capability([TunnelType.V6V4], ["PLAIN DIGEST"])


@pytest.mark.parametrize(
    "line,expected",
    [
        # Fig. 15, Fig. 17/18 (editorial wrap removed), Fig. 19, 6bed4's pubTSP.
        (b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n", ((TunnelType.V6V4,), ("ANONYMOUS",))),
        (
            b"CAPABILITY TUNNEL=V4V6 AUTH=DIGEST-MD5 AUTH=ANONYMOUS\r\n",
            ((TunnelType.V4V6,), ("DIGEST-MD5", "ANONYMOUS")),
        ),
        (
            b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5",
            ((TunnelType.V6V4, TunnelType.V6UDPV4), ("DIGEST-MD5",)),
        ),
        (b"CAPABILITY TUNNEL=V6UDPV4 AUTH=ANONYMOUS", ((TunnelType.V6UDPV4,), ("ANONYMOUS",))),
        # Unknown, malformed and duplicate tokens are ignored; AUTH values are case-insensitive.
        (
            b"CAPABILITY TUNNEL=DSLITE X=Y junk TUNNEL= AUTH=passdss-3des-1 AUTH=PLAIN "
            b"AUTH=plain AUTH=\xff\xfe TUNNEL=v6anyv4\r\n\x00",
            ((TunnelType.V6ANYV4,), ("PASSDSS-3DES-1", "PLAIN")),
        ),
        (b"CAPABILITY", ((), ())),
        (b"CAPABILITY \r\n", ((), ())),
        (b"\x00CAPABILITY  TUNNEL=V6V4\t AUTH=PLAIN", ((TunnelType.V6V4,), ("PLAIN",))),
    ],
)
def test_parse_capability(
    line: bytes, expected: tuple[tuple[TunnelType, ...], tuple[str, ...]]
) -> None:
    assert parse_capability(line) == Capability(*expected)


@pytest.mark.parametrize(
    "line",
    [b"", b"capability TUNNEL=V6V4", b"CAPABILITYTUNNEL=V6V4", b"200 Success", b"1302 x"],
)
def test_parse_capability_rejects(line: bytes) -> None:
    # gogoc requires exactly "CAPABILITY " (tsp.md §2.4); anything else is a status line.
    assert_decode_error(lambda: parse_capability(line))


@pytest.mark.parametrize(
    "line,mech",
    [
        (b"AUTHENTICATE ANONYMOUS", "ANONYMOUS"),
        (b"AUTHENTICATE DIGEST-MD5\r\n\x00", "DIGEST-MD5"),  # gogoc's trailing NUL
        (b"\x00AUTHENTICATE PLAIN", "PLAIN"),
        (b"authenticate digest-md5", "DIGEST-MD5"),
        (b"AUTHENTICATE   PASSDSS-3DES-1 ", "PASSDSS-3DES-1"),
    ],
)
def test_parse_authenticate(line: bytes, mech: str) -> None:
    assert parse_authenticate(line) == mech


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"AUTHENTICATE",
        b"AUTHENTICATE ",
        b"AUTHENTICATE ...",  # Fig. 19's editorial placeholder
        b"AUTH PLAIN",
        b"AUTHENTICATE PLAIN extra",
        b"AUTHENTICATEPLAIN",
        b"\x00\x00alice\x00secret",
    ],
)
def test_parse_authenticate_rejects(line: bytes) -> None:
    assert_decode_error(lambda: parse_authenticate(line))


def test_strip_nuls() -> None:
    assert strip_nuls(b"\x00\x00alice\x00secret\r\n\x00") == b"alice\x00secret"
    assert strip_nuls(b" \t\x00\r\n") == b""
    assert strip_nuls(b"x") == b"x"


# --------------------------------------------------------------------------------------------
# Pattern 5: arbitrary bytes raise DecodeError or parse, never anything else
# --------------------------------------------------------------------------------------------

PARSERS: list[Callable[[bytes], object]] = [
    UdpHeader.from_wire,
    split_datagram,
    parse_reply,
    parse_status_line,
    parse_version,
    parse_capability,
    parse_authenticate,
]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@settings(max_examples=300)
@given(data=st.binary(max_size=200))
@example(data=b"\xf0")
@example(data=b"9" * 199)
@example(data=b"CAPABILITY \xff=\xff")
def test_parsers_raise_only_decode_error(parser: Callable[[bytes], object], data: bytes) -> None:
    try:
        parser(data)
    except DecodeError as e:
        assert e.code == StatusCode.INVALID_REQUEST_FORMAT


@pytest.mark.parametrize("parser", PARSERS[2:], ids=lambda p: p.__name__)
@given(text=st.text(max_size=80))
def test_text_parsers_raise_only_decode_error(parser: Callable[[bytes], object], text: str) -> None:
    for prefix in ["", "VERSION=", "CAPABILITY ", "AUTHENTICATE ", "200 "]:
        try:
            parser((prefix + text).encode("utf-8", errors="surrogatepass"))
        except DecodeError:
            pass
