"""Heartbeat: the SixXS README and AICCU vectors, every drop reason, hypothesis."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tunnelbroker.protocols.heartbeat as heartbeat
from tunnelbroker.protocols.ayiya import ReplayWindow
from tunnelbroker.protocols.heartbeat import (
    Heartbeat,
    HeartbeatDrop,
    build,
    compute_digest,
    parse,
    receive,
    verify,
)

T = 1700000000
AICCU_BEAT = b"HEARTBEAT TUNNEL 2001:db8:1:1::2 sender 1700000000 21041e1bbb960062fa7b32cfb472f03e"
README_BEAT = (
    b"HEARTBEAT TUNNEL 2001:db8::2 10.100.13.42 1063665852 da46fdc28f568bb62d29661f73758095"
)


def test_readme_worked_example() -> None:
    """SixXS heartbeat README: password "hartslag"."""
    assert compute_digest("2001:db8::2", "10.100.13.42", "1063665852", "hartslag") == (
        "da46fdc28f568bb62d29661f73758095"
    )
    beat = receive(README_BEAT, "hartslag", 1063665852, "10.100.13.42")
    assert isinstance(beat, Heartbeat)
    assert beat.address == ipaddress.IPv6Address("2001:db8::2")
    assert beat.sender == ipaddress.IPv4Address("10.100.13.42")
    assert build("2001:db8::2", "hartslag", 1063665852.7, sender="10.100.13.42") == README_BEAT


def test_aiccu_vector() -> None:
    assert build(ipaddress.IPv6Address("2001:db8:1:1::2"), "tunnelpw", T) == AICCU_BEAT
    beat = receive(AICCU_BEAT, "tunnelpw", T, "192.0.2.7")
    assert isinstance(beat, Heartbeat) and beat.sender is None and beat.epoch == T


def test_trailing_newline_and_uppercase_digest_are_accepted() -> None:
    assert isinstance(receive(AICCU_BEAT + b"\r\n", "tunnelpw", T, "192.0.2.7"), Heartbeat)
    upper = AICCU_BEAT[:-32] + AICCU_BEAT[-32:].upper()
    assert isinstance(receive(upper, "tunnelpw", T, "192.0.2.7"), Heartbeat)


@pytest.mark.parametrize(
    ("datagram", "drop"),
    [
        (b"X" * 256, HeartbeatDrop.TOO_LONG),
        (b"HEARTBEAT TUNNEL \xff", HeartbeatDrop.MALFORMED),
        (b"", HeartbeatDrop.NOT_HEARTBEAT),
        (b"HEARTBEAT TUNNELS 2001:db8::2 sender 1 " + b"0" * 32, HeartbeatDrop.NOT_HEARTBEAT),
        (b"heartbeat tunnel 2001:db8::2 sender 1 " + b"0" * 32, HeartbeatDrop.NOT_HEARTBEAT),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender 1", HeartbeatDrop.MALFORMED),
        (b"HEARTBEAT TUNNEL 2001:db8::2  sender 1 " + b"0" * 32, HeartbeatDrop.MALFORMED),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender 1 " + b"0" * 32 + b" ", HeartbeatDrop.MALFORMED),
        (b"HEARTBEAT TUNNEL 192.0.2.1 sender 1 " + b"0" * 32, HeartbeatDrop.BAD_ADDRESS),
        (b"HEARTBEAT TUNNEL 2001:db8::2 me 1 " + b"0" * 32, HeartbeatDrop.BAD_SENDER),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender -1 " + b"0" * 32, HeartbeatDrop.BAD_TIME),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender 1e9 " + b"0" * 32, HeartbeatDrop.BAD_TIME),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender " + b"9" * 21 + b" " + b"0" * 32,
         HeartbeatDrop.BAD_TIME),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender 1 " + b"0" * 31, HeartbeatDrop.BAD_DIGEST),
        (b"HEARTBEAT TUNNEL 2001:db8::2 sender 1 " + b"g" * 32, HeartbeatDrop.BAD_DIGEST),
    ],
)  # fmt: skip
def test_parse_drops(datagram: bytes, drop: HeartbeatDrop) -> None:
    assert parse(datagram) is drop


def test_verify_drops() -> None:
    def check(datagram: bytes, now: float = T, source: str = "192.0.2.7") -> object:
        return receive(datagram, "tunnelpw", now, source)

    assert check(AICCU_BEAT, now=T + 121) is HeartbeatDrop.CLOCK_SKEW
    assert check(AICCU_BEAT, now=T - 121) is HeartbeatDrop.CLOCK_SKEW
    assert isinstance(check(AICCU_BEAT, now=T + 120), Heartbeat)
    # The account password is not the tunnel secret.
    assert receive(AICCU_BEAT, "secretpass", T, "192.0.2.7") is HeartbeatDrop.BAD_SIGNATURE
    # Changing any signed field breaks the MD5.
    other = AICCU_BEAT.replace(b"1:1::2", b"1:1::3")
    assert check(other) is HeartbeatDrop.BAD_SIGNATURE
    # An explicit sender must be the source.
    explicit = build("2001:db8:1:1::2", "tunnelpw", T, sender="192.0.2.7")
    assert isinstance(check(explicit), Heartbeat)
    assert check(explicit, source="192.0.2.8") is HeartbeatDrop.SENDER_MISMATCH
    assert check(explicit, source="not-an-ip") is HeartbeatDrop.SENDER_MISMATCH


def test_replay_window() -> None:
    window = ReplayWindow()
    assert isinstance(receive(AICCU_BEAT, "tunnelpw", T, "192.0.2.7", replay=window), Heartbeat)
    # The same beat from an attacker's address would move the endpoint: refused.
    assert receive(AICCU_BEAT, "tunnelpw", T + 5, "203.0.113.9", replay=window) is (
        HeartbeatDrop.REPLAYED
    )
    nxt = build("2001:db8:1:1::2", "tunnelpw", T + 60)
    assert isinstance(receive(nxt, "tunnelpw", T + 60, "192.0.2.7", replay=window), Heartbeat)
    # A forged beat does not enter the window.
    forged = build("2001:db8:1:1::2", "guess", T + 61)
    assert receive(forged, "tunnelpw", T + 61, "192.0.2.7", replay=window) is (
        HeartbeatDrop.BAD_SIGNATURE
    )
    assert len(window) == 2
    tiny = ReplayWindow(capacity=1)
    verify_ok = receive(AICCU_BEAT, "tunnelpw", T, "192.0.2.7", replay=tiny)
    assert isinstance(verify_ok, Heartbeat)
    explicit = build("2001:db8:1:1::2", "tunnelpw", T, sender="192.0.2.7")
    assert receive(explicit, "tunnelpw", T, "192.0.2.7", replay=tiny) is (
        HeartbeatDrop.REPLAY_WINDOW_FULL
    )


def test_build_refuses_a_bad_sender() -> None:
    with pytest.raises(ValueError):
        build("2001:db8::2", "pw", T, sender="two words")


@given(
    address=st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    secret=st.text(max_size=40),
    now=st.integers(0, 2**32),
    sender=st.one_of(st.just("sender"), st.integers(0, 2**32 - 1).map(
        lambda n: str(ipaddress.IPv4Address(n)))),
)  # fmt: skip
def test_round_trip(address: ipaddress.IPv6Address, secret: str, now: int, sender: str) -> None:
    datagram = build(address, secret, now, sender=sender)
    source = "192.0.2.1" if sender == "sender" else sender
    beat = parse(datagram)
    assert isinstance(beat, Heartbeat) and beat.address == address and beat.epoch == now
    assert verify(beat, secret, now, source) == beat
    assert verify(beat, secret + "x", now, source) is HeartbeatDrop.BAD_SIGNATURE


@given(st.binary(max_size=300))
def test_fuzz_never_raises(data: bytes) -> None:
    result = receive(data, "tunnelpw", T, "192.0.2.7", replay=ReplayWindow())
    assert isinstance(result, Heartbeat | HeartbeatDrop)


@given(st.text(alphabet="HEARTBEATUNL 0123456789abcdef:.sender\r\n", max_size=120))
def test_fuzz_near_valid_text(text: str) -> None:
    result = receive(text.encode(), "tunnelpw", T, "192.0.2.7")
    assert isinstance(result, Heartbeat | HeartbeatDrop)


def test_package_is_sans_io() -> None:
    banned = {"socket", "asyncio", "time", "os", "random", "secrets", "selectors", "threading"}
    for path in Path(heartbeat.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in banned
