"""TIC lines: framing, replies, the list and block formats, and the MD5 challenge response.

Wire rules (sixxs.md §2.1, §2.6, §2.9), from what AICCU's parser tolerates:

* lines end in ``\\n``; a ``\\r`` before it is stripped; each line stays under 1,024 bytes;
* replies are ``NNN text``; blocks are ``201 ...``, data lines, ``202 ...``;
* ``tunnel list`` lines have exactly four fields separated by single spaces;
* ``tunnel show`` lines are ``Key: Value`` with AICCU's exact, case-sensitive key spellings,
  and no other key may *begin* with one of them (AICCU matches keys by prefix);
* AICCU aborts when more than about 1,014 bytes wait in its buffer, so a long reply goes out
  as several writes (:func:`pace`) that the I/O layer sends apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from tunnelbroker.protocols.tic.errors import LocalProtocolError, RemoteProtocolError
from tunnelbroker.protocols.tic.messages import (
    ReplyCode,
    TicListEntry,
    TicPop,
    TicRoute,
    TicTunnel,
)

#: Longest line either side sends or accepts, newline included (AICCU: under 1,024).
MAX_LINE = 1023
#: Bytes per write of a multi-line reply: two of them still fit AICCU's ~1,014-byte limit.
BURST = 480

#: ``tunnel show`` keys in the order SixXS sent them (sixxs.md §2.2), as AICCU spells them.
SHOW_KEYS = (
    "TunnelId",
    "Type",
    "IPv6 Endpoint",
    "IPv6 POP",
    "IPv6 PrefixLength",
    "Tunnel MTU",
    "Tunnel Name",
    "POP Id",
    "IPv4 Endpoint",
    "IPv4 POP",
    "UserState",
    "AdminState",
    "Password",
    "Heartbeat_Interval",
)
#: ``route show`` keys. Neither sixxs.md nor AICCU (whose ``tic_GetRoute`` is a stub) records
#: SixXS's; these carry ``route list``'s three fields in ``tunnel show``'s style, and no key
#: begins with another (AICCU-style prefix matching).
ROUTE_KEYS = ("RouteId", "TunnelId", "Route Prefix")
#: ``pop show`` keys (AICCU's ``tic_Get_POP``).
POP_KEYS = (
    "POPId",
    "City",
    "Country",
    "IPv4",
    "IPv6",
    "ISP Short",
    "ISP Name",
    "ISP Website",
    "ISP ASN",
    "ISP LIR",
)


class LineReader:
    """Splits a byte stream into lines of at most ``max_line`` bytes (newline included)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def pending(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()

    def next_line(self) -> str | None:
        """The next line without its line ending, or None until one is complete.

        Raises:
            RemoteProtocolError: (fatal) a line longer than ``max_line``, or not UTF-8.
        """
        end = self._buffer.find(b"\n", 0, self.max_line)
        if end < 0:
            if len(self._buffer) >= self.max_line:
                raise RemoteProtocolError("Line too long", fatal=True)
            return None
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("Line is not UTF-8", fatal=True) from None


def reply(code: ReplyCode, text: str) -> str:
    return f"{int(code)} {text}"


def encode_lines(lines: Iterable[str]) -> bytes:
    """Lines with ``\\n`` endings (AICCU's own convention), checked against :data:`MAX_LINE`."""
    out = []
    for line in lines:
        if "\n" in line or "\r" in line:
            raise LocalProtocolError(f"line break inside a line: {line!r}")
        data = line.encode() + b"\n"
        if len(data) > MAX_LINE:
            raise LocalProtocolError(f"line of {len(data)} bytes")
        out.append(data)
    return b"".join(out)


def pace(lines: Sequence[str], burst: int = BURST) -> list[bytes]:
    """Group whole lines into writes of at most ``burst`` bytes (a longer line goes alone)."""
    writes: list[bytes] = []
    current = b""
    for line in lines:
        data = encode_lines([line])
        if current and len(current) + len(data) > burst:
            writes.append(current)
            current = b""
        current += data
    if current:
        writes.append(current)
    return writes


def block(start: str, lines: Sequence[str], end: str) -> list[str]:
    """A ``201``/``202`` block; no data line may look like its end."""
    for line in lines:
        if line.startswith("202"):
            raise LocalProtocolError(f"data line would end the block: {line!r}")
    return [reply(ReplyCode.BLOCK_START, start), *lines, reply(ReplyCode.BLOCK_END, end)]


def parse_reply(line: str) -> tuple[int, str]:
    """``"200 text"`` -> ``(200, "text")``.

    Raises:
        RemoteProtocolError: no three-digit code.
    """
    code = line[:3]
    if len(code) != 3 or not code.isdigit() or (len(line) > 3 and line[3] != " "):
        raise RemoteProtocolError(f"not a reply line: {line[:60]!r}")
    return int(code), line[4:]


# ---------------------------------------------------------------- fields


def _word(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise LocalProtocolError(f"{what} must be one non-empty word: {value!r}")
    return value


def _value(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise LocalProtocolError(f"{what} must be one line: {value!r}")
    return value


def _secret(value: str) -> str:
    # AICCU takes everything after ": " (spaces included); it must not be empty.
    if not value or value != value.strip():
        raise LocalProtocolError("Password must be non-empty without outer spaces")
    return _value(value, "Password")


def list_line(tunnel: TicTunnel | TicListEntry) -> str:
    """``<TunnelId> <IPv6 Endpoint> <IPv4 Endpoint> <POP Id>``: four single-spaced words."""
    return " ".join(
        (
            _word(tunnel.tunnel_id, "TunnelId"),
            _word(tunnel.ipv6_endpoint, "IPv6 Endpoint"),
            _word(tunnel.ipv4_endpoint, "IPv4 Endpoint"),
            _word(tunnel.pop_id, "POP Id"),
        )
    )


def parse_list_line(line: str) -> TicListEntry:
    fields = line.split(" ")
    if len(fields) != 4 or not all(fields):
        raise RemoteProtocolError(f"Wrong field format when listing tunnels: {line[:80]!r}")
    return TicListEntry(*fields)


def route_line(route: TicRoute) -> str:
    return " ".join(
        (
            _word(route.route_id, "RouteId"),
            _word(route.tunnel_id, "TunnelId"),
            _word(route.prefix, "prefix"),
        )
    )


def parse_route_line(line: str) -> TicRoute:
    fields = line.split(" ")
    if len(fields) != 3 or not all(fields):
        raise RemoteProtocolError(f"Wrong field format when listing routes: {line[:80]!r}")
    return TicRoute(*fields)


def route_lines(route: TicRoute) -> list[str]:
    """The ``Key: Value`` lines of ``route show`` (:data:`ROUTE_KEYS`)."""
    values = (
        _word(route.route_id, "RouteId"),
        _word(route.tunnel_id, "TunnelId"),
        _word(route.prefix, "Route Prefix"),
    )
    return [f"{k}: {v}" for k, v in zip(ROUTE_KEYS, values, strict=True)]


def parse_route(lines: Sequence[str]) -> TicRoute:
    """A ``route show`` block's data lines as a :class:`TicRoute`.

    Raises:
        RemoteProtocolError: a missing field, or one that is not one word.
    """
    v = _key_values(lines)
    values = [v.get(k, "") for k in ROUTE_KEYS]
    for key, value in zip(ROUTE_KEYS, values, strict=True):
        if not value or any(c.isspace() for c in value):
            raise RemoteProtocolError(f"route show: {key} is not one word: {value[:40]!r}")
    return TicRoute(*values)


def show_lines(tunnel: TicTunnel) -> list[str]:
    """The ``Key: Value`` lines of ``tunnel show`` (no ``Password`` for a static tunnel)."""
    if tunnel.heartbeat_interval <= 0:
        raise LocalProtocolError("Heartbeat_Interval must be positive (AICCU would spin)")
    values: dict[str, str | int | None] = {
        "TunnelId": _word(tunnel.tunnel_id, "TunnelId"),
        "Type": _word(tunnel.type, "Type"),
        "IPv6 Endpoint": _word(tunnel.ipv6_endpoint, "IPv6 Endpoint"),
        "IPv6 POP": _word(tunnel.ipv6_pop, "IPv6 POP"),
        "IPv6 PrefixLength": tunnel.ipv6_prefix_length,
        "Tunnel MTU": tunnel.mtu,
        "Tunnel Name": _value(tunnel.name, "Tunnel Name"),
        "POP Id": _word(tunnel.pop_id, "POP Id"),
        "IPv4 Endpoint": _word(tunnel.ipv4_endpoint, "IPv4 Endpoint"),
        "IPv4 POP": _word(tunnel.ipv4_pop, "IPv4 POP"),
        "UserState": _word(tunnel.user_state, "UserState"),
        "AdminState": _word(tunnel.admin_state, "AdminState"),
        "Password": None if tunnel.password is None else _secret(tunnel.password),
        "Heartbeat_Interval": tunnel.heartbeat_interval,
    }
    return [f"{key}: {values[key]}" for key in SHOW_KEYS if values[key] is not None]


def _key_values(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep:
            raise RemoteProtocolError(f"block line without ': ': {line[:80]!r}")
        out.setdefault(key, value)
    return out


def _int(values: dict[str, str], key: str) -> int:
    text = values.get(key, "")
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise RemoteProtocolError(f"{key} is not a number: {text[:20]!r}")
    return int(text)


def parse_show(lines: Sequence[str]) -> TicTunnel:
    """A ``tunnel show`` block's data lines as a :class:`TicTunnel`.

    Keys are matched exactly (AICCU's spelling); unknown keys are ignored. Everything AICCU
    cannot do without must be present.

    Raises:
        RemoteProtocolError: a missing or malformed field.
    """
    v = _key_values(lines)
    required = ("TunnelId", "Type", "IPv6 Endpoint", "IPv6 POP", "IPv4 Endpoint", "IPv4 POP")
    missing = [k for k in required if not v.get(k)]
    if missing:
        raise RemoteProtocolError(f"tunnel show lacks {', '.join(missing)}")
    dynamic = v["Type"] in ("ayiya", "6in4-heartbeat")
    if dynamic and not v.get("Password"):
        raise RemoteProtocolError(f"a {v['Type']} tunnel without a Password")
    interval = _int(v, "Heartbeat_Interval") if "Heartbeat_Interval" in v else 60
    if dynamic and interval <= 0:
        raise RemoteProtocolError("Heartbeat_Interval must be positive")
    return TicTunnel(
        tunnel_id=v["TunnelId"],
        type=v["Type"],
        ipv6_endpoint=v["IPv6 Endpoint"],
        ipv6_pop=v["IPv6 POP"],
        ipv6_prefix_length=_int(v, "IPv6 PrefixLength"),
        pop_id=v.get("POP Id", ""),
        ipv4_endpoint=v["IPv4 Endpoint"],
        ipv4_pop=v["IPv4 POP"],
        user_state=v.get("UserState", ""),
        admin_state=v.get("AdminState", ""),
        password=v.get("Password") or None,
        heartbeat_interval=interval,
        mtu=_int(v, "Tunnel MTU") if "Tunnel MTU" in v else 1280,
        name=v.get("Tunnel Name", ""),
    )


def pop_list_line(pop: TicPop) -> str:
    """One ``pop list`` line: the POP Id alone (SixXS's format is not recorded anywhere)."""
    return _word(pop.pop_id, "POPId")


def pop_lines(pop: TicPop) -> list[str]:
    values = (
        _word(pop.pop_id, "POPId"),
        pop.city,
        pop.country,
        pop.ipv4,
        pop.ipv6,
        pop.isp_short,
        pop.isp_name,
        pop.isp_website,
        pop.isp_asn,
        pop.isp_lir,
    )
    return [f"{k}: {_value(val, k)}" for k, val in zip(POP_KEYS, values, strict=True)]


def parse_pop(lines: Sequence[str]) -> TicPop:
    v = _key_values(lines)
    if not v.get("POPId"):
        raise RemoteProtocolError("pop show lacks POPId")
    return TicPop(*(v.get(k, "") for k in POP_KEYS))


# ---------------------------------------------------------------- authentication


def password_md5(password: str) -> str:
    """``md5hex(password)``: what the server stores and the response is built on."""
    return hashlib.md5(password.encode()).hexdigest()


def challenge_response(challenge: str, stored_md5: str) -> str:
    """``md5hex(challenge + md5hex(password))``, challenge first (sixxs.md §2.4)."""
    return hashlib.md5((challenge + stored_md5.lower()).encode()).hexdigest()
