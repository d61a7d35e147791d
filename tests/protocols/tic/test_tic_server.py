"""The TIC server machine: AICCU's transcript, stages, failures, limits, pacing, fuzzing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.protocols.tic.helpers import CHALLENGE, T, backend, server

from tunnelbroker.protocols.tic import (
    Closed,
    ErrorSent,
    LocalProtocolError,
    LoginFailed,
    LoginSucceeded,
    MemoryBackend,
    StartTls,
    State,
    TicPop,
    TicRoute,
    TicServer,
    TicTunnel,
)
from tunnelbroker.protocols.tic.events import Event

RESPONSE = "7c2dc3d2d7fbb045c7e54af154b61fa4"


def talk(srv: TicServer, line: str, now: float = T) -> list[str]:
    srv.receive_data(line.encode() + b"\n", now)
    return b"".join(srv.data_to_send()).decode().splitlines()


def events(srv: TicServer) -> list[Event]:
    out = []
    while (ev := srv.next_event()) is not None:
        out.append(ev)
    return out


def login(srv: TicServer) -> None:
    srv.data_to_send()
    for line in ("username TEST-SIXXS", "challenge md5", f"authenticate md5 {RESPONSE}"):
        assert talk(srv, line)[0].startswith("200")
    assert srv.state is State.LOGGED_IN
    events(srv)


def test_aiccu_transcript() -> None:
    """sixxs.md §2.2, AICCU 2007.01.15 (GnuTLS build) against a server without TLS."""
    srv = server()
    greeting = b"".join(srv.data_to_send()).decode()
    assert greeting == "200 tunnelbroker TIC Service on mock ready\n"
    assert talk(srv, "client TIC/draft-00 AICCU/2007.01.15-console-linux Linux/6.18.44") == [
        "200 Client Identity accepted"
    ]
    assert talk(srv, "get unixtime") == ["200 1795323171"]
    assert talk(srv, "starttls") == ["400 This service is not SSL enabled (yet)"]
    assert talk(srv, "username TEST-SIXXS") == ["200 Choose your authentication challenge please"]
    assert talk(srv, "challenge md5") == [f"200 {CHALLENGE}"]
    assert talk(srv, f"authenticate md5 {RESPONSE}") == [
        "200 Succesfully logged in using md5 as TEST-SIXXS from 127.0.0.1"
    ]
    assert talk(srv, "tunnel list") == [
        "201 Listing tunnels",
        "T1 2001:db8:1:1::2 ayiya mock01",
        "202 <tunnel_list>",
    ]
    show = talk(srv, "tunnel show T1")
    assert show[0] == "201 Showing tunnel information for T1" and show[-1] == "202 Done"
    assert "Password: tunnelpw" in show and "Heartbeat_Interval: 5" in show
    assert talk(srv, "QUIT My Autumn's Done Come")[0].startswith("200")
    assert srv.closed
    evs = events(srv)
    assert LoginSucceeded("TEST-SIXXS") in evs
    assert evs[-1] == Closed("quit: My Autumn's Done Come")


def test_crlf_lines_and_case_insensitive_verbs() -> None:
    srv = server()
    srv.data_to_send()
    srv.receive_data(b"GET UNIXTIME\r\nUsername TEST-SIXXS\r\n", T)
    assert b"".join(srv.data_to_send()).decode().splitlines() == [
        "200 1795323171",
        "200 Choose your authentication challenge please",
    ]


def test_byte_by_byte_is_the_same_as_whole() -> None:
    script = b"client x\nget unixtime\nusername TEST-SIXXS\nchallenge md5\n"
    script += f"authenticate md5 {RESPONSE}\ntunnel list\ntunnel show T1\nQUIT bye\n".encode()
    whole = server()
    whole.receive_data(script, T)
    one = server()
    for i in range(len(script)):
        one.receive_data(script[i : i + 1], T)
    assert b"".join(whole.data_to_send()) == b"".join(one.data_to_send())
    assert whole.closed and one.closed


@pytest.mark.parametrize(
    ("script", "answer"),
    [
        (["tunnel list"], "400 Command not allowed at this stage: tunnel list"),
        (["tunnel show T1"], "400 Command not allowed at this stage: tunnel show"),
        (["challenge md5"], "400 Command not allowed at this stage: challenge"),
        (["authenticate md5 " + RESPONSE], "400 Command not allowed at this stage: authenticate"),
        (["username TEST-SIXXS", "authenticate md5 " + RESPONSE],
         "400 Command not allowed at this stage: authenticate"),
        (["username TEST-SIXXS", "tunnel list"],
         "400 Command not allowed at this stage: tunnel list"),
        (["username TEST-SIXXS", "challenge md5", "username other"],
         "400 Command not allowed at this stage: username"),
        (["username TEST-SIXXS", "challenge clear"], "400 Only the md5 challenge is supported"),
        (["username TEST-SIXXS", "challenge md5", "authenticate clear secretpass"],
         "400 Only md5 authentication is supported"),
        (["username"], "400 username needs one name"),
        (["username a b"], "400 username needs one name"),
        (["username " + "a" * 65], "400 username needs one name"),
        (["client"], "400 client needs an identification"),
        (["username TEST\x1b[2J"], "400 username needs one name"),
        (["username TEST-SIXXS", "challenge md5", "authenticate md5 \u00e9\u00e9"],
         "400 Authentication failed"),
        (["helo"], "400 Unknown command"),
        (["tunnel"], "400 Unknown command"),
        (["tunnel delete T1"], "400 Unknown command"),
    ],
)  # fmt: skip
def test_out_of_order_and_unknown_commands(script: list[str], answer: str) -> None:
    srv = server()
    srv.data_to_send()
    for line in script[:-1]:
        talk(srv, line)
    assert talk(srv, script[-1]) == [answer]
    assert not srv.closed
    assert isinstance(events(srv)[-1], ErrorSent)


def test_logged_in_refuses_the_login_stages() -> None:
    srv = server()
    login(srv)
    for line in ("username TEST-SIXXS", "challenge md5", "starttls", "client again"):
        assert talk(srv, line)[0].startswith("400 Command not allowed")
    assert talk(srv, "get unixtime", now=T + 5) == ["200 1795323176"]


def test_blank_lines_are_ignored() -> None:
    srv = server()
    srv.data_to_send()
    assert talk(srv, "   ") == []
    assert srv.errors == 0


def test_wrong_password_is_counted_and_the_challenge_is_single_use() -> None:
    srv = server()
    srv.data_to_send()
    talk(srv, "username TEST-SIXXS")
    talk(srv, "challenge md5")
    assert talk(srv, "authenticate md5 " + "0" * 32) == ["400 Authentication failed"]
    assert LoginFailed("TEST-SIXXS", "wrong password or unknown user") in events(srv)
    assert srv.state is State.INITIAL and srv.failures == 1
    # The right answer to the used challenge is refused too: a new login is needed.
    assert talk(srv, "authenticate md5 " + RESPONSE)[0].startswith("400 Command not allowed")
    for line in ("username TEST-SIXXS", "challenge md5"):
        talk(srv, line)
    assert talk(srv, "authenticate md5 " + RESPONSE.upper())[0].startswith("200 Succesfully")


def test_unknown_user_looks_like_a_wrong_password() -> None:
    srv = server()
    srv.data_to_send()
    talk(srv, "username NOBODY")
    assert talk(srv, "challenge md5") == [f"200 {CHALLENGE}"]
    assert talk(srv, "authenticate md5 " + RESPONSE) == ["400 Authentication failed"]


def test_disabled_account_cannot_log_in() -> None:
    b = backend()
    b.users["TEST-SIXXS"].enabled = False
    srv = server(b)
    srv.data_to_send()
    talk(srv, "username TEST-SIXXS")
    talk(srv, "challenge md5")
    assert talk(srv, "authenticate md5 " + RESPONSE) == ["400 Authentication failed"]
    assert LoginFailed("TEST-SIXXS", "account disabled") in events(srv)


def test_three_failures_close_the_session() -> None:
    srv = server()
    srv.data_to_send()
    for _ in range(3):
        talk(srv, "username TEST-SIXXS")
        talk(srv, "challenge md5")
        talk(srv, "authenticate md5 " + "f" * 32)
    assert srv.closed
    assert events(srv)[-1] == Closed("too many failed logins")


def test_too_many_errors_close_the_session() -> None:
    srv = server(max_errors=3)
    srv.data_to_send()
    talk(srv, "a")
    talk(srv, "b")
    assert not srv.closed
    talk(srv, "c")
    assert srv.closed


def test_each_challenge_is_fresh() -> None:
    draws = iter([b"\x01" * 16, b"\x02" * 16])
    srv = TicServer(server().settings, backend(), peer="::1", now=T,
                    random_bytes=lambda n: next(draws))  # fmt: skip
    srv.data_to_send()
    talk(srv, "username TEST-SIXXS")
    assert talk(srv, "challenge md5") == ["200 " + "01" * 16]
    assert talk(srv, "challenge md5") == ["200 " + "02" * 16]


def test_starttls() -> None:
    srv = server(tls_available=True)
    srv.data_to_send()
    assert talk(srv, "starttls") == ["200 Starting TLS"]
    assert srv.state is State.TLS_PENDING and StartTls() in events(srv)
    srv.tls_started()
    assert srv.tls and srv.state is State.INITIAL
    assert talk(srv, "starttls") == ["400 TLS is already active"]
    with pytest.raises(LocalProtocolError):
        srv.tls_started()


def test_plaintext_behind_starttls_is_refused() -> None:
    """Command injection: bytes pipelined after starttls must not count as encrypted."""
    srv = server(tls_available=True)
    srv.data_to_send()
    srv.receive_data(b"starttls\nusername TEST-SIXXS\n", T)
    assert b"".join(srv.data_to_send()) == b"400 Data after starttls\n"
    assert srv.closed


def test_data_while_tls_is_pending_closes() -> None:
    srv = server(tls_available=True)
    talk(srv, "starttls")
    srv.receive_data(b"get unixtime\n", T)
    assert srv.closed


def test_oversize_and_binary_lines_close() -> None:
    srv = server()
    srv.data_to_send()
    srv.receive_data(b"x" * 2000, T)
    assert b"".join(srv.data_to_send()) == b"400 Line too long\n" and srv.closed
    srv2 = server()
    srv2.data_to_send()
    srv2.receive_data(b"get \xff\xfe\n", T)
    assert srv2.closed
    srv2.receive_data(b"get unixtime\n", T)
    assert srv2.data_to_send() == [b"400 Line is not UTF-8\n"]


def test_idle_timeout() -> None:
    srv = server(idle_timeout=60)
    srv.data_to_send()
    talk(srv, "get unixtime", now=T + 10)
    assert srv.get_timer() == T + 70
    srv.handle_timer(T + 69)
    assert not srv.closed
    srv.handle_timer(T + 70)
    assert srv.closed and srv.get_timer() is None
    assert srv.data_to_send() == [b"400 Idle timeout, closing connection\n"]


def test_close_from_the_io_layer() -> None:
    srv = server()
    srv.data_to_send()
    srv.close("rate limited", "Too many failed logins from your address")
    assert srv.data_to_send() == [b"400 Too many failed logins from your address\n"]
    assert srv.closed and events(srv)[-1] == Closed("rate limited")
    srv.receive_data(b"get unixtime\n", T)
    assert srv.data_to_send() == []


def test_long_listing_is_paced() -> None:
    tunnels = [
        TicTunnel(f"T{i}", "ayiya", f"2001:db8:{i}::2", f"2001:db8:{i}::1", 64, "mock01",
                  "ayiya", "192.0.2.1", password="pw")
        for i in range(40)
    ]  # fmt: skip
    srv = server(backend(*tunnels))
    login(srv)
    srv.receive_data(b"tunnel list\n", T)
    writes = srv.data_to_send()
    assert len(writes) >= 3 and all(len(w) <= 480 for w in writes)
    lines = b"".join(writes).decode().splitlines()
    assert len(lines) == 42 and lines[0].startswith("201") and lines[-1].startswith("202")


def test_unknown_tunnel_and_pop() -> None:
    srv = server()
    login(srv)
    assert talk(srv, "tunnel show T2") == ["400 Unknown tunnel"]
    assert talk(srv, "tunnel show") == ["400 tunnel show needs a TunnelId"]
    assert talk(srv, "pop show nowhere") == ["400 Unknown PoP"]
    assert talk(srv, "pop show") == ["400 pop show needs a POPId"]


def test_routes_and_pops() -> None:
    b = backend()
    b.users["TEST-SIXXS"].routes.append(TicRoute("R1", "T1", "2001:db8:100::/48"))
    b.pop_list.append(TicPop("mock01", city="Amsterdam", country="NL"))
    srv = server(b)
    login(srv)
    assert talk(srv, "route list") == ["201 Listing routes", "R1 T1 2001:db8:100::/48",
                                       "202 <route_list>"]  # fmt: skip
    assert talk(srv, "pop list") == ["201 Listing PoPs", "mock01", "202 <pop_list>"]
    show = talk(srv, "pop show mock01")
    assert show[1:4] == ["POPId: mock01", "City: Amsterdam", "Country: NL"]


def test_route_show() -> None:
    """``route show <RouteId>`` (sixxs.md §2.3): a 201/202 block of the account's route."""
    b = backend()
    b.users["TEST-SIXXS"].routes.append(TicRoute("R1", "T1", "2001:db8:100::/48"))
    other = b.add_user("OTHER-SIXXS", "otherpass")
    other.routes.append(TicRoute("R2", "T2", "2001:db8:200::/48"))
    srv = server(b)
    srv.data_to_send()
    assert talk(srv, "route show R1") == ["400 Command not allowed at this stage: route show"]
    login(srv)
    assert talk(srv, "route show R1") == [
        "201 Showing route information for R1",
        "RouteId: R1",
        "TunnelId: T1",
        "Route Prefix: 2001:db8:100::/48",
        "202 Done",
    ]
    # Another account's route is as unknown as one that does not exist.
    assert talk(srv, "route show R2") == ["400 Unknown route"]
    assert talk(srv, "route show R9") == ["400 Unknown route"]
    assert talk(srv, "ROUTE SHOW r1") == ["400 Unknown route"]  # ids are case-sensitive
    assert talk(srv, "route show") == ["400 route show needs a RouteId"]
    assert talk(srv, "route show R1 R2") == ["400 route show needs a RouteId"]
    assert [e for e in events(srv) if isinstance(e, ErrorSent)][-1].command == "route show"
    assert not srv.closed


class BrokenRoutes(MemoryBackend):
    def routes(self, username: str) -> Sequence[TicRoute]:
        raise RuntimeError("routes table gone")


def test_route_show_backend_failure_is_a_400(caplog: pytest.LogCaptureFixture) -> None:
    b = BrokenRoutes()
    b.add_user("TEST-SIXXS", "secretpass")
    srv = server(b)
    login(srv)
    assert talk(srv, "route show R1") == ["400 Internal error"]
    assert "routes table gone" in caplog.text and not srv.closed


def test_route_show_value_the_wire_cannot_carry() -> None:
    b = backend()
    b.users["TEST-SIXXS"].routes.append(TicRoute("R1", "T1", "2001:db8:100::/48 extra"))
    srv = server(b)
    login(srv)
    assert talk(srv, "route show R1") == ["400 Internal error"]


class BrokenBackend(MemoryBackend):
    def tunnels(self, username: str) -> Sequence[TicTunnel]:
        raise RuntimeError("database gone")


def test_backend_failure_is_a_400_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    b = BrokenBackend()
    b.add_user("TEST-SIXXS", "secretpass")
    srv = server(b)
    login(srv)
    assert talk(srv, "tunnel list") == ["400 Internal error"]
    assert talk(srv, "get unixtime") == ["200 1795323171"]
    assert "database gone" in caplog.text


def test_backend_value_the_wire_cannot_carry() -> None:
    bad = TicTunnel("T 1", "ayiya", "a", "b", 64, "p", "ayiya", "x", password="pw")
    srv = server(backend(bad))
    login(srv)
    assert talk(srv, "tunnel list") == ["400 Internal error"]


def test_pipelining_without_reading_is_cut_off() -> None:
    srv = server()
    srv.data_to_send()
    srv.receive_data(b"get unixtime\n" * 5000, T)
    assert srv.closed
    assert sum(len(w) for w in srv.data_to_send()) < 70000


COMMANDS = [
    "client x", "get unixtime", "starttls", "username TEST-SIXXS", "username x",
    "challenge md5", f"authenticate md5 {RESPONSE}", "authenticate md5 00", "tunnel list",
    "tunnel show T1", "tunnel show", "route list", "route show R1", "route show", "pop list",
    "pop show x", "QUIT", "junk",
    "", "x" * 1100,
]  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(COMMANDS), st.text(max_size=30),
                          st.text(max_size=30).map(lambda t: f"authenticate md5 {t}")),
                max_size=25),
       st.booleans())  # fmt: skip
def test_any_command_sequence(lines: list[str], tls: bool) -> None:
    srv = server(tls_available=tls)
    lines = ["username TEST-SIXXS", "challenge md5", *lines]
    for line in lines:
        srv.receive_data(line.encode() + b"\n", T)
        while (ev := srv.next_event()) is not None:
            if isinstance(ev, StartTls):
                srv.tls_started()
        for write in srv.data_to_send():
            for out in write.decode().splitlines():
                assert out[:4] in ("200 ", "201 ", "202 ", "400 ") or srv.state is State.LOGGED_IN
        if srv.closed:
            break
    assert srv.state in State


@given(st.binary(max_size=2000))
def test_fuzz_bytes(data: bytes) -> None:
    srv = server(tls_available=True)
    srv.receive_data(data, T)
    srv.data_to_send()
    assert srv.state in State
