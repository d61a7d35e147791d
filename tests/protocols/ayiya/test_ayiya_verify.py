"""AYIYA receive-side checks, the replay window, links back to back and endpoint learning."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tunnelbroker.protocols.ayiya as ayiya
from tunnelbroker.protocols.ayiya import (
    AyiyaDrop,
    AyiyaLink,
    AyiyaPacket,
    OpCode,
    ReplayCache,
    ReplayWindow,
    Role,
    Verdict,
    build_noop,
    decode,
    encode,
    signing_key,
    verify,
)

CLIENT = ipaddress.IPv6Address("2001:db8:1:1::2")
POP = ipaddress.IPv6Address("2001:db8:1:1::1")
KEY = signing_key("tunnelpw")
T = 1700000000


def ipv6(n: int = 0) -> bytes:
    body = n.to_bytes(4, "big")
    return bytes([0x60, 0, 0, 0, 0, len(body), 59, 64]) + CLIENT.packed + POP.packed + body


def pair() -> tuple[AyiyaLink, AyiyaLink]:
    client = AyiyaLink("tunnelpw", role=Role.CLIENT, local=CLIENT, remote=POP)
    server = AyiyaLink("tunnelpw", role=Role.SERVER, local=POP, remote=CLIENT)
    return client, server


def test_links_back_to_back() -> None:
    client, server = pair()
    noop = server.receive(client.noop(T), T)
    assert isinstance(noop, AyiyaPacket) and noop.opcode is OpCode.NOOP
    up = server.receive(client.forward(ipv6(1), T), T)
    assert isinstance(up, AyiyaPacket) and up.forwards and up.payload == ipv6(1)
    down = client.receive(server.forward(ipv6(2), T + 1), T + 1)
    assert isinstance(down, AyiyaPacket) and down.payload == ipv6(2) and down.identity == POP


def test_client_drops_noop_from_the_pop() -> None:
    client, server = pair()
    assert client.receive(server.noop(T), T) is AyiyaDrop.BAD_OPCODE


@pytest.mark.parametrize("opcode", [OpCode.ECHO_RESPONSE, OpCode.MOTD, OpCode.QUERY_REQUEST])
def test_unused_opcodes_are_dropped_by_both_sides(opcode: OpCode) -> None:
    client, server = pair()
    assert server.receive(encode(opcode, 59, T, CLIENT, b"", KEY), T) is AyiyaDrop.BAD_OPCODE
    assert client.receive(encode(opcode, 59, T, POP, b"", KEY), T) is AyiyaDrop.BAD_OPCODE


def test_echo_requests_are_accepted_and_only_3_forwards() -> None:
    _, server = pair()
    two = server.receive(encode(OpCode.ECHO_REQUEST, 41, T, CLIENT, ipv6(), KEY), T)
    three = server.receive(encode(OpCode.ECHO_REQUEST_FORWARD, 41, T, CLIENT, ipv6(), KEY), T)
    assert isinstance(two, AyiyaPacket) and not two.forwards
    assert isinstance(three, AyiyaPacket) and three.forwards


def test_wrong_identity() -> None:
    client, server = pair()
    # The PoP's own address, or another client's, is not this tunnel's client.
    assert server.receive(build_noop(POP, KEY, T), T) is AyiyaDrop.WRONG_IDENTITY
    other = ipaddress.IPv6Address("2001:db8:1:2::2")
    assert server.receive(build_noop(other, KEY, T), T) is AyiyaDrop.WRONG_IDENTITY
    # AICCU: "Received packet from a wrong identity".
    assert client.receive(encode(OpCode.FORWARD, 41, T, CLIENT, ipv6(), KEY), T) is (
        AyiyaDrop.WRONG_IDENTITY
    )


@pytest.mark.parametrize(("skew", "ok"), [(0, True), (120, True), (-120, True), (121, False),
                                           (-121, False), (10**6, False)])  # fmt: skip
def test_clock_window(skew: int, ok: bool) -> None:
    client, server = pair()
    result = server.receive(client.noop(T + skew), T + 0.5 if skew >= 0 else T)
    assert isinstance(result, AyiyaPacket) is ok
    if not ok:
        assert result is AyiyaDrop.CLOCK_SKEW


def test_wrong_secret_is_a_bad_signature() -> None:
    _, server = pair()
    assert server.receive(build_noop(CLIENT, signing_key("other"), T), T) is (
        AyiyaDrop.BAD_SIGNATURE
    )


def test_exact_replay_is_dropped_but_same_second_traffic_passes() -> None:
    client, server = pair()
    datagrams = [client.forward(ipv6(i), T) for i in range(50)]
    assert all(isinstance(server.receive(d, T), AyiyaPacket) for d in datagrams)
    # The same datagram again, seconds later and within the clock window: a replay.
    assert server.receive(datagrams[7], T + 100) is AyiyaDrop.REPLAYED
    # AICCU's three start-up NOOPs in one second are identical: one counts, two are replays.
    noops = [client.noop(T + 1) for _ in range(3)]
    results = [server.receive(n, T + 1) for n in noops]
    assert isinstance(results[0], AyiyaPacket)
    assert results[1:] == [AyiyaDrop.REPLAYED, AyiyaDrop.REPLAYED]


def test_clock_step_back_is_accepted() -> None:
    """Epochs need not increase: a client whose clock is stepped back keeps working."""
    client, server = pair()
    assert isinstance(server.receive(client.noop(T + 110), T), AyiyaPacket)
    assert isinstance(server.receive(client.noop(T - 110), T), AyiyaPacket)
    assert isinstance(server.receive(client.forward(ipv6(), T + 5), T), AyiyaPacket)


def test_forged_datagrams_do_not_enter_the_window() -> None:
    _, server = pair()
    for i in range(100):
        assert server.receive(build_noop(CLIENT, signing_key(str(i)), T), T) is (
            AyiyaDrop.BAD_SIGNATURE
        )
    assert len(server.replay) == 0


def test_verify_without_replay_window_is_sixxsd_behaviour() -> None:
    packet = decode(build_noop(CLIENT, KEY, T))
    assert isinstance(packet, AyiyaPacket)
    for _ in range(3):
        result = verify(packet, KEY, T, role=Role.SERVER, peer_identity=CLIENT)
        assert result is packet


def test_replay_window_spans_the_clock_window() -> None:
    window = ReplayWindow()
    assert window.check_and_record(T, b"a" * 20) is Verdict.ACCEPTED
    # 239 s newer still remembers T; 241 s newer forgets it (the clock check covers it).
    assert window.check_and_record(T + 239, b"b" * 20) is Verdict.ACCEPTED
    assert window.check_and_record(T, b"a" * 20) is Verdict.REPLAYED
    assert window.check_and_record(T + 241, b"c" * 20) is Verdict.ACCEPTED
    assert window.check_and_record(T, b"a" * 20) is Verdict.STALE
    assert len(window) == 2


def test_replay_window_sheds_old_seconds_under_pressure() -> None:
    window = ReplayWindow(capacity=4)
    for i in range(4):
        assert window.check_and_record(T + i, bytes([i]) * 20) is Verdict.ACCEPTED
    assert window.check_and_record(T + 4, b"\x04" * 20) is Verdict.ACCEPTED
    assert window.floor == T + 1 and len(window) == 4
    # Forgotten seconds are refused: a replay among them would pass otherwise.
    assert window.check_and_record(T, b"\x00" * 20) is Verdict.STALE
    assert window.check_and_record(T + 1, b"\x01" * 20) is Verdict.REPLAYED


def test_replay_window_full_second() -> None:
    window = ReplayWindow(capacity=3)
    assert [window.check_and_record(T, bytes([i]) * 20) for i in range(4)] == [
        Verdict.ACCEPTED,
        Verdict.ACCEPTED,
        Verdict.ACCEPTED,
        Verdict.FULL,
    ]
    # An older second cannot push out a newer one.
    window2 = ReplayWindow(capacity=2)
    window2.check_and_record(T + 5, b"a" * 20)
    window2.check_and_record(T + 5, b"b" * 20)
    assert window2.check_and_record(T + 4, b"c" * 20) is Verdict.FULL
    # A newer one sheds the older second.
    assert window2.check_and_record(T + 6, b"d" * 20) is Verdict.ACCEPTED
    with pytest.raises(ValueError):
        ReplayWindow(capacity=0)


def test_a_busy_tunnel_is_never_stopped_by_its_replay_cache() -> None:
    """More datagrams in one second than any window could hold all pass, in 8 KiB."""
    client, server = pair()
    n = 40_000
    results = [server.receive(client.forward(ipv6(i), T), T) for i in range(n)]
    assert all(isinstance(r, AyiyaPacket) for r in results)
    assert server.replay.slots == 1024 and len(server.replay) <= 1024
    assert server.replay.newest == T


def test_replays_of_recent_datagrams_are_caught_in_a_busy_flow() -> None:
    client, server = pair()
    sent = [client.forward(ipv6(i), T) for i in range(2000)]
    for d in sent:
        assert isinstance(server.receive(d, T), AyiyaPacket)
    # A datagram is caught while no later one took its slot: the last one always, and
    # nearly all of the last 20 (each of 1,024 slots is hit with chance 1/1024 per datagram).
    assert server.receive(sent[-1], T + 1) is AyiyaDrop.REPLAYED
    again = [server.receive(d, T + 1) for d in sent[-20:]]
    assert sum(r is AyiyaDrop.REPLAYED for r in again) >= 18
    # What was not caught is delivered as the duplicate IP packet it is.
    assert all(r is AyiyaDrop.REPLAYED or isinstance(r, AyiyaPacket) for r in again)


def test_a_replay_from_elsewhere_cannot_move_the_tunnel() -> None:
    client, server = pair()
    old = client.forward(ipv6(1), T)
    assert isinstance(server.receive(old, T), AyiyaPacket)
    # Evicted from the table by later traffic, the old datagram no longer looks replayed, but
    # from a new address it is not newer than what was accepted: it cannot move the tunnel.
    for i in range(5000):
        server.receive(client.forward(ipv6(i + 2), T + 2), T + 2)
    packet = decode(old)
    assert isinstance(packet, AyiyaPacket) and not server.replay.seen(packet.signature)
    assert server.verify(packet, T + 2, moving=True) is AyiyaDrop.STALE_MOVE
    # Same second as the newest is not newer either (a NAT rebinding waits for the next one).
    same = decode(client.forward(ipv6(9000), T + 2))
    assert isinstance(same, AyiyaPacket)
    assert server.verify(same, T + 2, moving=True) is AyiyaDrop.STALE_MOVE
    # A genuinely newer datagram moves it; from the endpoint itself old epochs still pass.
    newer = decode(client.noop(T + 3))
    assert isinstance(newer, AyiyaPacket)
    assert server.verify(newer, T + 3, moving=True) is newer
    late = decode(client.forward(ipv6(9001), T - 50))
    assert isinstance(late, AyiyaPacket) and server.verify(late, T + 3) is late


def test_replay_cache_arguments() -> None:
    for bad in (0, 3, 65537 * 2):
        with pytest.raises(ValueError):
            ReplayCache(bad)
    cache = ReplayCache(1)
    assert len(cache) == 0 and not cache.seen(b"a" * 20)
    assert cache.check_and_record(T, b"a" * 20) is Verdict.ACCEPTED
    assert cache.check_and_record(T, b"a" * 20) is Verdict.REPLAYED
    assert cache.check_and_record(T - 5, b"b" * 20) is Verdict.ACCEPTED  # evicts "a"
    assert cache.newest == T and len(cache) == 1 and not cache.seen(b"a" * 20)


@given(st.lists(st.binary(min_size=20, max_size=20), max_size=300))
def test_replay_cache_never_accepts_a_digest_still_held(digests: list[bytes]) -> None:
    cache = ReplayCache(16)
    for d in digests:
        held = cache.seen(d)
        verdict = cache.check_and_record(T, d)
        assert (verdict is Verdict.REPLAYED) is held
        assert cache.seen(d) or d[:8] == bytes(8)
    assert len(cache) <= 16


@given(st.lists(st.tuples(st.integers(-130, 130), st.integers(0, 5)), max_size=60))
def test_replay_window_never_accepts_twice(events: list[tuple[int, int]]) -> None:
    window = ReplayWindow(capacity=8)
    accepted: set[tuple[int, int]] = set()
    for epoch, n in events:
        digest = bytes([n]) * 20
        verdict = window.check_and_record(T + epoch, digest)
        if verdict is Verdict.ACCEPTED:
            assert (epoch, n) not in accepted
            accepted.add((epoch, n))
        elif (epoch, n) not in accepted:
            assert verdict is not Verdict.REPLAYED
    assert len(window) <= 8


@given(st.binary(max_size=200), st.sampled_from(list(Role)))
def test_fuzz_link_receive_never_raises(data: bytes, role: Role) -> None:
    link = AyiyaLink("tunnelpw", role=role, local=POP, remote=CLIENT)
    assert isinstance(link.receive(data, T), AyiyaPacket | AyiyaDrop)


BANNED = {"socket", "asyncio", "time", "os", "random", "secrets", "selectors", "threading"}


def test_package_is_sans_io() -> None:
    files = sorted(Path(ayiya.__file__).parent.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"
                assert not name.startswith(("tunnelbroker.store", "tunnelbroker.broker"))
    for name in ayiya.__all__:
        assert hasattr(ayiya, name)
