"""The TSP server session machine, in memory: gogoc's byte sequences in, the right bytes out."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelbroker.protocols.sasl import digest_md5
from tunnelbroker.protocols.tsp import codec, framing
from tunnelbroker.protocols.tsp.errors import LocalProtocolError, StatusCode
from tunnelbroker.protocols.tsp.events import (
    Authenticated,
    DigestAuthRequested,
    ErrorSent,
    Event,
    PlainAuthRequested,
    SessionClosed,
    SessionRestarted,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
    VersionAccepted,
)
from tunnelbroker.protocols.tsp.messages import (
    Action,
    Address,
    AddressType,
    Endpoint,
    Tunnel,
    TunnelType,
)
from tunnelbroker.protocols.tsp.reliable import Disposition, ReliableUdpServer
from tunnelbroker.protocols.tsp.server import (
    ServerSession,
    ServerSettings,
    State,
    Transport,
)

# tsp.md §2.5 "What gogoc sends", captured byte for byte (CRLF line ends).
GOGOC_CREATE = (Path(__file__).parent / "data" / "gogoc_create_v6udpv4.bin").read_bytes()
ACCEPT = b'Content-length: 35\r\n<tunnel action="accept"></tunnel>\r\n'
REJECT = b'Content-length: 35\r\n<tunnel action="reject"></tunnel>\r\n'

OFFER = Tunnel(
    action=Action.INFO,
    type=TunnelType.V6UDPV4,
    lifetime=1440,
    server=Endpoint(
        addresses=(Address(AddressType.IPV4, "192.0.2.1"), Address(AddressType.IPV6, "2001:db8::1"))
    ),
    client=Endpoint(
        addresses=(Address(AddressType.IPV4, "127.0.0.1"), Address(AddressType.IPV6, "2001:db8::2"))
    ),
)

SETTINGS = ServerSettings(realm="testrealm", tunnel_types=(TunnelType.V6V4, TunnelType.V6UDPV4))


def make(transport: Transport = Transport.UDP, **kw: object) -> ServerSession:
    settings = ServerSettings(
        **{"realm": "testrealm", "tunnel_types": (TunnelType.V6V4, TunnelType.V6UDPV4), **kw}
    )
    return ServerSession(
        settings, transport=transport, ipv6_session=False, nonce="1234567890", now=0.0
    )


def events(s: ServerSession) -> list[Event]:
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


def feed(s: ServerSession, data: bytes, now: float = 1.0) -> list[bytes]:
    s.receive_data(data, now)
    return s.data_to_send()


def test_anonymous_udp_session_end_to_end() -> None:
    s = make()
    assert feed(s, b"VERSION=2.0.2\r\n") == [
        b"CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 AUTH=DIGEST-MD5 AUTH=PLAIN AUTH=ANONYMOUS\r\n"
    ]
    assert events(s) == [VersionAccepted("2.0.2")]
    assert feed(s, b"AUTHENTICATE ANONYMOUS\r\n\0") == [b"200 Success\r\n"]
    assert events(s) == [Authenticated("ANONYMOUS", None)]
    assert feed(s, GOGOC_CREATE) == []
    (ev,) = events(s)
    assert isinstance(ev, TunnelRequested) and ev.username is None
    assert ev.request.type is TunnelType.V6UDPV4
    assert ev.request.client is not None and ev.request.client.keepalive is not None
    assert ev.request.client.keepalive.interval == 5
    assert s.awaiting
    s.offer(OFFER)
    (reply,) = s.data_to_send()
    header, body = reply.split(b"\r\n", 1)
    assert header == b"Content-length: %d" % len(body)
    parsed = framing.parse_reply(body)
    assert parsed.code == 200
    assert codec.tunnel_from_xml(parsed.xml) == OFFER
    assert s.state is State.OFFERED
    assert feed(s, ACCEPT) == []
    assert events(s) == [TunnelAccepted(OFFER)]
    assert s.state is State.ESTABLISHED
    assert s.get_timer() is None  # an established session is not timed out by the machine


def test_plain_over_tcp_in_one_read_as_gogoc_may_send_it() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\n")
    # tsp.md §2.4: on TCP one read may hold the AUTHENTICATE line, its NUL and the credentials.
    assert feed(s, b"AUTHENTICATE PLAIN\r\n\0\0alice\0secret\r\n") == []
    evs = events(s)
    assert evs[-1] == PlainAuthRequested("", "alice", "secret")
    s.complete_plain("alice")
    assert s.data_to_send() == [b"200 Success\r\n"]
    assert s.username == "alice"


def test_plain_failure_is_300_and_closes() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE PLAIN\r\n\0")
    feed(s, b"\0alice\0wrong\r\n")
    events(s)
    s.complete_plain(None)
    assert s.data_to_send() == [b"300 Authentication failed\r\n"]
    evs = events(s)
    assert isinstance(evs[0], ErrorSent) and evs[0].code is StatusCode.AUTHENTICATION_FAILED
    assert isinstance(evs[-1], SessionClosed)
    assert s.closed


def _digest_exchange(s: ServerSession) -> list[bytes]:
    feed(s, b"VERSION=2.0.2\r\n")
    (challenge_line,) = feed(s, b"AUTHENTICATE DIGEST-MD5\r\n\0")
    challenge = digest_md5.decode_b64_line(challenge_line)
    assert b'realm="testrealm"' in challenge and b"md5-sess" in challenge
    client = digest_md5.DigestClient("alice", "secret", "1795323394", host="127.0.0.1")
    response = client.respond(challenge)
    out = feed(s, digest_md5.encode_b64_line(response))
    assert events(s)[-1] == DigestAuthRequested("alice", "testrealm")
    assert out == []
    s.complete_digest(digest_md5.digest_ha1("alice", "testrealm", "secret"))
    writes = s.data_to_send()
    client.check_rspauth(digest_md5.decode_b64_line(writes[0]))
    return writes


def test_digest_md5_over_tcp_sends_rspauth_and_status_as_two_writes() -> None:
    s = make(Transport.TCP)
    writes = _digest_exchange(s)
    # The gogoc vector of tsp.md §2.4.
    assert base64.b64decode(writes[0].strip()) == b"rspauth=bec75817c5f139f2f892846a1e9a9629"
    assert writes[1] == b"200 Success\r\n"
    assert s.state is State.COMMAND and s.username == "alice"


def test_digest_md5_over_udp_answers_the_probe_with_200() -> None:
    s = make(Transport.UDP)
    writes = _digest_exchange(s)
    assert len(writes) == 1
    assert s.state is State.DIGEST_OK
    assert feed(s, b"") == [b"200 Success\r\n"]  # the header-only probe
    assert s.state is State.COMMAND


def test_digest_md5_wrong_password_and_unknown_user() -> None:
    for ha1 in (digest_md5.digest_ha1("alice", "testrealm", "nope"), None):
        s = make(Transport.TCP)
        feed(s, b"VERSION=2.0.2\r\n")
        (line,) = feed(s, b"AUTHENTICATE DIGEST-MD5\r\n\0")
        client = digest_md5.DigestClient("alice", "secret", "1", host="h")
        feed(s, digest_md5.encode_b64_line(client.respond(digest_md5.decode_b64_line(line))))
        s.complete_digest(ha1)
        assert s.data_to_send() == [b"300 Authentication failed\r\n"]
        assert s.closed


def test_unsupported_version_is_302_and_fallbacks_are_accepted() -> None:
    s = make()
    assert feed(s, b"VERSION=3.0.0\r\n") == [b"302 Unsupported client version\r\n"]
    assert s.closed
    for v in (b"2.0.2", b"2.0.1", b"2.0.0", b"1.0.1", b"2.0"):
        s = make()
        assert feed(s, b"VERSION=" + v + b"\r\n")[0].startswith(b"CAPABILITY ")


def test_tsp_1_0_needs_no_accept() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=1.0.1\r\nAUTHENTICATE ANONYMOUS\r\n" + GOGOC_CREATE)
    events(s)
    s.offer(OFFER)
    assert events(s) == [TunnelAccepted(OFFER)]
    assert s.state is State.ESTABLISHED


def test_mechanism_not_offered_is_300() -> None:
    s = make(allow_anonymous=False)
    out = feed(s, b"VERSION=2.0.2\r\n")
    assert b"ANONYMOUS" not in out[0]
    assert feed(s, b"AUTHENTICATE ANONYMOUS\r\n\0") == [b"300 Authentication failed\r\n"]
    assert s.closed


def test_capability_follows_transport_and_family() -> None:
    tcp = make(Transport.TCP)
    assert feed(tcp, b"VERSION=2.0.2\r\n")[0].startswith(b"CAPABILITY TUNNEL=V6V4 AUTH=")
    v6 = ServerSession(
        ServerSettings(realm="r", tunnel_types=(TunnelType.V6V4, TunnelType.V4V6)),
        transport=Transport.TCP,
        ipv6_session=True,
        nonce="n",
        now=0.0,
    )
    assert feed(v6, b"VERSION=2.0.2\r\n")[0].startswith(b"CAPABILITY TUNNEL=V4V6 AUTH=")


def test_malformed_request_gets_500_and_the_session_goes_on() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n")
    events(s)
    out = feed(s, b"Content-length: 10\r\n<tunnel>\r\n")
    assert out == [b"Content-length: 48\r\n500 Invalid request format or specified length\r\n"]
    assert not s.closed and s.state is State.COMMAND
    feed(s, GOGOC_CREATE)
    assert isinstance(events(s)[-1], TunnelRequested)


def test_unknown_tunnel_type_is_303() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n")
    body = b'<tunnel action="create" type="v9v9"></tunnel>\r\n'
    out = feed(s, b"Content-length: %d\r\n" % len(body) + body)
    assert framing.parse_reply(out[0].split(b"\r\n", 1)[1]).code == 303


def test_oversized_line_is_refused_and_closed() -> None:
    s = make(Transport.TCP, max_message_size=512)
    out = feed(s, b"V" * 2000)
    assert out and out[0].startswith(b"500 ")
    assert s.closed


def test_out_of_order_accept_is_an_error_not_a_crash() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n")
    out = feed(s, ACCEPT)
    assert framing.parse_reply(out[0].split(b"\r\n", 1)[1]).code == 500
    assert not s.closed


def test_reject_returns_to_command_phase() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n" + GOGOC_CREATE)
    events(s)
    s.offer(OFFER)
    s.data_to_send()
    feed(s, REJECT)
    assert events(s) == [TunnelRejected(OFFER)]
    assert s.state is State.COMMAND


def test_version_on_a_live_session_restarts_it() -> None:
    s = make()
    for msg in (b"VERSION=2.0.2\r\n", b"AUTHENTICATE ANONYMOUS\r\n\0", GOGOC_CREATE):
        feed(s, msg)
    s.offer(OFFER)
    feed(s, ACCEPT)
    events(s)
    out = feed(s, b"VERSION=2.0.2\r\n")
    assert out[0].startswith(b"CAPABILITY ")
    assert events(s)[0] == SessionRestarted(had_tunnel=True)


def test_delete_and_info_are_decisions() -> None:
    s = make(Transport.TCP)
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n")
    body = b'<tunnel action="delete" type="v6v4"></tunnel>\r\n'
    feed(s, b"Content-length: %d\r\n" % len(body) + body)
    (ev,) = [e for e in events(s) if isinstance(e, TunnelRequested)]
    assert ev.request.action is Action.DELETE
    s.acknowledge()
    assert s.data_to_send() == [b"Content-length: 13\r\n200 Success\r\n"]


def test_refusal_with_referral_adds_1000_and_a_broker_list() -> None:
    s = make(Transport.TCP, referrals=(Address(AddressType.IPV4, "192.0.2.77"),))
    feed(s, b"VERSION=2.0.2\r\nAUTHENTICATE ANONYMOUS\r\n" + GOGOC_CREATE)
    events(s)
    s.refuse(StatusCode.NO_MORE_TUNNELS, referral=True)
    (out,) = s.data_to_send()
    reply = framing.parse_reply(out.split(b"\r\n", 1)[1])
    assert reply.code == 1301
    doc = codec.tunnel_from_xml(reply.xml)
    assert doc.action is Action.LIST and doc.brokers == (Address(AddressType.IPV4, "192.0.2.77"),)
    assert s.state is State.COMMAND  # not fatal: the client may try something else


def test_idle_and_session_timeouts() -> None:
    s = make(idle_timeout=10, session_timeout=25)
    s.receive_data(b"VERSION=2.0.2\r\n", 1.0)
    assert s.get_timer() == 11.0
    s.handle_timer(5.0)
    assert not s.closed
    s.handle_timer(11.0)
    assert s.closed and isinstance(events(s)[-1], SessionClosed)
    s = make(idle_timeout=10, session_timeout=25)
    for t in range(1, 30, 5):
        s.receive_data(b"", float(t))
    s.handle_timer(25.0)
    assert s.closed


def test_decisions_in_the_wrong_state_are_local_errors() -> None:
    s = make()
    with pytest.raises(LocalProtocolError):
        s.offer(OFFER)
    with pytest.raises(LocalProtocolError):
        s.complete_digest(None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from(list(Transport)))
def test_arbitrary_input_never_raises(chunks: list[bytes], transport: Transport) -> None:
    s = make(transport)
    for c in chunks:
        s.receive_data(c, 1.0)
        s.data_to_send()
        for ev in events(s):
            if isinstance(ev, PlainAuthRequested):
                s.complete_plain(None)
            elif isinstance(ev, DigestAuthRequested):
                s.complete_digest(None)
            elif isinstance(ev, TunnelRequested):
                s.refuse(StatusCode.SERVER_SIDE_ERROR)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"VERSION=2.0.2\r\n",
                b"AUTHENTICATE ANONYMOUS\r\n\0",
                b"AUTHENTICATE PLAIN\r\n\0",
                b"\0a\0b\r\n",
                GOGOC_CREATE,
                ACCEPT,
                REJECT,
                b"",
                b"junk\r\n",
            ]
        ),
        max_size=12,
    )
)
def test_any_order_of_valid_messages_is_handled(msgs: list[bytes]) -> None:
    s = make()
    for m in msgs:
        s.receive_data(m, 1.0)
        s.data_to_send()
        for ev in events(s):
            if isinstance(ev, PlainAuthRequested):
                s.complete_plain("a")
            elif isinstance(ev, TunnelRequested):
                s.offer(OFFER)


# ---------------------------------------------------------------- reliable UDP


def dgram(seq: int, payload: bytes, ts: int = 7) -> bytes:
    return framing.UdpHeader(seq, ts).to_wire() + payload


def test_reliable_udp_echoes_and_resends_cached_reply() -> None:
    r = ReliableUdpServer()
    got = r.receive(dgram(240, b"VERSION=2.0.2\r\n"))
    assert got.disposition is Disposition.NEW and got.payload == b"VERSION=2.0.2\r\n"
    reply = r.reply(b"CAPABILITY X\r\n")
    assert reply == bytes.fromhex("f00000f000000007") + b"CAPABILITY X\r\n"
    again = r.receive(dgram(240, b"VERSION=2.0.2\r\n", ts=99))
    assert again.disposition is Disposition.RESEND
    assert again.reply == framing.UdpHeader(240, 99).to_wire() + b"CAPABILITY X\r\n"
    assert r.receive(dgram(239, b"old")).disposition is Disposition.DROP
    assert r.receive(dgram(241, b"next")).disposition is Disposition.NEW


def test_reliable_udp_stays_silent_while_a_decision_is_pending() -> None:
    r = ReliableUdpServer()
    r.receive(dgram(5, b"x"))
    assert r.receive(dgram(5, b"x")).disposition is Disposition.DROP
    assert r.pending is not None and r.pending.seq == 5
    r.reply(b"")
    assert r.pending is None


def test_reliable_udp_sequence_wraps() -> None:
    r = ReliableUdpServer()
    r.receive(dgram(framing.SEQ_MASK, b"a"))
    r.reply(b"")
    assert r.receive(dgram(0, b"b")).disposition is Disposition.NEW
