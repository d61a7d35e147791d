"""TSP framing: the reliable-UDP header, text lines and ``Content-length`` messages.

TSP (RFC 5572) is a byte stream of CRLF-terminated text lines (``VERSION=``, ``CAPABILITY``,
``AUTHENTICATE``, status lines, SASL tokens) and ``Content-length``-framed bodies (a tunnel
request, or a status line plus XML). Over TCP these arrive in arbitrary pieces; over UDP each
datagram carries an 8-byte sequence/timestamp header followed by one piece of that stream.

Everything here is pure: bytes in, values out. Any malformed peer input raises
:class:`~tunnelbroker.protocols.tsp.errors.DecodeError` and nothing else.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tunnelbroker.protocols.tsp.errors import DecodeError, LocalProtocolError
from tunnelbroker.protocols.tsp.messages import TunnelType

__all__ = [
    "HEADER_SIZE",
    "SEQ_MASK",
    "Capability",
    "MessageReader",
    "Reply",
    "UdpHeader",
    "encode_capability",
    "encode_content",
    "encode_reply",
    "encode_request",
    "encode_version",
    "is_ipv6_data",
    "is_signalling",
    "parse_authenticate",
    "parse_capability",
    "parse_reply",
    "parse_status_line",
    "parse_version",
    "split_datagram",
    "strip_nuls",
]

#: Size of the reliable-UDP header (RFC 5572 §3.2, Fig. 7).
HEADER_SIZE = 8
#: The sequence number is the low 28 bits of the first word.
SEQ_MASK = 0x0FFFFFFF

_MARKER = 0xF
_HEADER = struct.Struct(">II")
_U32_MAX = 0xFFFFFFFF

# NUL and the ASCII whitespace bytes.strip() removes by default. gogoc follows AUTHENTICATE lines
# with a NUL and PLAIN puts NULs in front of the credentials, so every text parser strips both.
_JUNK = b"\x00 \t\r\n\x0b\x0c"

# A status code longer than this is not a TSP code; bounding it also keeps int() cheap.
_MAX_CODE_DIGITS = 9

_CONTENT_LENGTH_RE = re.compile(rb"content-length[ \t]*:[ \t]*([0-9]{1,9})[ \t]*", re.IGNORECASE)
_CODE_RE = re.compile(rb"[0-9]+")
_VERSION_RE = re.compile(rb"version[ \t]*=[ \t]*([0-9A-Za-z._-]{1,32})", re.IGNORECASE)
_AUTHENTICATE_RE = re.compile(rb"authenticate[ \t]+([0-9A-Za-z_-]{1,32})", re.IGNORECASE)
_MECHANISM_RE = re.compile(r"[0-9A-Za-z_-]{1,32}")


def strip_nuls(b: bytes) -> bytes:
    """Strip leading and trailing NUL bytes and ASCII whitespace (CR and LF included)."""
    return b.strip(_JUNK)


# --------------------------------------------------------------------------------------------
# Reliable-UDP header
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """The 8-byte header in front of every TSP signalling datagram.

    The broker echoes both fields unaltered in its reply (RFC 5572 §3.2), so a header is an
    opaque value to the server; only the client increments ``seq``.
    """

    #: 28-bit sequence number; a retransmission reuses it. gogoc starts at 240.
    seq: int
    #: 32-bit client timestamp, opaque to the server.
    timestamp: int

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= SEQ_MASK:
            raise LocalProtocolError(f"sequence number out of range: {self.seq}")
        if not 0 <= self.timestamp <= _U32_MAX:
            raise LocalProtocolError(f"timestamp out of range: {self.timestamp}")

    def to_wire(self) -> bytes:
        """The 8 header bytes, big-endian as gogoc sends them."""
        return _HEADER.pack((_MARKER << 28) | self.seq, self.timestamp)

    # Fig. 7:
    #   0                   1                   2                   3
    #   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    #  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    #  |  0xF  |                 Sequence Number                       |
    #  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    #  |                            Timestamp                          |
    #  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    @classmethod
    def from_wire(cls, data: bytes) -> UdpHeader:
        """Decode the first 8 bytes of ``data``; trailing bytes are ignored.

        Raises:
            DecodeError: fewer than 8 bytes, or the first nibble is not 0xF.
        """
        if len(data) < HEADER_SIZE:
            raise DecodeError(f"TSP header needs {HEADER_SIZE} bytes, got {len(data)}")
        word, timestamp = _HEADER.unpack_from(data)
        if word >> 28 != _MARKER:
            raise DecodeError(f"not a TSP signalling header (first nibble {word >> 28:#x})")
        return cls(seq=word & SEQ_MASK, timestamp=timestamp)


def split_datagram(data: bytes) -> tuple[UdpHeader, bytes]:
    """Split a signalling datagram into its header and TSP payload (possibly empty).

    A header-only datagram is gogoc's "read" probe: the payload is ``b""``.
    """
    return UdpHeader.from_wire(data), data[HEADER_SIZE:]


def is_signalling(datagram: bytes) -> bool:
    """True if the datagram starts with the 0xF signalling marker."""
    return len(datagram) > 0 and datagram[0] >> 4 == _MARKER


def is_ipv6_data(datagram: bytes) -> bool:
    """True if the datagram looks like a bare IPv6 packet (first nibble 6), as in v6udpv4."""
    return len(datagram) > 0 and datagram[0] >> 4 == 6


# --------------------------------------------------------------------------------------------
# Content-length messages
# --------------------------------------------------------------------------------------------


def encode_content(body: bytes) -> bytes:
    """Frame ``body`` with a ``Content-length`` line.

    N counts every byte after the ``Content-length: N\\r\\n`` line, the final CRLF included: the
    RFC's "first character of the return code line to the last character of the XML" is read
    that way by gogoc, tsps and ddtb (tsp.md §1.4). ``body`` must already end with its CRLF.
    """
    if not body:
        # gogoc rejects N = 0 (tsp.md §2.5, reply framing rule 1).
        raise LocalProtocolError("a Content-length body cannot be empty")
    return b"Content-length: %d\r\n" % len(body) + body


def _with_crlf(data: bytes) -> bytes:
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _status_bytes(status_line: str) -> bytes:
    if "\r" in status_line or "\n" in status_line:
        raise LocalProtocolError(f"status line contains a line break: {status_line!r}")
    try:
        return status_line.encode("ascii")
    except UnicodeEncodeError as e:
        raise LocalProtocolError(f"status line is not ASCII: {status_line!r}") from e


def encode_request(xml: bytes) -> bytes:
    """Frame a client's tunnel request: ``Content-length: N``, the XML and its final CRLF."""
    return encode_content(_with_crlf(xml))


def encode_reply(status_line: str, xml: bytes | None = None) -> bytes:
    """Frame a server reply: ``Content-length: N``, the status line, then the XML if any.

    Args:
        status_line: e.g. ``StatusCode.SUCCESS.to_line()``, without CRLF.
        xml: the ``<tunnel>`` document (``codec.tunnel_to_xml``); a final CRLF is added.
    """
    body = _status_bytes(status_line) + b"\r\n"
    if xml:
        body += _with_crlf(xml)
    return encode_content(body)


@dataclass(frozen=True, slots=True)
class Reply:
    """A framed server reply: status code, its text, and the XML that followed (maybe empty)."""

    code: int
    text: str
    xml: bytes


def parse_status_line(line: bytes) -> tuple[int, str]:
    """Parse ``200 Success`` or ``1302 Unsupported client version`` into (code, text).

    Like gogoc's ``atoi`` only the leading digits count (after NULs and whitespace), so odd
    lines such as ``200 Authentication successful`` parse; the text is informational.

    Raises:
        DecodeError: the line does not start with a number.
    """
    line = strip_nuls(line)
    m = _CODE_RE.match(line)
    if m is None:
        raise DecodeError(f"status line without a code: {line[:40]!r}")
    digits = m.group()
    if len(digits) > _MAX_CODE_DIGITS:
        raise DecodeError(f"status code too long: {digits[:40]!r}")
    text = line[m.end() :].strip(_JUNK).decode("utf-8", errors="replace")
    return int(digits), text


# Body of a Content-length reply (tsp.md §2.5):
#   <code> <text> CR LF
#   [<tunnel ...> ... </tunnel> CR LF]
# The XML starts at the first "<" after the status line, as gogoc looks for it.
def parse_reply(body: bytes) -> Reply:
    """Parse the body returned by :meth:`MessageReader.next_content` on the client side.

    Also fits an unframed referral (status line followed by XML in one datagram).

    Raises:
        DecodeError: the first line has no status code.
    """
    end = body.find(b"\n")
    first, rest = (body, b"") if end < 0 else (body[:end], body[end + 1 :])
    code, text = parse_status_line(first)
    start = rest.find(b"<")
    xml = b"" if start < 0 else rest[start:].rstrip(_JUNK)
    return Reply(code=code, text=text, xml=xml)


class MessageReader:
    """Reassemble TSP lines and ``Content-length`` bodies from a byte stream.

    Feed it what TCP delivers (any split), or one UDP payload at a time; then pull with
    :meth:`next_line` or :meth:`next_content`, whichever the protocol phase expects. Both return
    None until enough bytes are buffered and keep their state between feeds.

    ``max_size`` caps a line (without its terminator) and a body. The cap is checked while bytes
    are still incomplete, so a peer cannot make the buffer grow without bound as long as the
    caller keeps pulling after each feed.
    """

    def __init__(self, max_size: int = 4096) -> None:
        if max_size < 1:
            raise LocalProtocolError("max_size must be positive")
        self._max_size = max_size
        self._buf = bytearray()
        # The announced body length once the Content-length line was consumed.
        self._content_length: int | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def pending(self) -> int:
        """Number of buffered, not yet returned bytes (a pending body length excluded)."""
        return len(self._buf)

    def peek(self) -> bytes:
        """The buffered bytes, without consuming them (body bytes if :attr:`in_body`)."""
        return bytes(self._buf)

    @property
    def in_body(self) -> bool:
        """True between a consumed ``Content-length`` line and the end of its body."""
        return self._content_length is not None

    def take_rest(self) -> bytes:
        """Return and forget everything buffered, including a half-read body."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._content_length = None
        return rest

    def _line(self) -> bytes | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            # The line so far may end in the CR of a CRLF whose LF is still in flight; allow
            # one byte for it so feeding byte by byte fails exactly where feeding whole does.
            if len(self._buf) > self._max_size + 1:
                raise DecodeError(f"line longer than {self._max_size} bytes")
            return None
        end = nl - 1 if nl > 0 and self._buf[nl - 1] == 0x0D else nl
        if end > self._max_size:
            raise DecodeError(f"line longer than {self._max_size} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: nl + 1]
        return line

    def next_line(self) -> bytes | None:
        """Return the next line without its LF or CRLF, or None if it is incomplete.

        NULs are kept: after ``AUTHENTICATE PLAIN`` a leading NUL may belong to the previous
        message or to the credentials, which only the caller can tell (see :func:`strip_nuls`).

        Raises:
            DecodeError: the line exceeds ``max_size``.
        """
        if self._content_length is not None:
            raise LocalProtocolError("next_line() called in the middle of a Content-length body")
        return self._line()

    # Stream form (tsp.md §1.4, §2.5):
    #   Content-length: N CR LF
    #   <N bytes: the XML request, or status line + XML; the final CRLF is counted>
    def next_content(self) -> bytes | None:
        """Return the next ``Content-length`` body, or None if it is incomplete.

        The ``Content-length: N`` line is matched case-insensitively after stripping NULs and
        whitespace (a NUL trailing the previous AUTHENTICATE line lands in front of it).

        Raises:
            DecodeError: the line is not a Content-length line, or N is not in 1..max_size.
        """
        if self._content_length is None:
            line = self._line()
            if line is None:
                return None
            m = _CONTENT_LENGTH_RE.fullmatch(strip_nuls(line))
            if m is None:
                raise DecodeError(f"expected Content-length, got {line[:40]!r}")
            length = int(m.group(1))
            if not 1 <= length <= self._max_size:
                raise DecodeError(f"Content-length {length} not in 1..{self._max_size}")
            self._content_length = length
        if len(self._buf) < self._content_length:
            return None
        body = bytes(self._buf[: self._content_length])
        del self._buf[: self._content_length]
        self._content_length = None
        return body


# --------------------------------------------------------------------------------------------
# Authentication-phase lines
# --------------------------------------------------------------------------------------------


# VERSION=<x.y.z> CR LF  (gogoc tries 2.0.2, 2.0.1, 2.0.0, 1.0.1)
def parse_version(line: bytes) -> str:
    """``VERSION=2.0.2`` -> ``"2.0.2"``; keyword case-insensitive, NULs and spaces tolerated.

    Raises:
        DecodeError: not a VERSION line.
    """
    m = _VERSION_RE.fullmatch(strip_nuls(line))
    if m is None:
        raise DecodeError(f"expected VERSION=, got {line[:40]!r}")
    return m.group(1).decode("ascii")


def encode_version(v: str) -> bytes:
    """``VERSION=<v>\\r\\n``."""
    if not _VERSION_RE.fullmatch(b"VERSION=" + v.encode("ascii", errors="replace")):
        raise LocalProtocolError(f"invalid version string: {v!r}")
    return f"VERSION={v}\r\n".encode("ascii")


@dataclass(frozen=True, slots=True)
class Capability:
    """A CAPABILITY line: the tunnel types and SASL mechanisms a server offers, in order."""

    tunnel_types: tuple[TunnelType, ...]
    mechanisms: tuple[str, ...]


def encode_capability(tunnel_types: Sequence[TunnelType], mechanisms: Sequence[str]) -> bytes:
    """``CAPABILITY TUNNEL=V6V4 ... AUTH=PLAIN ...\\r\\n``, sent as one line (gogoc reads it
    with a single recv over TCP)."""
    for mech in mechanisms:
        if not _MECHANISM_RE.fullmatch(mech):
            raise LocalProtocolError(f"invalid SASL mechanism name: {mech!r}")
    tokens = [f"TUNNEL={t.to_capability()}" for t in tunnel_types]
    tokens += [f"AUTH={m.upper()}" for m in mechanisms]
    return ("CAPABILITY " + " ".join(tokens) + "\r\n").encode("ascii")


# CAPABILITY TUNNEL=<type> ... AUTH=<mech> ... CR LF
# gogoc requires exactly "CAPABILITY " and ignores tokens it does not know (tsp.md §2.4).
def parse_capability(line: bytes) -> Capability:
    """Parse a CAPABILITY line; unknown or malformed tokens are ignored, duplicates dropped.

    Raises:
        DecodeError: the line does not start with ``CAPABILITY``.
    """
    line = strip_nuls(line)
    if line != b"CAPABILITY" and not line.startswith(b"CAPABILITY "):
        raise DecodeError(f"expected CAPABILITY, got {line[:40]!r}")
    types: list[TunnelType] = []
    mechs: list[str] = []
    # latin-1 maps every byte, so junk tokens are simply not recognised below.
    for token in line.decode("latin-1").split()[1:]:
        key, sep, value = token.partition("=")
        if not sep:
            continue
        key = key.upper()
        if key == "TUNNEL":
            try:
                tt = TunnelType(value.lower())
            except ValueError:
                continue
            if tt not in types:
                types.append(tt)
        elif key == "AUTH" and _MECHANISM_RE.fullmatch(value):
            mech = value.upper()
            if mech not in mechs:
                mechs.append(mech)
    return Capability(tunnel_types=tuple(types), mechanisms=tuple(mechs))


# AUTHENTICATE <MECHANISM> CR LF [NUL]
def parse_authenticate(line: bytes) -> str:
    """``AUTHENTICATE digest-md5`` -> ``"DIGEST-MD5"``.

    Raises:
        DecodeError: not an AUTHENTICATE line with a mechanism name.
    """
    m = _AUTHENTICATE_RE.fullmatch(strip_nuls(line))
    if m is None:
        raise DecodeError(f"expected AUTHENTICATE, got {line[:40]!r}")
    return m.group(1).decode("ascii").upper()
