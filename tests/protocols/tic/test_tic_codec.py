"""TIC codec: the auth vector, line framing, list and block formats, pacing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.protocols.tic.helpers import MOCK_TUNNEL

from tunnelbroker.protocols.tic import (
    LineReader,
    LocalProtocolError,
    RemoteProtocolError,
    TicListEntry,
    TicPop,
    TicTunnel,
    challenge_response,
    list_line,
    parse_list_line,
    parse_pop,
    parse_route_line,
    parse_show,
    password_md5,
    pop_lines,
    show_lines,
)
from tunnelbroker.protocols.tic.codec import (
    POP_KEYS,
    ROUTE_KEYS,
    SHOW_KEYS,
    block,
    encode_lines,
    pace,
    parse_reply,
    parse_route,
    route_line,
    route_lines,
)
from tunnelbroker.protocols.tic.messages import TicRoute


def test_auth_vector() -> None:
    """sixxs.md §2.4, measured with AICCU: challenge first, lowercase hex."""
    stored = password_md5("secretpass")
    assert challenge_response("0085d68fcd0dc670304021476a66accd", stored) == (
        "7c2dc3d2d7fbb045c7e54af154b61fa4"
    )
    assert challenge_response("0085d68fcd0dc670304021476a66accd", stored.upper()) == (
        "7c2dc3d2d7fbb045c7e54af154b61fa4"
    )


def test_show_lines_match_the_transcript() -> None:
    assert show_lines(MOCK_TUNNEL) == [
        "TunnelId: T1",
        "Type: ayiya",
        "IPv6 Endpoint: 2001:db8:1:1::2",
        "IPv6 POP: 2001:db8:1:1::1",
        "IPv6 PrefixLength: 64",
        "Tunnel MTU: 1280",
        "Tunnel Name: Mock tunnel",
        "POP Id: mock01",
        "IPv4 Endpoint: ayiya",
        "IPv4 POP: 127.0.0.1",
        "UserState: enabled",
        "AdminState: enabled",
        "Password: tunnelpw",
        "Heartbeat_Interval: 5",
    ]
    assert parse_show(show_lines(MOCK_TUNNEL)) == MOCK_TUNNEL


def test_no_key_is_a_prefix_of_another() -> None:
    """AICCU matches keys by prefix: one key starting with another would overwrite it."""
    for keys in (SHOW_KEYS, POP_KEYS, ROUTE_KEYS):
        for a, b in itertools.permutations(keys, 2):
            assert not b.startswith(a), (a, b)


def test_static_tunnel_has_no_password_line() -> None:
    static = TicTunnel("T2", "6in4-static", "2001:db8::2", "2001:db8::1", 64, "p", "192.0.2.1",
                       "198.51.100.1")  # fmt: skip
    lines = show_lines(static)
    assert not any(line.startswith("Password") for line in lines)
    assert parse_show(lines) == static


def test_show_refuses_values_the_wire_cannot_carry() -> None:
    bad = [
        TicTunnel("T 1", "ayiya", "a", "b", 64, "p", "ayiya", "x", password="pw"),
        TicTunnel("T1", "ayiya", "a", "b", 64, "p", "ayiya", "x", password="pw", name="a\nb"),
        TicTunnel("T1", "ayiya", "a", "b", 64, "p", "ayiya", "x", password=" pw"),
        TicTunnel("T1", "ayiya", "a", "b", 64, "p", "ayiya", "x", password=""),
        TicTunnel("T1", "ayiya", "a", "b", 64, "p", "ayiya", "x", heartbeat_interval=0),
    ]
    for tunnel in bad:
        with pytest.raises(LocalProtocolError):
            show_lines(tunnel)


@pytest.mark.parametrize(
    "lines",
    [
        ["TunnelId: T1"],
        ["TunnelId T1"],
        [line for line in show_lines(MOCK_TUNNEL) if not line.startswith("Password")],
        [line.replace("PrefixLength: 64", "PrefixLength: x") for line in show_lines(MOCK_TUNNEL)],
        [line.replace("Interval: 5", "Interval: 0") for line in show_lines(MOCK_TUNNEL)],
    ],
)
def test_parse_show_refuses(lines: list[str]) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_show(lines)


def test_parse_show_ignores_unknown_keys_and_case_differences() -> None:
    lines = show_lines(MOCK_TUNNEL) + ["Extra: 1", "ipv6 pop: 2001:db8::bad"]
    assert parse_show(lines) == MOCK_TUNNEL


def test_list_lines() -> None:
    assert list_line(MOCK_TUNNEL) == "T1 2001:db8:1:1::2 ayiya mock01"
    assert parse_list_line("T1 2001:db8:1:1::2 ayiya mock01") == TicListEntry(
        "T1", "2001:db8:1:1::2", "ayiya", "mock01"
    )
    for bad in ["T1  2001:db8:1:1::2 ayiya mock01", "T1 2001:db8:1:1::2 ayiya mock01 ",
                "T1 2001:db8:1:1::2 ayiya"]:  # fmt: skip
        with pytest.raises(RemoteProtocolError):
            parse_list_line(bad)
    with pytest.raises(LocalProtocolError):
        list_line(TicListEntry("T1", "", "ayiya", "p"))


def test_route_and_pop() -> None:
    route = TicRoute("R1", "T1", "2001:db8:100::/48")
    assert parse_route_line(route_line(route)) == route
    with pytest.raises(RemoteProtocolError):
        parse_route_line("R1 T1")
    pop = TicPop("mock01", "Amsterdam", "NL", "192.0.2.1", "2001:db8::1", "EX", "Example BV",
                 "https://example.net", "64496", "nl.example")  # fmt: skip
    assert pop_lines(pop)[0] == "POPId: mock01"
    assert parse_pop(pop_lines(pop)) == pop
    with pytest.raises(RemoteProtocolError):
        parse_pop(["City: x"])


def test_route_show_lines() -> None:
    """``route show``: route list's three fields as ``tunnel show``-style keys."""
    route = TicRoute("R1", "T1", "2001:db8:100::/48")
    assert route_lines(route) == [
        "RouteId: R1",
        "TunnelId: T1",
        "Route Prefix: 2001:db8:100::/48",
    ]
    assert parse_route(route_lines(route)) == route
    assert parse_route([*route_lines(route), "Extra: 1"]) == route
    for bad in (TicRoute("R 1", "T1", "p"), TicRoute("R1", "", "p"), TicRoute("R1", "T1", "a\nb")):
        with pytest.raises(LocalProtocolError):
            route_lines(bad)
    for lines in (route_lines(route)[:2], ["RouteId: R1", "TunnelId: T1", "Route Prefix: a b"]):
        with pytest.raises(RemoteProtocolError):
            parse_route(lines)


@given(route_id=st.text(min_size=1, max_size=30), tunnel_id=st.text(min_size=1, max_size=30),
       prefix=st.text(min_size=1, max_size=50))  # fmt: skip
def test_route_show_round_trip_or_local_error(route_id: str, tunnel_id: str, prefix: str) -> None:
    """Anything the wire can carry round-trips; anything else is refused before sending."""
    route = TicRoute(route_id, tunnel_id, prefix)
    try:
        lines = route_lines(route)
    except LocalProtocolError:
        assert any(not v or any(c.isspace() for c in v) for v in (route_id, tunnel_id, prefix))
        return
    assert parse_route(lines) == route


def test_line_reader() -> None:
    reader = LineReader(max_line=16)
    reader.feed(b"get unix")
    assert reader.next_line() is None
    reader.feed(b"time\r\nQUIT\n")
    assert reader.next_line() == "get unixtime"
    assert reader.next_line() == "QUIT"
    assert reader.next_line() is None
    reader.feed(b"x" * 15 + b"\n")
    assert reader.next_line() == "x" * 15
    reader.feed(b"x" * 16)
    with pytest.raises(RemoteProtocolError) as e:
        reader.next_line()
    assert e.value.fatal
    bad = LineReader()
    bad.feed(b"\xff\n")
    with pytest.raises(RemoteProtocolError):
        bad.next_line()


def test_encode_and_block_limits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_lines(["a\nb"])
    with pytest.raises(LocalProtocolError):
        encode_lines(["x" * 1023])
    assert encode_lines(["x" * 1022]) == b"x" * 1022 + b"\n"
    with pytest.raises(LocalProtocolError):
        block("start", ["202 sneaky"], "end")


def test_pace_keeps_aiccus_burst_limit() -> None:
    """40 tunnels (~1,300 bytes) made AICCU fail in one write (sixxs.md §2.9)."""
    lines = block("Listing tunnels", [f"T{i} 2001:db8:{i}::2 ayiya mock01" for i in range(40)],
                  "<tunnel_list>")  # fmt: skip
    whole = encode_lines(lines)
    assert len(whole) > 1014
    writes = pace(lines)
    assert b"".join(writes) == whole
    assert all(len(w) <= 480 for w in writes)
    assert all(len(a) + len(b) <= 1014 for a, b in itertools.pairwise(writes))
    assert pace(["x" * 600, "y"], burst=100) == [b"x" * 600 + b"\n", b"y\n"]


def test_parse_reply() -> None:
    assert parse_reply("200 1795323171") == (200, "1795323171")
    assert parse_reply("202") == (202, "")
    for bad in ["20", "2000 x", "abc x", ""]:
        with pytest.raises(RemoteProtocolError):
            parse_reply(bad)


safe_word = st.text(
    alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]), min_size=1,
    max_size=30,
).filter(lambda s: not any(c.isspace() for c in s))  # fmt: skip


@given(
    tunnel_id=safe_word, type_=safe_word, ep6=safe_word, pop6=safe_word, ep4=safe_word,
    pop4=safe_word, pop_id=safe_word, password=safe_word, plen=st.integers(0, 128),
    interval=st.integers(1, 10**6), mtu=st.integers(0, 10**6),
    name=st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]),
                 max_size=40).map(str.strip),
)  # fmt: skip
def test_show_round_trip(
    tunnel_id: str, type_: str, ep6: str, pop6: str, ep4: str, pop4: str, pop_id: str,
    password: str, plen: int, interval: int, mtu: int, name: str,
) -> None:  # fmt: skip
    tunnel = TicTunnel(tunnel_id, type_, ep6, pop6, plen, pop_id, ep4, pop4, password=password,
                       heartbeat_interval=interval, mtu=mtu, name=name)  # fmt: skip
    assert parse_show(show_lines(tunnel)) == tunnel
    assert parse_list_line(list_line(tunnel)) == TicListEntry(tunnel_id, ep6, ep4, pop_id)


@given(st.lists(st.text(max_size=60), max_size=20))
def test_parsers_fail_only_with_remote_protocol_error(lines: list[str]) -> None:
    for parse in (parse_show, parse_pop, parse_route):
        try:
            parse(lines)
        except RemoteProtocolError:
            pass
    for line in lines:
        for one in (parse_list_line, parse_route_line, parse_reply):
            try:
                one(line)
            except RemoteProtocolError:
                pass


@given(st.lists(st.binary(max_size=80), max_size=20))
def test_line_reader_fuzz(chunks: list[bytes]) -> None:
    reader = LineReader(max_line=64)
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            try:
                line = reader.next_line()
            except RemoteProtocolError:
                reader.clear()
                break
            if line is None:
                break
            assert "\n" not in line and len(line.encode()) < 64


def test_package_is_sans_io() -> None:
    import ast
    from pathlib import Path

    import tunnelbroker.protocols.tic as tic

    banned = {"socket", "asyncio", "time", "os", "random", "secrets", "selectors", "ssl"}
    files = sorted(Path(tic.__file__).parent.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
                assert not name.startswith(("tunnelbroker.store", "tunnelbroker.broker"))
    for name in tic.__all__:
        assert hasattr(tic, name)
