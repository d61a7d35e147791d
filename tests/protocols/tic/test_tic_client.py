"""The TIC client machine, against the server machine and against scripted servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.protocols.tic.helpers import MOCK_TUNNEL, T, backend, client, run_pair, server

from tunnelbroker.protocols.tic import (
    ClientState,
    Done,
    Failed,
    LocalProtocolError,
    LoginFailed,
    LoginSucceeded,
    TicClient,
    TicListEntry,
    TicTunnel,
    TlsRequested,
    TunnelsListed,
)
from tunnelbroker.protocols.tic.events import Event

OTHER = TicTunnel("T2", "6in4-heartbeat", "2001:db8:2::2", "2001:db8:2::1", 64, "mock01",
                  "heartbeat", "127.0.0.1", password="hb")  # fmt: skip


def last(evs: list[Event]) -> Event:
    return evs[-1]


def test_fetches_the_only_tunnel() -> None:
    c, s = client(), server()
    cev, sev = run_pair(c, s)
    assert cev == [
        TunnelsListed((TicListEntry("T1", "2001:db8:1:1::2", "ayiya", "mock01"),)),
        Done(MOCK_TUNNEL, (TicListEntry("T1", "2001:db8:1:1::2", "ayiya", "mock01"),)),
    ]
    assert LoginSucceeded("TEST-SIXXS") in sev and s.closed
    assert c.state is ClientState.DONE and c.tunnel == MOCK_TUNNEL and c.tunnel.enabled
    assert c.server_time == int(T) and c.clock_offset == 0


def test_sends_aiccus_lines() -> None:
    c = client(client_name="AICCU/2007.01.15-console-linux", os_name="Linux/6.18.44")
    c.receive_data(b"200 SixXS TIC Service on mock ready (http://www.sixxs.net)\n", T)
    assert c.data_to_send() == b"client TIC/draft-00 AICCU/2007.01.15-console-linux Linux/6.18.44\n"
    c.receive_data(b"200 Client Identity accepted\n", T)
    assert c.data_to_send() == b"get unixtime\n"
    c.receive_data(b"200 1795323171\r\n", T)
    assert c.data_to_send() == b"username TEST-SIXXS\n"
    c.receive_data(b"200 Choose your authentication challenge please\n", T)
    assert c.data_to_send() == b"challenge md5\n"
    c.receive_data(b"200 0085d68fcd0dc670304021476a66accd\n", T)
    assert c.data_to_send() == b"authenticate md5 7c2dc3d2d7fbb045c7e54af154b61fa4\n"


def test_named_tunnel_skips_the_listing() -> None:
    c, s = client(tunnel_id="T2"), server(backend(MOCK_TUNNEL, OTHER))
    cev, _ = run_pair(c, s)
    assert cev == [Done(OTHER, ())]


def test_list_only() -> None:
    c, s = client(list_only=True), server(backend(MOCK_TUNNEL, OTHER))
    cev, _ = run_pair(c, s)
    done = last(cev)
    assert isinstance(done, Done) and done.tunnel is None and len(done.entries) == 2


@pytest.mark.parametrize(
    ("tunnels", "reason"),
    [((MOCK_TUNNEL, OTHER), "several tunnels (T1, T2)"), ((), "no tunnels")],
)
def test_cannot_choose(tunnels: tuple[TicTunnel, ...], reason: str) -> None:
    b = backend()
    b.users["TEST-SIXXS"].tunnels = list(tunnels)
    c, s = client(), server(b)
    cev, _ = run_pair(c, s)
    failed = last(cev)
    assert isinstance(failed, Failed) and reason in failed.reason
    assert s.closed  # our QUIT reached the server


def test_unknown_tunnel() -> None:
    c, s = client(tunnel_id="T9"), server()
    cev, _ = run_pair(c, s)
    assert last(cev) == Failed("no such tunnel: T9", "400 Unknown tunnel")


def test_wrong_password() -> None:
    c, s = client(password="wrong"), server()
    cev, sev = run_pair(c, s)
    assert last(cev) == Failed("login failed", "400 Authentication failed")
    assert any(isinstance(e, LoginFailed) for e in sev) and s.closed


def test_clock_check() -> None:
    c = client()
    c.receive_data(b"200 hi\n200 ok\n", T)
    c.data_to_send()
    c.receive_data(b"200 1795323000\n", T)
    assert c.data_to_send() == b"QUIT Aborting: Clock is off by 171 seconds\n"
    failed = c.next_event()
    assert isinstance(failed, Failed) and "171 seconds" in failed.reason
    c2 = client()
    c2.receive_data(b"200 hi\n200 ok\n200 1795323051\n", T)
    assert c2.data_to_send().endswith(b"username TEST-SIXXS\n")


@pytest.mark.parametrize("require", [False, True])
def test_starttls_refused(require: bool) -> None:
    c, s = client(starttls=True, require_tls=require), server()
    cev, _ = run_pair(c, s)
    if require:
        assert last(cev) == Failed(
            "the server refused starttls and TLS is required",
            "400 This service is not SSL enabled (yet)",
        )
    else:
        assert isinstance(last(cev), Done) and not c.tls


def test_starttls_accepted() -> None:
    c, s = client(starttls=True, require_tls=True), server(tls_available=True)
    cev, _ = run_pair(c, s)
    assert TlsRequested() in cev and isinstance(last(cev), Done)
    assert c.tls and s.tls


def test_tls_misuse() -> None:
    c = client()
    with pytest.raises(LocalProtocolError):
        c.tls_started()
    with pytest.raises(LocalProtocolError):
        TicClient.__init__(c, c.settings.__class__(username="a b", password="x"), now=T)


def test_plaintext_after_starttls_agreement_fails() -> None:
    c = client(starttls=True)
    c.receive_data(b"200 hi\n200 ok\n200 1795323171\n200 go ahead\n", T)
    assert c.state is ClientState.TLS_PENDING
    c.receive_data(b"200 injected\n", T)
    assert isinstance(last(list(iter(c.next_event, None))), Failed)


@pytest.mark.parametrize(
    "script",
    [
        b"400 Server is busy\n",
        b"200 hi\n400 no\n",
        b"200 hi\n200 ok\n200 soon\n",
        b"200 hi\n200 ok\n400 no time\n",
        b"200 hi\n200 ok\n200 1795323171\n400 bad user\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n400 no md5\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 two words\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n400 nope\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n201 x\nT1  a b c\n202 x\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n201 x\nT1 a b c\n202 x\n"
        b"201 show\nTunnelId: T1\n202 done\n",
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n201 x\nT1 a b c\n202 x\n"
        b"201 show\nno separator\n202 done\n",
        b"garbage\n",
        b"2\n",
    ],
)
def test_bad_servers_fail_cleanly(script: bytes) -> None:
    c = client()
    c.receive_data(script, T)
    evs = list(iter(c.next_event, None))
    assert isinstance(evs[-1], Failed) and c.finished


def test_connection_lost_mid_exchange() -> None:
    c = client()
    c.receive_data(b"200 hi\n", T)
    c.connection_lost()
    assert c.next_event() == Failed("connection closed by the server (client)")
    c.connection_lost()
    assert c.next_event() is None


def test_runaway_block() -> None:
    c = client()
    c.receive_data(b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n201 x\n", T)
    c.receive_data(b"T1 a b c\n" * 5000, T)
    assert isinstance(last(list(iter(c.next_event, None))), Failed)


@given(st.binary(max_size=600))
def test_fuzz_server_bytes(data: bytes) -> None:
    c = client(starttls=True)
    c.receive_data(data, T)
    c.data_to_send()
    for event in iter(c.next_event, None):
        assert isinstance(event, Event)


@given(st.lists(st.text(max_size=40), max_size=30))
def test_fuzz_server_lines(lines: list[str]) -> None:
    c = client()
    c.receive_data("".join(line.replace("\n", " ") + "\n" for line in lines).encode(), T)
    assert c.state in ClientState


# ---------------------------------------------------------------- which failures are permanent

_LOGGED_IN = b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n200 in\n"


@pytest.mark.parametrize(
    ("settings", "script"),
    [
        ({}, b"200 hi\n200 ok\n200 1795323171\n400 No such user\n"),
        ({}, b"200 hi\n200 ok\n200 1795323171\n200 ok\n200 c\n400 Authentication failed\n"),
        ({"tunnel_id": "T9"}, _LOGGED_IN + b"400 Unknown tunnel\n"),
        ({}, _LOGGED_IN + b"201 x\nT1 a b c\nT2 a b c\n202 x\n"),
        ({}, _LOGGED_IN + b"201 x\n202 x\n"),
        ({"require_tls": True, "starttls": True}, b"200 hi\n200 ok\n200 1795323171\n400 no\n"),
    ],
    ids=["username", "login", "unknown-tunnel", "several-tunnels", "no-tunnels", "tls-required"],
)
def test_refusals_no_retry_can_cure_are_permanent(
    settings: dict[str, object], script: bytes
) -> None:
    c = client(**settings)
    c.receive_data(script, T)
    assert isinstance(last(list(iter(c.next_event, None))), Failed)
    assert c.failure_permanent


@pytest.mark.parametrize(
    "script",
    [
        b"400 Server too busy, try again later\n",
        b"400 Too many failed logins, try again later\n",
        b"200 hi\n400 no\n",
        b"200 hi\n200 ok\n400 no time\n",
        b"200 hi\n200 ok\n200 1795323000\n",  # our clock is off
        b"200 hi\n200 ok\n200 1795323171\n200 ok\n400 no md5\n",
        _LOGGED_IN + b"400 cannot list\n",
        _LOGGED_IN + b"201 x\nT1  a b c\n202 x\n",  # a garbled listing
        b"garbage\n",
    ],
)
def test_other_failures_may_pass(script: bytes) -> None:
    c = client()
    c.receive_data(script, T)
    assert isinstance(last(list(iter(c.next_event, None))), Failed)
    assert not c.failure_permanent


def test_a_dropped_connection_or_tls_refused_when_optional_is_not_permanent() -> None:
    c = client()
    c.receive_data(b"200 hi\n", T)
    c.connection_lost()
    assert isinstance(c.next_event(), Failed) and not c.failure_permanent
    # Without require_tls a refused starttls is no failure at all.
    c2, s = client(starttls=True), server()
    cev, _ = run_pair(c2, s)
    assert isinstance(last(cev), Done) and not c2.failure_permanent
