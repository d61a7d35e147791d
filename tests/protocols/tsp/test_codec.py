"""The ``<tunnel>`` XML codec: RFC 5572 figures, gogoc's bytes, round trips and hostile input.

RFC figures are copied verbatim from /work/shared/reference/tsp.md (whitespace inside text
nodes included); "CR LF" at the end of a figure becomes a real CRLF.
"""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import defusedxml.ElementTree
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunnelbroker.protocols.tsp.codec import expand_ipv6, tunnel_from_xml, tunnel_to_xml
from tunnelbroker.protocols.tsp.errors import DecodeError, StatusCode
from tunnelbroker.protocols.tsp.framing import (
    MessageReader,
    encode_reply,
    encode_request,
    parse_reply,
)
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

V4, V6, DN = AddressType.IPV4, AddressType.IPV6, AddressType.DN


def rfc(figure: str) -> bytes:
    """An RFC figure's XML as it would travel: dedented, CRLF line ends, final CRLF."""
    lines = textwrap.dedent(figure).strip("\n").splitlines()
    return "\r\n".join(lines).encode("ascii") + b"\r\n"


def v4(value: str, length: int | None = None) -> Address:
    return Address(V4, value, length)


def v6(value: str) -> Address:
    return Address(V6, value)


def assert_decode_error(data: bytes, code: int = 500, max_size: int = 4096) -> None:
    with pytest.raises(DecodeError) as info:
        tunnel_from_xml(data, max_size=max_size)
    assert info.value.code == code


# --------------------------------------------------------------------------------------------
# RFC 5572 figures (tsp.md §1.3-1.6)
# --------------------------------------------------------------------------------------------

FIG9_REFERRAL = rfc("""
           <tunnel action="list" type="broker">
              <broker>
                 <address type="ipv4">1.2.3.4</address>
              </broker>
              <broker>
                 <address type="dn">ts1.isp1.com</address>
              </broker>
           </tunnel>
""")

FIG13_REQUEST = rfc("""
         <tunnel action="create" type="v6udpv4">
          <client>
           <address type="ipv4">192.0.2.135</address>
         <keepalive interval="30"></keepalive>
         </client>
         </tunnel>
""")

FIG13_OFFER = rfc("""
         <tunnel action="info" type="v6udpv4" lifetime="604800">
           <server>
             <address type="ipv4">192.0.2.115</address>
             <address type="ipv6">
             2001:db8:8000:0000:0000:0000:0000:38b2
             </address>
           </server>
           <client>
             <address type="ipv4">192.0.2.135</address>
             <address type="ipv6">
             2001:db8:8000:0000:0000:0000:0000:38b3
             </address>
             <keepalive interval="30">
               <address type="ipv6">
               2001:db8:8000:0000:0000:0000:0000:38b2
               </address>
             </keepalive>
           </client>
         </tunnel>
""")

ACCEPT = rfc("""
         <tunnel action="accept"></tunnel>
""")

FIG15_REQUEST = rfc("""
           <tunnel action="create" type="v6v4">
              <client>
                  <address type="ipv4">1.1.1.1</address>
              </client>
           </tunnel>
""")

FIG15_OFFER = rfc("""
            <tunnel action="info" type="v6v4" lifetime="1440">
              <server>
                 <address type="ipv4">192.0.2.114</address>
                 <address type="ipv6">
                 2001:db8:c18:ffff:0000:0000:0000:0000
                 </address>
              </server>
              <client>
                 <address type="ipv4">1.1.1.1</address>
                 <address type="ipv6">
                 2001:db8:c18:ffff::0000:0000:0000:0001
                 </address>
                 <address type="dn">userid.domain</address>
              </client>
            </tunnel>
""")

FIG16_REQUEST = rfc("""
      <tunnel action="create" type="v6v4">
       <client>
        <address type="ipv4">192.0.2.9</address>
        <router>
         <prefix length="48"/>
         <dns_server>
          <address type="ipv4">192.0.2.5</address>
          <address type="ipv4">192.0.2.4</address>
          <address type="ipv6">2001:db8::1</address>
         </dns_server>
        </router>
       </client>
      </tunnel>
""")

FIG16_OFFER = rfc("""
      <tunnel action="info" type="v6v4" lifetime="1440">
       <server>
        <address type="ipv4">192.0.2.114</address>
        <address type="ipv6">
        2001:db8:c18:ffff:0000:0000:0000:0000
        </address>
       </server>
       <client>
        <address type="ipv4">192.0.2.9</address>
        <address type="ipv6">
        2001:db8:c18:ffff::0000:0000:0000:0001
        </address>
        <address type="dn">userid.domain</address>
        <router>
         <prefix length="48">2001:db8:c18:1234::</prefix>
         <dns_server>
          <address type="ipv4">192.0.2.5</address>
          <address type="ipv4">192.0.2.4</address>
          <address type="ipv6">2001:db8::1</address>
         </dns_server>
        </router>
       </client>
      </tunnel>
""")

FIG17_REQUEST = rfc("""
               <tunnel action="create" type="v4v6">
                  <client>
                      <address type="ipv6">
                      2001:db8:0c18:ffff:0000:0000:0000:0001
                      </address>
                  </client>
               </tunnel>
""")

FIG18_OFFER = rfc("""
                <tunnel action="info" type="v4v6" lifetime="1440">
                  <server>
                     <address type="ipv4" length="30">
                     192.0.2.2
                     </address>
                     <address type="ipv6">
                     2001:db8:c18:ffff:0000:0000:0000:0002
                     </address>
                  </server>
                  <client>
                     <address type="ipv4" length="30">
                     192.0.2.1
                     </address>
                     <address type="ipv6">
                     2001:db8:c18:ffff::0000:0000:0000:0001
                     </address>
                  </client>
                </tunnel>
""")

FIG19_REQUEST = rfc("""
       <tunnel action="create" type="v6anyv4">
          <client>
              <address type="ipv4">10.1.1.1</address>
              <keepalive interval="30"></keepalive>
          </client>
       </tunnel>
""")

FIG19_OFFER = rfc("""
        <tunnel action="info" type="v6udpv4" lifetime="1440">
          <server>
             <address type="ipv4">192.0.2.114</address>
             <address type="ipv6">
             2001:db8:c18:ffff:0000:0000:0000:0002
             </address>
          </server>
          <client>
             <address type="ipv4">10.1.1.1</address>
             <address type="ipv6">
             2001:db8:c18:ffff::0000:0000:0000:0003
             </address>
             <keepalive interval="30">
                <address type="ipv6">
                2001:db8:c18:ffff:0000:0000:0000:0002
                </address>
             </keepalive>
          </client>
        </tunnel>
""")

FIG15_SERVER = Endpoint(addresses=(v4("192.0.2.114"), v6("2001:db8:c18:ffff:0000:0000:0000:0000")))
# Not valid IPv6 (8 groups plus "::", tsp.md §1.9); kept as text, the broker judges it.
RFC_BAD_V6 = "2001:db8:c18:ffff::0000:0000:0000:0001"
FIG16_DNS = (v4("192.0.2.5"), v4("192.0.2.4"), v6("2001:db8::1"))

RFC_VECTORS: list[tuple[str, bytes, Tunnel]] = [
    (
        "fig9-referral",
        FIG9_REFERRAL,
        Tunnel(Action.LIST, brokers=(v4("1.2.3.4"), Address(DN, "ts1.isp1.com"))),
    ),
    (
        "fig13-request",
        FIG13_REQUEST,
        Tunnel(
            Action.CREATE,
            TunnelType.V6UDPV4,
            client=Endpoint(addresses=(v4("192.0.2.135"),), keepalive=Keepalive(30)),
        ),
    ),
    (
        "fig13-offer",
        FIG13_OFFER,
        Tunnel(
            Action.INFO,
            TunnelType.V6UDPV4,
            lifetime=604800,
            server=Endpoint(
                addresses=(v4("192.0.2.115"), v6("2001:db8:8000:0000:0000:0000:0000:38b2"))
            ),
            client=Endpoint(
                addresses=(v4("192.0.2.135"), v6("2001:db8:8000:0000:0000:0000:0000:38b3")),
                keepalive=Keepalive(30, v6("2001:db8:8000:0000:0000:0000:0000:38b2")),
            ),
        ),
    ),
    ("accept", ACCEPT, Tunnel(Action.ACCEPT)),
    (
        "fig15-request",
        FIG15_REQUEST,
        Tunnel(Action.CREATE, TunnelType.V6V4, client=Endpoint(addresses=(v4("1.1.1.1"),))),
    ),
    (
        "fig15-offer",
        FIG15_OFFER,
        Tunnel(
            Action.INFO,
            TunnelType.V6V4,
            lifetime=1440,
            server=FIG15_SERVER,
            client=Endpoint(
                addresses=(v4("1.1.1.1"), v6(RFC_BAD_V6), Address(DN, "userid.domain"))
            ),
        ),
    ),
    (
        "fig16-request",
        FIG16_REQUEST,
        Tunnel(
            Action.CREATE,
            TunnelType.V6V4,
            client=Endpoint(
                addresses=(v4("192.0.2.9"),),
                router=Router(prefix=Prefix(48), dns_servers=FIG16_DNS),
            ),
        ),
    ),
    (
        "fig16-offer",
        FIG16_OFFER,
        Tunnel(
            Action.INFO,
            TunnelType.V6V4,
            lifetime=1440,
            server=FIG15_SERVER,
            client=Endpoint(
                addresses=(v4("192.0.2.9"), v6(RFC_BAD_V6), Address(DN, "userid.domain")),
                router=Router(prefix=Prefix(48, "2001:db8:c18:1234::"), dns_servers=FIG16_DNS),
            ),
        ),
    ),
    (
        "fig17-request",
        FIG17_REQUEST,
        Tunnel(
            Action.CREATE,
            TunnelType.V4V6,
            client=Endpoint(addresses=(v6("2001:db8:0c18:ffff:0000:0000:0000:0001"),)),
        ),
    ),
    (
        "fig18-offer",
        FIG18_OFFER,
        Tunnel(
            Action.INFO,
            TunnelType.V4V6,
            lifetime=1440,
            server=Endpoint(
                addresses=(v4("192.0.2.2", 30), v6("2001:db8:c18:ffff:0000:0000:0000:0002"))
            ),
            client=Endpoint(addresses=(v4("192.0.2.1", 30), v6(RFC_BAD_V6))),
        ),
    ),
    (
        "fig19-request",
        FIG19_REQUEST,
        Tunnel(
            Action.CREATE,
            TunnelType.V6ANYV4,
            client=Endpoint(addresses=(v4("10.1.1.1"),), keepalive=Keepalive(30)),
        ),
    ),
    (
        "fig19-offer",
        FIG19_OFFER,
        Tunnel(
            Action.INFO,
            TunnelType.V6UDPV4,
            lifetime=1440,
            server=Endpoint(
                addresses=(v4("192.0.2.114"), v6("2001:db8:c18:ffff:0000:0000:0000:0002"))
            ),
            client=Endpoint(
                addresses=(v4("10.1.1.1"), v6("2001:db8:c18:ffff::0000:0000:0000:0003")),
                keepalive=Keepalive(30, v6("2001:db8:c18:ffff:0000:0000:0000:0002")),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    "xml,expected", [v[1:] for v in RFC_VECTORS], ids=[v[0] for v in RFC_VECTORS]
)
def test_rfc_figures(xml: bytes, expected: Tunnel) -> None:
    assert tunnel_from_xml(xml) == expected
    # Our rendering of the same value reads back identically.
    assert tunnel_from_xml(tunnel_to_xml(expected)) == expected


@pytest.mark.parametrize("xml", [v[1] for v in RFC_VECTORS], ids=[v[0] for v in RFC_VECTORS])
def test_rfc_figures_framed(xml: bytes) -> None:
    # The RFC's Content-length values are illustrative; with the real count each figure
    # passes through the reader unchanged, byte by byte too.
    reader = MessageReader()
    for i in range(len(xml) + 30):
        reader.feed(encode_request(xml)[i : i + 1])
    assert reader.next_content() == xml


def test_fig9_referral_after_status_line() -> None:
    # At VERSION time the referral follows the status line without Content-length (Fig. 9).
    reply = parse_reply(b"1302 Unsupported client version\r\n" + FIG9_REFERRAL)
    assert reply.code == 1302
    assert tunnel_from_xml(reply.xml).brokers == (v4("1.2.3.4"), Address(DN, "ts1.isp1.com"))


def test_referral_rendering() -> None:
    # One <broker> per address, as in Fig. 9; type="broker" although it is no tunnel type.
    t = Tunnel(Action.LIST, brokers=(v4("1.2.3.4"), Address(DN, "ts1.isp1.com")))
    assert tunnel_to_xml(t) == (
        b'<tunnel action="list" type="broker">\n'
        b"  <broker>\n"
        b'    <address type="ipv4">1.2.3.4</address>\n'
        b"  </broker>\n"
        b"  <broker>\n"
        b'    <address type="dn">ts1.isp1.com</address>\n'
        b"  </broker>\n"
        b"</tunnel>"
    )
    # Several addresses in one <broker> (the DTD's form) read the same.
    one = b'<tunnel action="list" type="broker"><broker><address type="ipv4">1.2.3.4</address>'
    one += b'<address type="dn">ts1.isp1.com</address></broker></tunnel>'
    assert tunnel_from_xml(one) == t


# --------------------------------------------------------------------------------------------
# gogoc (tsp.md §2.5)
# --------------------------------------------------------------------------------------------

# tsp.md §2.5 "What gogoc sends", captured byte for byte (CRLF line ends).
GOGOC_CREATE = (Path(__file__).parent / "data" / "gogoc_create_v6udpv4.bin").read_bytes()
GOGOC_CREATE_TUNNEL = Tunnel(
    Action.CREATE,
    TunnelType.V6UDPV4,
    proxy=False,
    client=Endpoint(addresses=(v4("127.0.0.1"),), keepalive=Keepalive(5, v6("::"))),
)

GOGOC_ROUTER_BLOCK = (
    b"  <router>\r\n"
    b'   <prefix length="56"/>\r\n'
    b"   <dns_server>\r\n"
    b'     <address type="dn">ns1.example.net</address>\r\n'
    b'     <address type="dn">ns2.example.net</address>\r\n'
    b"   </dns_server>\r\n"
    b"  </router>\r\n"
)


def test_gogoc_create_decodes() -> None:
    reader = MessageReader()
    reader.feed(GOGOC_CREATE)
    body = reader.next_content()
    assert body is not None and len(body) == 213
    assert tunnel_from_xml(body) == GOGOC_CREATE_TUNNEL


def test_gogoc_create_renders_byte_for_byte() -> None:
    # Our client's request is indistinguishable from gogoc's, Content-length 213 included.
    assert encode_request(tunnel_to_xml(GOGOC_CREATE_TUNNEL)) == GOGOC_CREATE


def test_gogoc_router_create_renders_byte_for_byte() -> None:
    # host_type=router, prefixlen=56, dns_server=ns1.example.net:ns2.example.net (measured).
    body = GOGOC_CREATE.partition(b"\r\n")[2]
    body = body.replace(b"  </keepalive>\r\n", b"  </keepalive>\r\n" + GOGOC_ROUTER_BLOCK)
    dns = (Address(DN, "ns1.example.net"), Address(DN, "ns2.example.net"))
    client = Endpoint(
        addresses=(v4("127.0.0.1"),),
        keepalive=Keepalive(5, v6("::")),
        router=Router(prefix=Prefix(56), dns_servers=dns),
    )
    t = Tunnel(Action.CREATE, TunnelType.V6UDPV4, proxy=False, client=client)
    assert encode_request(tunnel_to_xml(t)) == b"Content-length: %d\r\n" % len(body) + body
    assert tunnel_from_xml(body) == t


def test_gogoc_proxy_and_no_keepalive() -> None:
    xml = b'<tunnel action="create" type="v6v4" proxy="yes">\r\n <client>\r\n'
    xml += b'  <address type="ipv4">192.0.2.7</address>\r\n </client>\r\n</tunnel>\r\n'
    t = Tunnel(
        Action.CREATE, TunnelType.V6V4, proxy=True, client=Endpoint(addresses=(v4("192.0.2.7"),))
    )
    assert tunnel_from_xml(xml) == t
    assert tunnel_to_xml(t) + b"\r\n" == xml


# tsp.md §2.5 "A reply gogoc accepts", exactly.
GOGOC_OFFER_XML = (
    b'<tunnel action="info" type="v6udpv4" lifetime="1440">\n'
    b"  <server>\n"
    b'    <address type="ipv4">192.0.2.1</address>\n'
    b'    <address type="ipv6">2001:db8:ffff::1</address>\n'
    b"  </server>\n"
    b"  <client>\n"
    b'    <address type="ipv4">198.51.100.7</address>\n'
    b'    <address type="ipv6">2001:db8:ffff::2</address>\n'
    b"    <dns_server>\n"
    b'      <address type="ipv6">2001:db8:ffff::53</address>\n'
    b"    </dns_server>\n"
    b'    <keepalive interval="30">\n'
    b'      <address type="ipv6">2001:db8:ffff::1</address>\n'
    b"    </keepalive>\n"
    b"    <router>\n"
    b'      <prefix length="56">2001:0db8:0c18:1200:0000:0000:0000:0000</prefix>\n'
    b"    </router>\n"
    b"  </client>\n"
    b"</tunnel>"
)
GOGOC_OFFER = Tunnel(
    Action.INFO,
    TunnelType.V6UDPV4,
    lifetime=1440,
    server=Endpoint(addresses=(v4("192.0.2.1"), v6("2001:db8:ffff::1"))),
    client=Endpoint(
        addresses=(v4("198.51.100.7"), v6("2001:db8:ffff::2")),
        dns_servers=(v6("2001:db8:ffff::53"),),
        keepalive=Keepalive(30, v6("2001:db8:ffff::1")),
        router=Router(prefix=Prefix(56, expand_ipv6("2001:db8:c18:1200::"))),
    ),
)


def test_offer_renders_like_the_accepted_reply() -> None:
    assert tunnel_to_xml(GOGOC_OFFER) == GOGOC_OFFER_XML
    assert tunnel_from_xml(GOGOC_OFFER_XML) == GOGOC_OFFER


def test_offer_reply_framing() -> None:
    wire = encode_reply("200 Success", tunnel_to_xml(GOGOC_OFFER))
    header, _, body = wire.partition(b"\r\n")
    # N counts from the "2" of "200" through the final CRLF.
    assert header == b"Content-length: %d" % len(body)
    assert body.startswith(b"200 Success\r\n<tunnel ") and body.endswith(b"</tunnel>\r\n")
    reader = MessageReader()
    reader.feed(wire)
    content = reader.next_content()
    assert content is not None
    assert tunnel_from_xml(parse_reply(content).xml) == GOGOC_OFFER


def test_rendering_rules_for_gogoc() -> None:
    # No prolog, double quotes only, no whitespace in text nodes, no final newline.
    for t in [GOGOC_OFFER, GOGOC_CREATE_TUNNEL, *(v[2] for v in RFC_VECTORS)]:
        xml = tunnel_to_xml(t)
        assert xml.startswith(b"<tunnel action=")
        assert b"'" not in xml and b"<?" not in xml
        assert not xml.endswith((b"\n", b" "))
        root = defusedxml.ElementTree.fromstring(xml)
        for elem in root.iter():
            assert elem.text is None or elem.text.strip() == "" or elem.text == elem.text.strip()


@pytest.mark.parametrize("action", [Action.ACCEPT, Action.REJECT])
def test_accept_reject(action: Action) -> None:
    xml = b'<tunnel action="%s"></tunnel>' % action.value.encode()
    assert tunnel_to_xml(Tunnel(action)) == xml
    assert len(encode_request(xml)) - len(b"Content-length: 35\r\n") == 35
    assert tunnel_from_xml(xml) == Tunnel(action)


def test_attribute_order_and_empty_elements() -> None:
    t = Tunnel(
        Action.INFO,
        TunnelType.V6V4,
        lifetime=1440,
        proxy=True,
        mtu=1280,
        server=Endpoint(),
        client=Endpoint(keepalive=Keepalive(30), router=Router()),
    )
    assert tunnel_to_xml(t) == (
        b'<tunnel action="info" type="v6v4" lifetime="1440" proxy="yes" mtu="1280">\n'
        b"  <server></server>\n"
        b"  <client>\n"
        b'    <keepalive interval="30"></keepalive>\n'
        b"    <router></router>\n"
        b"  </client>\n"
        b"</tunnel>"
    )
    assert tunnel_from_xml(tunnel_to_xml(t)) == t


def test_escaping() -> None:
    # Values never need escaping on the wire, but the writer must not produce broken XML.
    t = Tunnel(Action.INFO, client=Endpoint(addresses=(Address(DN, 'a&b<c>"d'),)))
    xml = tunnel_to_xml(t)
    assert b'a&amp;b&lt;c&gt;"d' in xml
    root = defusedxml.ElementTree.fromstring(xml)
    assert root.find("client/address").text == 'a&b<c>"d'
    assert_decode_error(xml)  # and such a value is rejected when read


# --------------------------------------------------------------------------------------------
# Tolerance
# --------------------------------------------------------------------------------------------

MINIMAL = b'<tunnel action="create" type="v6v4"><client><address type="ipv4">1.2.3.4</address>'
MINIMAL += b"</client></tunnel>"
MINIMAL_TUNNEL = Tunnel(Action.CREATE, TunnelType.V6V4, client=Endpoint(addresses=(v4("1.2.3.4"),)))


@pytest.mark.parametrize(
    "data",
    [
        MINIMAL,
        MINIMAL + b"\r\n",
        b"\x00\x00" + MINIMAL + b"\r\n\x00",
        b" \t\r\n" + MINIMAL + b" \n",
        b'<?xml version="1.0"?>' + MINIMAL,
        b'<?xml version="1.0" encoding="UTF-8"?>\n' + MINIMAL,
        MINIMAL.replace(b"<client>", b'<client foo="bar"><unknown><x/>text</unknown>'),
        MINIMAL.replace(b"action=", b'version="2" action='),
        MINIMAL.replace(b"</tunnel>", b"<as number='65000'/></tunnel>"),  # tsp.md §1.9
        MINIMAL.replace(b'"create"', b'"CREATE"').replace(b'"v6v4"', b'" V6V4 "'),
        MINIMAL.replace(b'"ipv4"', b'"IPv4"'),
        MINIMAL.replace(b"1.2.3.4", b"\n   1.2.3.4\t\n"),
        MINIMAL.replace(b"action=", b"mode='x' action=").replace(b'"v6v4"', b"'v6v4'"),
        MINIMAL.replace(b"<client>", b"<client><!-- comment -->"),
        MINIMAL.replace(b"1.2.3.4", b"<![CDATA[1.2.3.4]]>"),
    ],
)
def test_tolerated(data: bytes) -> None:
    assert tunnel_from_xml(data) == MINIMAL_TUNNEL


def test_second_single_elements_are_ignored() -> None:
    xml = (
        b'<tunnel action="info"><client><keepalive interval="5"/><keepalive interval="9"/>'
        b'<router><prefix length="48"/><prefix length="64"/></router><router/></client>'
        b"<client><address type='ipv4'>9.9.9.9</address></client></tunnel>"
    )
    t = tunnel_from_xml(xml)
    assert t.client == Endpoint(keepalive=Keepalive(5), router=Router(prefix=Prefix(48)))


def test_multiple_dns_server_blocks_merge() -> None:
    xml = (
        b'<tunnel action="info"><client><dns_server><address type="ipv6">::1</address>'
        b'</dns_server><dns_server><address type="dn">ns.example</address></dns_server>'
        b"</client></tunnel>"
    )
    client = tunnel_from_xml(xml).client
    assert client is not None
    assert client.dns_servers == (v6("::1"), Address(DN, "ns.example"))


@pytest.mark.parametrize(
    "attrs,field,value",
    [
        ('lifetime="0"', "lifetime", 0),
        ('lifetime="2147483647"', "lifetime", 2**31 - 1),
        ('lifetime=" 1440 "', "lifetime", 1440),
        ('mtu="0"', "mtu", 0),
        ('mtu="65535"', "mtu", 65535),
        ('mtu="01280"', "mtu", 1280),
        ('proxy="no"', "proxy", False),
        ('proxy="YES"', "proxy", True),
    ],
)
def test_tunnel_attributes(attrs: str, field: str, value: object) -> None:
    t = tunnel_from_xml(b'<tunnel action="info" %s></tunnel>' % attrs.encode())
    assert getattr(t, field) == value


@pytest.mark.parametrize(
    "elem,expected",
    [
        ('<keepalive interval="0"/>', Keepalive(0)),
        ('<keepalive interval="86400"/>', Keepalive(86400)),
        ('<router><prefix length="0"/></router>', Router(prefix=Prefix(0))),
        ('<router><prefix length="128">::</prefix></router>', Router(prefix=Prefix(128, "::"))),
        ('<router><prefix length="64">  </prefix></router>', Router(prefix=Prefix(64))),
        ('<address type="ipv6" length="128">::1</address>', Address(V6, "::1", 128)),
        ('<address type="ipv4" length="0"></address>', Address(V4, "", 0)),
        ('<address type="dn">host_1.ex-ample.net</address>', Address(DN, "host_1.ex-ample.net")),
    ],
)
def test_client_children(elem: str, expected: object) -> None:
    xml = b'<tunnel action="create"><client>%s</client></tunnel>' % elem.encode()
    client = tunnel_from_xml(xml).client
    assert client is not None
    got = {
        Keepalive: client.keepalive,
        Router: client.router,
        Address: client.addresses[0] if client.addresses else None,
    }[type(expected)]
    assert got == expected


# --------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------


def client_doc(inner: str, attrs: str = 'action="create" type="v6v4"') -> bytes:
    return f"<tunnel {attrs}><client>{inner}</client></tunnel>".encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\r\n",
        b"not xml",
        b"<tunnel action='create'>",  # truncated
        b"<tunnel action='create'></tunnel><tunnel action='create'></tunnel>",
        b"<tunnel action='create'></tunnel>junk",
        b"<Tunnel action='create'></Tunnel>",
        b"<tunnels action='create'></tunnels>",
        b"<client><address type='ipv4'>1.2.3.4</address></client>",
        b"<x:tunnel xmlns:x='urn:x' action='create'></x:tunnel>",
        b"<tunnel xmlns='urn:tsp' action='create'></tunnel>",
        b"<tunnel></tunnel>",
        b"<tunnel action=''></tunnel>",
        b"<tunnel action='update'></tunnel>",
        b"<tunnel action='create' action='delete'></tunnel>",
        b"<tunnel action='create'>\xff\xfe</tunnel>",
        b"<tunnel action='cr\xc3\xa9ate'></tunnel>",
        b'<?xml version="1.0" encoding="x-no-such-codec"?><tunnel action="create"/>',
        b'<?xml version="1.0" encoding="utf-16"?><tunnel action="create"/>',
        b"<tunnel action='create'>&unknown;</tunnel>",
        b"<tunnel action='create' type='v6v4' proxy='maybe'></tunnel>",
        b"<tunnel action='create' lifetime='2147483648'></tunnel>",
        b"<tunnel action='create' lifetime='-1'></tunnel>",
        b"<tunnel action='create' lifetime='1e3'></tunnel>",
        b"<tunnel action='create' lifetime='0x10'></tunnel>",
        b"<tunnel action='create' lifetime='1_000'></tunnel>",
        b"<tunnel action='create' lifetime='+5'></tunnel>",
        b"<tunnel action='create' lifetime=''></tunnel>",
        b"<tunnel action='create' lifetime='99999999999999999999'></tunnel>",
        "<tunnel action='create' lifetime='\u0661\u0662'></tunnel>".encode(),
        b"<tunnel action='create' mtu='65536'></tunnel>",
        client_doc('<keepalive interval="86401"/>'),
        client_doc('<keepalive interval="-1"/>'),
        client_doc('<keepalive interval="3.5"/>'),
        client_doc("<keepalive/>"),
        client_doc('<keepalive interval="5"><address>::</address></keepalive>'),
        client_doc('<router><prefix length="129"/></router>'),
        client_doc('<router><prefix length="/48"/></router>'),
        client_doc('<router><prefix length="48">2001:db8::/48</prefix></router>'),
        client_doc('<router><dns_server><address type="a">x</address></dns_server></router>'),
        client_doc("<address>1.2.3.4</address>"),
        client_doc('<address type="">1.2.3.4</address>'),
        client_doc('<address type="ipv5">1.2.3.4</address>'),
        client_doc('<address type="ipv4" length="129">1.2.3.4</address>'),
        client_doc('<address type="ipv4">1.2.3.4 5.6.7.8</address>'),
        client_doc('<address type="ipv6">2001:db8:: 1</address>'),
        client_doc('<address type="ipv4">1.2.3.4;reboot</address>'),
        client_doc('<address type="dn">$(id).example</address>'),
        client_doc('<address type="ipv6">fe80::1%eth0</address>'),
        client_doc('<address type="ipv4">1.2.3.4<b/>5</address>'),  # text before a child only
        client_doc('<address type="dn">h\u00e9.example</address>'),
        client_doc('<dns_server><address type="ipv6">::1\n::2</address></dns_server>'),
        b"<tunnel action='list' type='broker'><broker><address>x</address></broker></tunnel>",
    ],
)
def test_rejected_with_500(data: bytes) -> None:
    assert_decode_error(data)


@pytest.mark.parametrize(
    "attrs",
    [
        'action="create" type="v6v5"',
        'action="create" type=""',
        'action="create" type="dslite"',
        'action="create" type="broker"',  # only a referral list may say "broker"
        'action="info" type="v6v4 v6udpv4"',
    ],
)
def test_unsupported_tunnel_type_is_303(attrs: str) -> None:
    assert_decode_error(client_doc("", attrs), code=StatusCode.UNSUPPORTED_TUNNEL_TYPE)


def test_prefix_without_length_is_520() -> None:
    data = client_doc("<router><prefix>2001:db8::</prefix></router>")
    assert_decode_error(data, code=StatusCode.MISSING_PREFIX_LENGTH)


def test_size_limit_comes_first() -> None:
    padded = MINIMAL.replace(b"<client>", b"<client>" + b" " * (4096 - len(MINIMAL)))
    assert len(padded) == 4096
    assert tunnel_from_xml(padded) == MINIMAL_TUNNEL
    assert_decode_error(padded + b" ")
    assert_decode_error(b"<" * 5000)  # not even parsed
    assert_decode_error(MINIMAL, max_size=len(MINIMAL) - 1)
    assert tunnel_from_xml(MINIMAL, max_size=len(MINIMAL)) == MINIMAL_TUNNEL


# --------------------------------------------------------------------------------------------
# Hostile XML: DTDs and entities are refused outright (defusedxml, forbid_dtd=True)
# --------------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE tunnel [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<tunnel action="create" type="v6v4"><client><address type="dn">&lol9;</address></client></tunnel>
"""

# The RFC's own DTD (Appendix A) in front of a valid document: refused as well.
RFC_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE tunnel  [
<!ELEMENT tunnel (server?,client?,broker?)>
  <!ATTLIST tunnel action
               (create|delete|info|accept|reject) #REQUIRED >
  <!ATTLIST tunnel type
               (v6v4|v4v6|v6anyv4|v6udpv4) #REQUIRED >
  <!ATTLIST tunnel lifetime CDATA "1440"    >
]>
"""


@pytest.mark.parametrize(
    "data",
    [
        BILLION_LAUGHS,
        RFC_DTD + MINIMAL,
        b'<!DOCTYPE tunnel [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<tunnel action="create"><client><address type="dn">&x;</address></client></tunnel>',
        b'<!DOCTYPE tunnel [<!ENTITY % p SYSTEM "http://192.0.2.1/x.dtd"> %p;]>' + MINIMAL,
        b'<!DOCTYPE tunnel SYSTEM "http://192.0.2.1/tsp.dtd">' + MINIMAL,
        b'<!DOCTYPE tunnel PUBLIC "-//X//Y" "tsp.dtd">' + MINIMAL,
        b"<!DOCTYPE tunnel>" + MINIMAL,
        b'<!DOCTYPE tunnel [<!ENTITY a "1.2.3.4">]>' + MINIMAL.replace(b"1.2.3.4", b"&a;"),
        b'<!DOCTYPE tunnel [<!ATTLIST tunnel type CDATA "v6v4">]><tunnel action="create"/>',
    ],
    ids=[
        "billion-laughs",
        "rfc-dtd",
        "external-entity",
        "parameter-entity",
        "external-dtd",
        "public-dtd",
        "empty-doctype",
        "internal-entity",
        "default-attribute",
    ],
)
def test_dtd_and_entities_rejected(data: bytes) -> None:
    assert_decode_error(data, max_size=1 << 20)


# --------------------------------------------------------------------------------------------
# Round trips (Hypothesis)
# --------------------------------------------------------------------------------------------

_value = st.from_regex(r"[0-9A-Za-z.:_-]{0,40}", fullmatch=True)
_address = st.builds(
    Address,
    type=st.sampled_from(AddressType),
    value=_value,
    length=st.none() | st.integers(0, 128),
)
_addresses = st.lists(_address, max_size=3).map(tuple)
_prefix = st.builds(
    Prefix, length=st.integers(0, 128), value=st.none() | _value.filter(lambda v: v != "")
)
_endpoint = st.builds(
    Endpoint,
    addresses=_addresses,
    keepalive=st.none() | st.builds(Keepalive, st.integers(0, 86400), st.none() | _address),
    router=st.none() | st.builds(Router, st.none() | _prefix, _addresses),
    dns_servers=_addresses,
)
tunnels = st.builds(
    Tunnel,
    action=st.sampled_from(Action),
    type=st.none() | st.sampled_from(TunnelType),
    lifetime=st.none() | st.integers(0, 2**31 - 1),
    proxy=st.none() | st.booleans(),
    mtu=st.none() | st.integers(0, 65535),
    client=st.none() | _endpoint,
    server=st.none() | _endpoint,
    brokers=_addresses,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(t=tunnels)
def test_roundtrip(t: Tunnel) -> None:
    xml = tunnel_to_xml(t)
    assert tunnel_from_xml(xml, max_size=1 << 16) == t
    # Framed and read back as a client request and as a server reply.
    reader = MessageReader(max_size=1 << 16)
    reader.feed(encode_request(xml) + encode_reply("200 Success", xml))
    request, reply = reader.next_content(), reader.next_content()
    assert request is not None and reply is not None
    assert tunnel_from_xml(request, max_size=1 << 16) == t
    assert tunnel_from_xml(parse_reply(reply).xml, max_size=1 << 16) == t


# --------------------------------------------------------------------------------------------
# Pattern 5: any input raises DecodeError or parses
# --------------------------------------------------------------------------------------------


def _only_decode_error(data: bytes) -> None:
    try:
        tunnel_from_xml(data)
    except DecodeError as e:
        assert e.code in (
            StatusCode.INVALID_REQUEST_FORMAT,
            StatusCode.UNSUPPORTED_TUNNEL_TYPE,
            StatusCode.MISSING_PREFIX_LENGTH,
        )


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
@example(data=b"<tunnel/>")
@example(data=b"<" * 4097)
@example(data=b"\xef\xbb\xbf" + MINIMAL)
@example(data=b"\xff\xfe<\x00t\x00")
def test_arbitrary_bytes(data: bytes) -> None:
    _only_decode_error(data)


@settings(max_examples=500)
@given(text=st.text(max_size=200), where=st.sampled_from(["tag", "attr", "text"]))
def test_arbitrary_text_in_a_document(text: str, where: str) -> None:
    doc = {
        "tag": f'<tunnel action="info"><client>{text}</client></tunnel>',
        "attr": f'<tunnel action="info" lifetime="{text}" type="{text}"></tunnel>',
        "text": f'<tunnel action="info"><client><address type="ipv6">{text}</address></client>'
        "</tunnel>",
    }[where]
    _only_decode_error(doc.encode("utf-8", errors="surrogatepass"))


_SEEDS = [GOGOC_CREATE.partition(b"\r\n")[2], GOGOC_OFFER_XML, FIG16_OFFER, FIG9_REFERRAL]


@settings(max_examples=500)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=3)), max_size=4),
    cut=st.integers(0, 2000),
)
def test_mutated_documents(seed: bytes, edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(seed)
    for pos, repl in edits:
        pos %= len(data) or 1
        data[pos : pos + len(repl)] = repl
    _only_decode_error(bytes(data))
    _only_decode_error(bytes(data[: cut % (len(data) + 1)]))


@settings(max_examples=300)
@given(
    st.recursive(
        st.just("<a/>"),
        lambda c: (
            st.lists(c, max_size=3)
            .map("".join)
            .map(lambda inner: f"<client><router>{inner}</router></client>")
        ),
        max_leaves=30,
    )
)
def test_nested_junk(inner: str) -> None:
    _only_decode_error(f'<tunnel action="create">{inner}</tunnel>'.encode())


def test_deep_nesting() -> None:
    deep = b"<a>" * 1300 + b"</a>" * 1300
    _only_decode_error(b'<tunnel action="create">' + deep[:3900] + b"</tunnel>")
    assert tunnel_from_xml(
        b'<tunnel action="create">' + b"<a>" * 400 + b"</a>" * 400 + b"</tunnel>"
    ) == Tunnel(Action.CREATE)


# --------------------------------------------------------------------------------------------
# expand_ipv6 (tsp.md §2.5 "Prefix")
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr,expanded",
    [
        ("2001:db8:c18:1200::", "2001:0db8:0c18:1200:0000:0000:0000:0000"),
        ("2001:DB8:FFFF::1", "2001:0db8:ffff:0000:0000:0000:0000:0001"),
        ("::", "0000:0000:0000:0000:0000:0000:0000:0000"),
        ("::ffff:192.0.2.1", "0000:0000:0000:0000:0000:ffff:c000:0201"),
        (" 2001:db8::1 ", "2001:0db8:0000:0000:0000:0000:0000:0001"),
    ],
)
def test_expand_ipv6(addr: str, expanded: str) -> None:
    assert expand_ipv6(addr) == expanded


@pytest.mark.parametrize("addr", ["", "1.2.3.4", RFC_BAD_V6, "2001:db8::/48", "g::1"])
def test_expand_ipv6_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        expand_ipv6(addr)


@given(st.integers(0, 2**128 - 1))
def test_expand_ipv6_property(n: int) -> None:
    addr = ipaddress.IPv6Address(n)
    out = expand_ipv6(str(addr))
    groups = out.split(":")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    assert out == out.lower()
    assert ipaddress.IPv6Address(out) == addr
    # gogoc's TSP_PREFIX: the first ceil(len/16) groups of the string are the prefix.
    assert ":".join(groups[:4]) == out[:19]
