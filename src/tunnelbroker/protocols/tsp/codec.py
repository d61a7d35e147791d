"""The TSP ``<tunnel>`` XML document (RFC 5572 Appendix A) to and from :class:`Tunnel`.

Parsing goes through defusedxml with DTDs forbidden: the TSP DTD is never sent in practice,
and refusing it removes entity expansion and external fetches altogether.

Parsing is tolerant where real peers differ from the DTD (tsp.md §1.9): ``type`` may be absent
(``accept``), ``<keepalive>`` sits in ``<client>``, referrals use ``action="list"
type="broker"``, RFC figures have whitespace inside text nodes, and unknown elements and
attributes are skipped. Address values are checked only for their character set; whether they
are valid addresses is the broker's decision (501/502).

Rendering is strict, because gogoc's hand-written parser is (tsp.md §2.5): no prolog, double
quotes, no whitespace inside text nodes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError
from xml.parsers.expat import ExpatError
from xml.sax.saxutils import escape

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from tunnelbroker.protocols.tsp.errors import DecodeError, StatusCode
from tunnelbroker.protocols.tsp.messages import (
    Action,
    Address,
    AddressType,
    Endpoint,
    Keepalive,
    Prefix,
    Router,
    Tunnel,
    TunnelType,
)

__all__ = ["expand_ipv6", "tunnel_from_xml", "tunnel_to_xml"]

# NUL and whitespace around a document: gogoc's messages may carry NULs and the trailing CRLF
# that Content-length counts.
_JUNK = b"\x00 \t\r\n\x0b\x0c"

# Characters of IPv4/IPv6 literals and DNS names (underscore for SRV-style labels). Everything
# else, including inner whitespace, is a malformed document rather than a bad address.
_VALUE_RE = re.compile(r"[0-9A-Za-z.:_-]*")
_UINT_RE = re.compile(r"[0-9]{1,10}")

_INTERVAL_MAX = 86400
_PREFIX_LENGTH_MAX = 128
_LIFETIME_MAX = 2**31 - 1
_MTU_MAX = 65535

# Fig. 9 referrals carry type="broker", which is not a tunnel type.
_BROKER_TYPE = "broker"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _uint(elem: Element, name: str, maximum: int) -> int | None:
    raw = elem.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not _UINT_RE.fullmatch(value) or int(value) > maximum:
        raise DecodeError(f"<{elem.tag}> {name}={raw[:20]!r} is not an integer in 0..{maximum}")
    return int(value)


def _text(elem: Element) -> str:
    if len(elem):
        # Text split around a child element would be ambiguous ("1.2.3.4<b/>5").
        raise DecodeError(f"<{elem.tag}> must contain only text")
    value = (elem.text or "").strip()
    if not _VALUE_RE.fullmatch(value):
        raise DecodeError(f"<{elem.tag}> has invalid characters: {value[:40]!r}")
    return value


# <address type="ipv4|ipv6|dn" [length="L"]>value</address>
def _address(elem: Element) -> Address:
    raw = elem.get("type")
    try:
        type_ = AddressType((raw or "").strip().lower())
    except ValueError:
        raise DecodeError(f"invalid address type {raw!r}") from None
    return Address(type=type_, value=_text(elem), length=_uint(elem, "length", _PREFIX_LENGTH_MAX))


def _addresses(parent: Element) -> tuple[Address, ...]:
    return tuple(_address(a) for a in parent.findall("address"))


# <dns_server> <address .../>+ </dns_server>; several blocks are merged.
def _dns_servers(parent: Element) -> tuple[Address, ...]:
    return tuple(a for d in parent.findall("dns_server") for a in _addresses(d))


# <keepalive interval="T"> [<address .../>] </keepalive>
def _keepalive(elem: Element) -> Keepalive:
    interval = _uint(elem, "interval", _INTERVAL_MAX)
    if interval is None:
        raise DecodeError("<keepalive> without interval")
    addr = elem.find("address")
    return Keepalive(interval=interval, address=None if addr is None else _address(addr))


# <router> [<prefix length="L">[value]</prefix>] [<dns_server>...</dns_server>] </router>
def _router(elem: Element) -> Router:
    prefix: Prefix | None = None
    p = elem.find("prefix")
    if p is not None:
        length = _uint(p, "length", _PREFIX_LENGTH_MAX)
        if length is None:
            # HexOS has a code for exactly this; gogoc knows it (tsp.md §1.8).
            raise DecodeError("<prefix> without length", code=StatusCode.MISSING_PREFIX_LENGTH)
        prefix = Prefix(length=length, value=_text(p) or None)
    return Router(prefix=prefix, dns_servers=_dns_servers(elem))


# <client|server> <address/>* [<dns_server/>] [<keepalive/>] [<router/>] </client|server>
# Repeated single elements: the first one wins.
def _endpoint(elem: Element) -> Endpoint:
    keepalive = elem.find("keepalive")
    router = elem.find("router")
    return Endpoint(
        addresses=_addresses(elem),
        keepalive=None if keepalive is None else _keepalive(keepalive),
        router=None if router is None else _router(router),
        dns_servers=_dns_servers(elem),
    )


def _proxy(elem: Element) -> bool | None:
    raw = elem.get("proxy")
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in ("yes", "no"):
        raise DecodeError(f"proxy={raw[:20]!r} is not yes or no")
    return value == "yes"


def _parse(data: bytes) -> Element:
    try:
        root: Element = defusedxml.ElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except (ParseError, ExpatError, DefusedXmlException, ValueError, LookupError) as e:
        # LookupError: an unknown encoding in an XML declaration.
        raise DecodeError(f"malformed XML: {e}") from None
    return root


# <tunnel action="..." [type="..."] [lifetime="N"] [proxy="yes|no"] [mtu="N"]>
#   [<server>...</server>] [<client>...</client>] [<broker><address/>+</broker>]*
# </tunnel>
def tunnel_from_xml(data: bytes, max_size: int = 4096) -> Tunnel:
    """Decode a ``<tunnel>`` document.

    Args:
        data: the XML, possibly surrounded by whitespace, NULs and the final CRLF.
        max_size: reject larger input before parsing it.

    Raises:
        DecodeError: code 303 for an unknown tunnel ``type``, 520 for a prefix without length,
            500 for anything else.
    """
    if len(data) > max_size:
        raise DecodeError(f"XML document larger than {max_size} bytes")
    root = _parse(data.strip(_JUNK))
    if root.tag != "tunnel":
        raise DecodeError(f"root element is <{root.tag[:40]}>, not <tunnel>")
    raw_action = root.get("action")
    try:
        action = Action((raw_action or "").strip().lower())
    except ValueError:
        raise DecodeError(f"invalid tunnel action {raw_action!r}") from None
    raw_type = root.get("type")
    type_: TunnelType | None = None
    if raw_type is not None:
        value = raw_type.strip().lower()
        if not (action is Action.LIST and value == _BROKER_TYPE):
            try:
                type_ = TunnelType(value)
            except ValueError:
                raise DecodeError(
                    f"unsupported tunnel type {raw_type[:20]!r}",
                    code=StatusCode.UNSUPPORTED_TUNNEL_TYPE,
                ) from None
    client = root.find("client")
    server = root.find("server")
    return Tunnel(
        action=action,
        type=type_,
        lifetime=_uint(root, "lifetime", _LIFETIME_MAX),
        proxy=_proxy(root),
        mtu=_uint(root, "mtu", _MTU_MAX),
        client=None if client is None else _endpoint(client),
        server=None if server is None else _endpoint(server),
        brokers=tuple(a for b in root.findall("broker") for a in _addresses(b)),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Style:
    """Layout of a rendered document: newline and how far each element indents its children."""

    newline: str
    indent: int
    indent_by_tag: dict[str, int] = field(default_factory=dict)


# tsp.md §2.5 "A reply gogoc accepts": 2-space indentation, LF newlines.
_OFFER_STYLE = _Style("\n", 2)
# tsp.md §2.5 "What gogoc sends": a create request byte for byte as gogoc 1.2 writes it (CRLF,
# its uneven indentation), so brokers that were only ever tested with gogoc see nothing new.
_GOGOC_STYLE = _Style("\r\n", 1, {"keepalive": 2, "dns_server": 2})


def _quote(value: str) -> str:
    return '"' + escape(value, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}) + '"'


def _start_tag(tag: str, attrs: list[tuple[str, str]]) -> str:
    return "<" + tag + "".join(f" {k}={_quote(v)}" for k, v in attrs)


class _Writer:
    """One element per line; containers close in the order they were opened."""

    def __init__(self, style: _Style) -> None:
        self._style = style
        self._lines: list[str] = []
        # Open containers: tag, its own indentation, whether it has children yet.
        self._stack: list[tuple[str, int, bool]] = []

    def _child_indent(self) -> int:
        if not self._stack:
            return 0
        tag, depth, _ = self._stack[-1]
        self._stack[-1] = (tag, depth, True)
        return depth + self._style.indent_by_tag.get(tag, self._style.indent)

    def leaf(self, tag: str, attrs: list[tuple[str, str]], text: str | None) -> None:
        """``<tag a="v">text</tag>``, or ``<tag a="v"/>`` when ``text`` is None."""
        start = " " * self._child_indent() + _start_tag(tag, attrs)
        self._lines.append(start + "/>" if text is None else f"{start}>{escape(text)}</{tag}>")

    def open(self, tag: str, attrs: list[tuple[str, str]] | None = None) -> None:
        depth = self._child_indent()
        self._stack.append((tag, depth, False))
        self._lines.append(" " * depth + _start_tag(tag, attrs or []) + ">")

    def close(self) -> None:
        tag, depth, has_children = self._stack.pop()
        if has_children:
            self._lines.append(" " * depth + f"</{tag}>")
        else:
            # An empty element stays on one line, as in <tunnel action="accept"></tunnel>.
            self._lines[-1] += f"</{tag}>"

    def result(self) -> bytes:
        return self._style.newline.join(self._lines).encode("utf-8")


def _write_address(w: _Writer, a: Address) -> None:
    attrs = [("type", a.type.value)]
    if a.length is not None:
        attrs.append(("length", str(a.length)))
    w.leaf("address", attrs, a.value)


def _write_dns_servers(w: _Writer, servers: tuple[Address, ...]) -> None:
    if servers:
        w.open("dns_server")
        for a in servers:
            _write_address(w, a)
        w.close()


def _write_endpoint(w: _Writer, tag: str, e: Endpoint) -> None:
    w.open(tag)
    for a in e.addresses:
        _write_address(w, a)
    _write_dns_servers(w, e.dns_servers)
    if e.keepalive is not None:
        w.open("keepalive", [("interval", str(e.keepalive.interval))])
        if e.keepalive.address is not None:
            _write_address(w, e.keepalive.address)
        w.close()
    if e.router is not None:
        w.open("router")
        p = e.router.prefix
        if p is not None:
            # A request has no value: <prefix length="56"/>, as gogoc writes it.
            w.leaf("prefix", [("length", str(p.length))], p.value)
        _write_dns_servers(w, e.router.dns_servers)
        w.close()
    w.close()


def tunnel_to_xml(t: Tunnel) -> bytes:
    """Render a ``<tunnel>`` document without prolog and without a final newline.

    Attribute order is action, type, lifetime, proxy, mtu; children are server, client, then
    one ``<broker>`` per referral address (Fig. 9); a ``list`` without a type says
    ``type="broker"``. ``create`` requests come out exactly as gogoc sends them, everything
    else in the layout of a reply gogoc accepts. Values are written as given: expand prefixes
    with :func:`expand_ipv6` first.
    """
    attrs = [("action", t.action.value)]
    if t.type is not None:
        attrs.append(("type", t.type.value))
    elif t.action is Action.LIST:
        attrs.append(("type", _BROKER_TYPE))
    if t.lifetime is not None:
        attrs.append(("lifetime", str(t.lifetime)))
    if t.proxy is not None:
        attrs.append(("proxy", "yes" if t.proxy else "no"))
    if t.mtu is not None:
        attrs.append(("mtu", str(t.mtu)))
    w = _Writer(_GOGOC_STYLE if t.action is Action.CREATE else _OFFER_STYLE)
    w.open("tunnel", attrs)
    if t.server is not None:
        _write_endpoint(w, "server", t.server)
    if t.client is not None:
        _write_endpoint(w, "client", t.client)
    for b in t.brokers:
        w.open("broker")
        _write_address(w, b)
        w.close()
    w.close()
    return w.result()


def expand_ipv6(addr: str) -> str:
    """``2001:db8:c18:1200::`` -> ``2001:0db8:0c18:1200:0000:0000:0000:0000``.

    gogoc cuts ``TSP_PREFIX`` out of the prefix string by groups, so prefixes must be sent
    with all 8 groups zero-padded (tsp.md §2.5).

    Raises:
        ValueError: ``addr`` is not an IPv6 address (our own data, not peer input).
    """
    return ipaddress.IPv6Address(addr.strip()).exploded
