"""The client half of reliable UDP with a fake clock: sequence numbers, RTO, backoff, give-up."""

from __future__ import annotations

import pytest

from tunnelbroker.protocols.tsp.errors import LocalProtocolError
from tunnelbroker.protocols.tsp.framing import SEQ_MASK, UdpHeader
from tunnelbroker.protocols.tsp.reliable import Disposition, ReliableUdpServer
from tunnelbroker.protocols.tsp.reliable_client import ReliableUdpClient, RetransmitTimeout


def answer(datagram: bytes, payload: bytes = b"") -> bytes:
    """What a server sends back: the same 8-byte header, then its payload."""
    return datagram[:8] + payload


def test_sequence_starts_at_240_like_gogoc_and_increments() -> None:
    rc = ReliableUdpClient(base_time=100.0)
    first = rc.wrap(b"VERSION=2.0.0\r\n", 100.0)
    assert first[:4] == bytes.fromhex("f00000f0")
    assert first[8:] == b"VERSION=2.0.0\r\n"
    assert rc.receive(answer(first, b"CAPABILITY\r\n"), 100.01) == b"CAPABILITY\r\n"
    second = rc.wrap(b"", 100.02)
    assert second[:4] == bytes.fromhex("f00000f1") and len(second) == 8


def test_any_first_sequence_and_28_bit_wrap() -> None:
    rc = ReliableUdpClient(base_time=0.0, first_seq=SEQ_MASK)
    d = rc.wrap(b"x", 0.0)
    assert UdpHeader.from_wire(d).seq == SEQ_MASK
    rc.receive(answer(d), 0.0)
    assert UdpHeader.from_wire(rc.wrap(b"y", 0.0)).seq == 0
    with pytest.raises(LocalProtocolError):
        ReliableUdpClient(base_time=0.0, first_seq=SEQ_MASK + 1)


def test_timestamp_is_milliseconds_since_base_modulo_2_32() -> None:
    rc = ReliableUdpClient(base_time=10.0)
    assert UdpHeader.from_wire(rc.wrap(b"", 10.931)).timestamp == 931
    rc = ReliableUdpClient(base_time=0.0)
    assert UdpHeader.from_wire(rc.wrap(b"", 2**32 / 1000 + 1.5)).timestamp == 1500


def test_one_message_outstanding_at_a_time() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"a", 0.0)
    assert rc.outstanding
    with pytest.raises(LocalProtocolError):
        rc.wrap(b"b", 0.0)
    rc.receive(answer(d), 0.1)
    assert not rc.outstanding and rc.get_timer() is None


def test_only_the_matching_reply_counts() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    first = rc.wrap(b"a", 0.0)
    assert rc.receive(answer(first, b"A"), 0.1) == b"A"
    second = rc.wrap(b"b", 0.2)
    # A late duplicate of the first answer, a foreign header, IPv6 data, junk: all dropped.
    assert rc.receive(answer(first, b"A"), 0.3) is None
    assert rc.receive(UdpHeader(999, 0).to_wire() + b"?", 0.3) is None
    assert rc.receive(b"\x60" + bytes(47), 0.3) is None
    assert rc.receive(b"\xf0\x00", 0.3) is None
    assert rc.outstanding
    assert rc.receive(answer(second), 0.3) == b""  # an empty ack is a valid answer
    assert rc.receive(answer(second), 0.3) is None  # and counts once


def test_jacobson_rto_from_echoed_timestamps() -> None:
    rc = ReliableUdpClient(base_time=0.0, min_rto=0.01)
    assert rc.rto == 1.0 and rc.srtt is None
    d = rc.wrap(b"", 0.0)
    rc.receive(answer(d), 0.2)
    # First sample r = 0.2: srtt = r, rttvar = r/2, RTO = srtt + 4 rttvar.
    assert rc.srtt == pytest.approx(0.2)
    assert rc.rto == pytest.approx(0.6)
    d = rc.wrap(b"", 1.0)
    rc.receive(answer(d), 1.6)
    # r = 0.6: rttvar += 1/4 (|0.6 - 0.2| - 0.1) = 0.175; srtt += 1/8 (0.4) = 0.25.
    assert rc.srtt == pytest.approx(0.25)
    assert rc.rto == pytest.approx(0.25 + 4 * 0.175)


def test_rto_is_clamped_to_half_a_second_and_thirty() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"", 0.0)
    rc.receive(answer(d), 0.001)
    assert rc.rto == 0.5
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"", 0.0)
    rc.receive(answer(d), 29.0)
    assert rc.rto == 30.0


def test_implausible_samples_are_ignored() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"", 0.0)
    # A server that does not echo our timestamp: a "round trip" of about 49 days.
    rc.receive(d[:4] + (123456789).to_bytes(4, "big"), 0.1)
    assert rc.srtt is None and rc.rto == 1.0


def test_retransmission_keeps_seq_and_refreshes_timestamp() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"hello", 0.0)
    assert rc.get_timer() == 1.0
    assert rc.handle_timer(0.5) is None  # not yet
    again = rc.handle_timer(1.0)
    assert again is not None
    h0, h1 = UdpHeader.from_wire(d), UdpHeader.from_wire(again)
    assert h1.seq == h0.seq and h1.timestamp == 1000 and again[8:] == b"hello"
    assert rc.retransmissions == 1
    # The answer to the retransmission echoes its timestamp: the sample is 0.05, not 1.05.
    rc.receive(answer(again), 1.05)
    assert rc.srtt == pytest.approx(0.05)


def _gaps(rc: ReliableUdpClient, start: float = 0.0) -> tuple[list[float], RetransmitTimeout]:
    """Run the timer until it gives up; the gaps between transmissions (and the last wait)."""
    sent = [start]
    while True:
        timer = rc.get_timer()
        assert timer is not None
        try:
            d = rc.handle_timer(timer)
        except RetransmitTimeout as e:
            sent.append(timer)
            return [round(b - a, 6) for a, b in zip(sent, sent[1:], strict=False)], e
        assert d is not None
        sent.append(timer)


def test_exponential_backoff_and_give_up_after_8_tries() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    d = rc.wrap(b"", 0.0)
    rc.receive(answer(d), 0.4)  # srtt 0.4, rttvar 0.2: RTO 1.2
    assert rc.rto == pytest.approx(1.2)
    rc.wrap(b"VERSION=2.0.0\r\n", 1.0)
    gaps, err = _gaps(rc, 1.0)
    # 8 transmissions, each wait doubling up to the 30 s ceiling, then the give-up.
    assert gaps == [1.2, 2.4, 4.8, 9.6, 19.2, 30.0, 30.0, 30.0]
    assert err.tries == 8 and err.answered_before
    assert not rc.outstanding and rc.get_timer() is None
    assert "stopped answering" in str(err)


def test_a_flow_never_answered_gives_up_after_3_tries_like_gogoc() -> None:
    rc = ReliableUdpClient(base_time=0.0)
    rc.wrap(b"VERSION=2.0.0\r\n", 0.0)
    gaps, err = _gaps(rc)
    assert gaps == [1.0, 2.0, 4.0]
    assert err.tries == 3 and not err.answered_before
    assert "no answer after 3 transmissions" in str(err)


def test_settings_are_checked() -> None:
    with pytest.raises(LocalProtocolError):
        ReliableUdpClient(base_time=0.0, min_rto=2.0, initial_rto=1.0)
    with pytest.raises(LocalProtocolError):
        ReliableUdpClient(base_time=0.0, max_tries=0)
    rc = ReliableUdpClient(base_time=0.0, max_tries=1, max_tries_unanswered=1)
    rc.wrap(b"", 0.0)
    with pytest.raises(RetransmitTimeout):
        rc.handle_timer(1.0)


def test_against_the_server_half_with_loss() -> None:
    """Lost requests and lost replies: the server answers duplicates from its cache."""
    rc = ReliableUdpClient(base_time=0.0)
    rs = ReliableUdpServer()
    now = 0.0
    for i, msg in enumerate([b"one", b"two", b"three"]):
        d = rc.wrap(msg, now)
        if i == 1:
            # The request is lost: retransmit.
            timer = rc.get_timer()
            assert timer is not None
            now = timer
            d = rc.handle_timer(now) or b""
        got = rs.receive(d)
        assert got.disposition is Disposition.NEW and got.payload == msg
        reply = rs.reply(msg.upper())
        if i == 2:
            # The reply is lost: the retransmission is answered from the server's cache.
            timer = rc.get_timer()
            assert timer is not None
            now = timer
            d = rc.handle_timer(now) or b""
            dup = rs.receive(d)
            assert dup.disposition is Disposition.RESEND
            reply = dup.reply
        now += 0.05
        assert rc.receive(reply, now) == msg.upper()
    assert rc.retransmissions == 2
