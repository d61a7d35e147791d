"""The keepalive machine on a fake clock: schedule, jitter, misses, replies."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelbroker.protocols.tsp.keepalive import KeepaliveMachine
from tunnelbroker.tunnelserver.packet import echo_reply, icmpv6_checksum

KA = ipaddress.IPv6Address("2001:db8:8000:1::1").packed
ME = ipaddress.IPv6Address("2001:db8:8000:1::2").packed
IDENT = 0x4242


def machine(interval: float = 10.0, timeout: float = 5.0) -> KeepaliveMachine:
    return KeepaliveMachine(interval, KA, ME, IDENT, timeout=timeout)


def send_one(m: KeepaliveMachine, now: float) -> bytes:
    m.next_send(now - m.interval, 1.0)  # due exactly at ``now``
    pkt = m.due(now)
    assert pkt is not None
    return pkt


def reply_to(request: bytes) -> bytes:
    reply = echo_reply(request)
    assert reply is not None
    return reply


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 7.5), (0.5, 8.75), (1.0, 10.0)])
def test_jitter_spans_three_quarters_to_one_interval(rand: float, expected: float) -> None:
    # RFC 5572 via tsp.md §1.5: jitter SHOULD be used, in [0.75T, T].
    assert machine().next_send(100.0, rand) == pytest.approx(100.0 + expected)


@given(st.floats(min_value=-10, max_value=10, allow_nan=False))
def test_jitter_never_leaves_the_window(rand: float) -> None:
    at = machine().next_send(0.0, rand)
    assert 7.5 <= at <= 10.0


def test_nothing_is_due_until_armed_and_until_its_time() -> None:
    m = machine()
    assert m.due(1000.0) is None and m.get_timer() is None
    at = m.next_send(0.0, 0.2)
    assert m.get_timer() == at
    assert m.due(at - 0.001) is None
    assert m.due(at) is not None
    assert m.due(at + 1) is None  # one echo per arming


def test_the_echo_request_is_well_formed() -> None:
    m = machine()
    first, second = send_one(m, 10.0), send_one(m, 20.0)
    for seq, pkt in ((1, first), (2, second)):
        assert pkt[0] >> 4 == 6 and pkt[6] == 58
        assert pkt[8:24] == ME and pkt[24:40] == KA
        assert (pkt[4] << 8 | pkt[5]) + 40 == len(pkt)
        kind, code, _, ident, got_seq = struct.unpack_from("!BBHHH", pkt, 40)
        assert (kind, code, ident, got_seq) == (128, 0, IDENT, seq)
        assert icmpv6_checksum(ME, KA, pkt[40:]) == 0
    assert m.sent == 2


def test_a_reply_is_recognised_and_timed() -> None:
    m = machine()
    request = send_one(m, 10.0)
    assert m.get_timer() == 15.0  # the reply deadline
    assert m.receive(reply_to(request), 10.25)
    assert m.answered == 1 and m.last_rtt == pytest.approx(0.25)
    assert m.get_timer() is None  # nothing waits, nothing armed
    assert not m.receive(reply_to(request), 10.3)  # a duplicate is not ours any more


def test_three_misses_in_a_row_are_death() -> None:
    m = machine()
    for i in range(3):
        t = 10.0 * (i + 1)
        send_one(m, t)
        m.handle_timer(t + 4.999)
        assert m.missed == i
        m.handle_timer(t + 5.0)
        assert m.missed == i + 1
    assert m.dead


def test_a_reply_clears_the_misses() -> None:
    m = machine()
    send_one(m, 10.0)
    m.handle_timer(15.0)
    send_one(m, 20.0)
    m.handle_timer(25.0)
    assert m.missed == 2 and not m.dead
    request = send_one(m, 30.0)
    assert m.receive(reply_to(request), 31.0)
    assert m.missed == 0
    send_one(m, 40.0)
    m.handle_timer(45.0)
    assert m.missed == 1 and not m.dead


def test_a_late_reply_does_not_count() -> None:
    m = machine()
    request = send_one(m, 10.0)
    m.handle_timer(15.0)
    assert not m.receive(reply_to(request), 15.5)
    assert m.missed == 1


def test_overlapping_echoes_count_once_each_and_a_newer_reply_retires_older_ones() -> None:
    # Interval shorter than the timeout: several echoes wait at once.
    m = machine(interval=2.0, timeout=5.0)
    send_one(m, 2.0)
    send_one(m, 4.0)
    third = send_one(m, 6.0)
    m.handle_timer(7.0)  # the first is overdue
    assert m.missed == 1
    assert m.receive(reply_to(third), 7.5)
    assert m.missed == 0 and m.get_timer() is None


def test_the_sequence_number_wraps() -> None:
    m = machine()
    for i in range(0x10001):
        pkt = send_one(m, float(i))
        assert m.receive(reply_to(pkt), float(i))
    assert struct.unpack_from("!H", pkt, 46)[0] == 1


def reply_variant(request: bytes, **change: bytes) -> bytes:
    reply = bytearray(reply_to(request))
    for field, value in change.items():
        start = {"src": 8, "dst": 24, "ident": 44, "type": 40}[field]
        reply[start : start + len(value)] = value
    # Recompute the checksum so only the changed field is wrong.
    reply[42:44] = b"\0\0"
    reply[42:44] = icmpv6_checksum(
        bytes(reply[8:24]), bytes(reply[24:40]), bytes(reply[40:])
    ).to_bytes(2, "big")
    return bytes(reply)


@pytest.mark.parametrize(
    "change",
    [
        {"src": ipaddress.IPv6Address("2001:db8::9").packed},
        {"dst": ipaddress.IPv6Address("2001:db8::9").packed},
        {"ident": b"\x12\x34"},
        {"type": b"\x80"},  # an echo request, not a reply
    ],
)
def test_foreign_packets_are_not_ours(change: dict[str, bytes]) -> None:
    m = machine()
    request = send_one(m, 10.0)
    assert not m.receive(reply_variant(request, **change), 10.1)
    assert m.answered == 0


def test_a_corrupt_checksum_is_not_ours() -> None:
    m = machine()
    reply = bytearray(reply_to(send_one(m, 10.0)))
    reply[-1] ^= 0xFF
    assert not m.receive(bytes(reply), 10.1)


@given(st.binary(max_size=120))
def test_receive_never_raises(data: bytes) -> None:
    m = machine()
    send_one(m, 10.0)
    assert m.receive(data, 10.1) in (True, False)


def test_a_simulated_outage_is_detected_on_schedule() -> None:
    # Drive the machine as the I/O layer does, with a peer that answers until t=100.
    m = machine(interval=30.0)
    now = 0.0
    m.next_send(now, 0.5)
    while not m.dead:
        timer = m.get_timer()
        assert timer is not None
        now = timer
        m.handle_timer(now)
        if m.dead:
            break
        pkt = m.due(now)
        if pkt is not None:
            if now < 100.0:
                assert m.receive(reply_to(pkt), now + 0.05)
            m.next_send(now, 0.5)
    # Echoes every 26.25 s: the last answered at 78.75, then 105, 131.25, 157.5 go unanswered.
    assert now == pytest.approx(157.5 + 5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": b"\0" * 4},
        {"interval": 0.0},
        {"timeout": -1.0},
        {"max_missed": 0},
        {"ident": 0x10000},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"interval": 10.0, "address": KA, "source": ME, "ident": 1}
    with pytest.raises(ValueError):
        KeepaliveMachine(**{**args, **kwargs})  # type: ignore[arg-type]
