"""DIGEST-MD5 (RFC 2831): published vectors, server checks, client, and the directive parser."""

from __future__ import annotations

import hashlib

import pytest

from tunnelbroker.protocols.sasl import (
    MAX_DIGEST_SIZE,
    AuthenticationFailed,
    DigestChallenge,
    DigestClient,
    DigestResponse,
    DigestServer,
    MalformedResponse,
    decode_b64_line,
    digest_ha1,
    encode_b64_line,
    ha1_hex,
    parse_challenge,
    parse_digest_response,
    response_value,
    session_key,
)

# RFC 5572 §4.4.2, Figure 12 (password "password"); the RFC wraps these lines editorially.
RFC5572_CHALLENGE_B64 = (
    b"cmVhbG09aGV4b3Msbm9uY2U9MTExMzkwODk2OCxxb3A9YXV0aCxhbGdvcml0aG09bWQ1LXNlc3MsY2hhcnNldD11dGY4"
)
RFC5572_RESPONSE_B64 = (
    b"Y2hhcnNldD11dGY4LHVzZXJuYW1lPSJ1c2VybmFtZTEiLHJlYWxtPSJoZXhvcyIsbm9"
    b"uY2U9IjExMTM5MDg5NjgiLG5jPTAwMDAwMDAxLGNub25jZT0iMTExMzkyMzMxMSIsZG"
    b"lnZXN0LXVyaT0idHNwL2hleG9zIixyZXNwb25zZT1mOGU0MmIzYzUwYzU5NzcxODUzZ"
    b"jYyNzRmY2ZmZDFjYSxxb3A9YXV0aA=="
)
RFC5572_RSPAUTH_B64 = b"cnNwYXV0aD03MGQ1Y2FiYzkyMzU1NjhiZTM4MGJhMmM5MDczODFmZQ=="

# RFC 2831 §4, the IMAP example (password "secret").
RFC2831_CHALLENGE_B64 = (
    b"cmVhbG09ImVsd29vZC5pbm5vc29mdC5jb20iLG5vbmNlPSJPQTZNRzl0"
    b"RVFHbTJoaCIscW9wPSJhdXRoIixhbGdvcml0aG09bWQ1LXNlc3MsY2hh"
    b"cnNldD11dGYtOA=="
)
RFC2831_RESPONSE_B64 = (
    b"Y2hhcnNldD11dGYtOCx1c2VybmFtZT0iY2hyaXMiLHJlYWxtPSJlbHdvb2"
    b"QuaW5ub3NvZnQuY29tIixub25jZT0iT0E2TUc5dEVRR20yaGgiLG5jPTAw"
    b"MDAwMDAxLGNub25jZT0iT0E2TUhYaDZWcVRyUmsiLGRpZ2VzdC11cmk9Im"
    b"ltYXAvZWx3b29kLmlubm9zb2Z0LmNvbSIscmVzcG9uc2U9ZDM4OGRhZDkw"
    b"ZDRiYmQ3NjBhMTUyMzIxZjIxNDNhZjcscW9wPWF1dGg="
)
RFC2831_RSPAUTH_B64 = b"cnNwYXV0aD1lYTQwZjYwMzM1YzQyN2I1NTI3Yjg0ZGJhYmNkZmZmZA=="

# tsp.md §2.4: measured against gogoc 1.2.
GOGOC_RESPONSE = (
    b'charset=utf-8,username="alice",realm="testrealm",nonce="1234567890",nc=00000001,'
    b'cnonce="1795323394",digest-uri="tsp/127.0.0.1",'
    b"response=4410ed864907f7f318d43c5637cee923,qop=auth"
)
GOGOC_RSPAUTH = b"rspauth=bec75817c5f139f2f892846a1e9a9629"


def gogoc_response(
    *,
    username: str = "alice",
    password: str = "secret",
    realm: str = "testrealm",
    nonce: str = "1234567890",
    cnonce: str = "1795323394",
    nc: str = "00000001",
    qop: str = "auth",
    uri: str = "tsp/127.0.0.1",
    extra: str = "",
) -> DigestResponse:
    """A response computed independently of the module, the way gogoc's C code does it."""

    def h(s: str | bytes) -> str:
        return hashlib.md5(s.encode() if isinstance(s, str) else s).hexdigest()

    a1 = hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()
    a1 += f":{nonce}:{cnonce}".encode()
    value = h(f"{h(a1)}:{nonce}:{nc}:{cnonce}:{qop}:{h('AUTHENTICATE:' + uri)}")
    escaped = username.replace("\\", "\\\\").replace('"', '\\"')
    raw = (
        f'charset=utf-8,username="{escaped}",realm="{realm}",nonce="{nonce}",nc={nc},'
        f'cnonce="{cnonce}",digest-uri="{uri}",response={value},qop={qop}{extra}'
    )
    return parse_digest_response(raw.encode())


# --- published vectors ----------------------------------------------------------------------


class TestRfc5572Figure12:
    def test_challenge_decodes_without_quotes(self) -> None:
        raw = decode_b64_line(RFC5572_CHALLENGE_B64)
        assert raw == b"realm=hexos,nonce=1113908968,qop=auth,algorithm=md5-sess,charset=utf8"
        assert parse_challenge(raw) == DigestChallenge(
            realm="hexos", nonce="1113908968", qop="auth", algorithm="md5-sess", charset="utf8"
        )

    def test_client_reproduces_the_response_line(self) -> None:
        client = DigestClient("username1", "password", "1113923311", host="hexos")
        raw = client.respond(decode_b64_line(RFC5572_CHALLENGE_B64))
        assert raw == decode_b64_line(RFC5572_RESPONSE_B64)
        assert b"response=f8e42b3c50c59771853f6274fcffd1ca" in raw
        client.check_rspauth(decode_b64_line(RFC5572_RSPAUTH_B64))

    def test_server_verifies_and_answers_rspauth(self) -> None:
        server = DigestServer("hexos", "1113908968")
        response = parse_digest_response(decode_b64_line(RFC5572_RESPONSE_B64))
        assert response.response == "f8e42b3c50c59771853f6274fcffd1ca"
        rspauth = server.verify(response, digest_ha1("username1", "hexos", "password"))
        assert rspauth == b"rspauth=70d5cabc9235568be380ba2c907381fe"
        assert encode_b64_line(rspauth) == RFC5572_RSPAUTH_B64 + b"\r\n"

    def test_quoted_form_of_the_challenge(self) -> None:
        raw = b'realm="hexos",nonce="1113908968",qop="auth",algorithm=md5-sess,charset=utf8'
        assert parse_challenge(raw) == parse_challenge(decode_b64_line(RFC5572_CHALLENGE_B64))


class TestGogocVector:
    def test_server(self) -> None:
        server = DigestServer("testrealm", "1234567890")
        rspauth = server.verify(
            parse_digest_response(GOGOC_RESPONSE), digest_ha1("alice", "testrealm", "secret")
        )
        assert rspauth == GOGOC_RSPAUTH

    def test_client_sends_gogoc_bytes(self) -> None:
        server = DigestServer("testrealm", "1234567890")
        client = DigestClient("alice", "secret", "1795323394", host="127.0.0.1")
        assert client.respond(server.challenge()) == GOGOC_RESPONSE
        client.check_rspauth(GOGOC_RSPAUTH)

    def test_independent_computation_agrees(self) -> None:
        assert gogoc_response() == parse_digest_response(GOGOC_RESPONSE)


def chris_hashes(nonce: str, cnonce: str, digest_uri: str) -> tuple[str, str]:
    ha1 = digest_ha1("chris", "elwood.innosoft.com", "secret")
    values = [
        response_value(
            ha1,
            nonce=nonce,
            cnonce=cnonce,
            nc="00000001",
            qop="auth",
            digest_uri=digest_uri,
            rspauth=rspauth,
        )
        for rspauth in (False, True)
    ]
    return values[0], values[1]


class TestRfc2831Examples:
    def test_imap_hash_helper(self) -> None:
        response, rspauth = chris_hashes(
            "OA6MG9tEQGm2hh", "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com"
        )
        assert response == "d388dad90d4bbd760a152321f2143af7"
        assert rspauth == "ea40f60335c427b5527b84dbabcdfffd"

    def test_imap_exchange(self) -> None:
        challenge = decode_b64_line(RFC2831_CHALLENGE_B64)
        assert challenge == (
            b'realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",qop="auth",'
            b"algorithm=md5-sess,charset=utf-8"
        )
        # Our server renders the same challenge byte for byte.
        server = DigestServer("elwood.innosoft.com", "OA6MG9tEQGm2hh")
        assert server.challenge() == challenge

        client = DigestClient(
            "chris", "secret", "OA6MHXh6VqTrRk", "imap", host="elwood.innosoft.com"
        )
        assert client.respond(challenge) == decode_b64_line(RFC2831_RESPONSE_B64)

        response = parse_digest_response(decode_b64_line(RFC2831_RESPONSE_B64))
        ha1 = digest_ha1("chris", "elwood.innosoft.com", "secret")
        rspauth = server.verify(response, ha1, expected_service="imap")
        assert rspauth == decode_b64_line(RFC2831_RSPAUTH_B64)
        client.check_rspauth(rspauth)

    def test_acap_hash_helper(self) -> None:
        response, rspauth = chris_hashes(
            "OA9BSXrbuRhWay", "OA9BSuZWMSpW8m", "acap/elwood.innosoft.com"
        )
        assert response == "6084c6db3fede7352c551284490fd0fc"
        assert rspauth == "2f0b3d7c3c2e486600ef710726aa2eae"


def test_ha1() -> None:
    ha1 = digest_ha1("alice", "testrealm", "secret")
    assert len(ha1) == 16
    assert ha1 == hashlib.md5(b"alice:testrealm:secret").digest()
    assert ha1_hex("alice", "testrealm", "secret") == ha1.hex()
    # Raw UTF-8, as gogoc hashes it (no ISO 8859-1 down-conversion).
    assert digest_ha1("jürgen", "r", "p") == hashlib.md5("jürgen:r:p".encode()).digest()


def test_session_key_with_authzid() -> None:
    ha1 = digest_ha1("u", "r", "p")
    assert session_key(ha1, "n", "c") == hashlib.md5(ha1 + b":n:c").digest()
    assert session_key(ha1, "n", "c", "u") == hashlib.md5(ha1 + b":n:c:u").digest()


# --- server ---------------------------------------------------------------------------------

HA1 = digest_ha1("alice", "testrealm", "secret")


def fresh_server() -> DigestServer:
    return DigestServer("testrealm", "1234567890")


def test_challenge_format() -> None:
    assert fresh_server().challenge() == (
        b'realm="testrealm",nonce="1234567890",qop="auth",algorithm=md5-sess,charset=utf-8'
    )
    assert fresh_server().realm == "testrealm"
    assert fresh_server().nonce == "1234567890"


@pytest.mark.parametrize(
    "response",
    [
        gogoc_response(password="wrong"),
        gogoc_response(nonce="1234567891"),
        gogoc_response(realm="otherrealm"),
        gogoc_response(nc="00000002"),
        gogoc_response(qop="auth-int"),
        gogoc_response(uri="imap/127.0.0.1"),
        gogoc_response(uri="tsp"),
        gogoc_response(uri="tsp/"),
        gogoc_response(username="bob"),
        gogoc_response(extra=',authzid="bob"'),
    ],
    ids=[
        "password",
        "nonce",
        "realm",
        "nc",
        "qop",
        "service",
        "no-slash",
        "no-host",
        "username",
        "authzid",
    ],
)
def test_verify_rejects(response: DigestResponse) -> None:
    with pytest.raises(AuthenticationFailed):
        fresh_server().verify(response, HA1)


def test_unknown_user() -> None:
    with pytest.raises(AuthenticationFailed):
        fresh_server().verify(gogoc_response(), None)


def test_replay_is_rejected() -> None:
    server = fresh_server()
    response = gogoc_response()
    assert server.verify(response, HA1) == GOGOC_RSPAUTH
    with pytest.raises(AuthenticationFailed):
        server.verify(response, HA1)


def test_one_attempt_per_challenge() -> None:
    server = fresh_server()
    with pytest.raises(AuthenticationFailed):
        server.verify(gogoc_response(password="guess"), HA1)
    with pytest.raises(AuthenticationFailed):
        server.verify(gogoc_response(), HA1)


def test_verify_uses_the_client_digest_uri() -> None:
    # gogoc puts its configured server string in the digest-uri, whatever it is.
    for uri in ("tsp/broker.example.net", "tsp/192.0.2.1", "TSP/Broker", "tsp/a/b"):
        response = gogoc_response(uri=uri)
        assert fresh_server().verify(response, HA1).startswith(b"rspauth=")


def test_other_service_when_asked() -> None:
    response = gogoc_response(uri="imap/host")
    assert fresh_server().verify(response, HA1, expected_service="imap")


def test_uppercase_response_hex_is_accepted() -> None:
    response = gogoc_response()
    upper = parse_digest_response(GOGOC_RESPONSE.replace(b"4410ed86", b"4410ED86"))
    assert upper.response != response.response
    assert fresh_server().verify(upper, HA1) == GOGOC_RSPAUTH


@pytest.mark.parametrize("authzid", ["alice", ""])
def test_authzid_of_oneself(authzid: str) -> None:
    server = fresh_server()
    client = DigestClient("alice", "secret", "c1", host="h", authzid=authzid)
    raw = client.respond(server.challenge())
    assert f'authzid="{authzid}"'.encode() in raw
    response = parse_digest_response(raw)
    assert response.authzid == authzid
    client.check_rspauth(server.verify(response, HA1))


def test_ha1_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        fresh_server().verify(gogoc_response(), HA1.hex().encode())


@pytest.mark.parametrize(
    ("realm", "nonce"),
    [
        ("a,b", "n"),
        ('a"b', "n"),
        ("a\\b", "n"),
        ("a\r\nb", "n"),
        ("", "n"),
        ("r", "n,1"),
        ("r", 'n"'),
        ("r", ""),
        ("r", "n\0"),
    ],
)
def test_unsendable_challenge(realm: str, nonce: str) -> None:
    with pytest.raises(ValueError):
        DigestServer(realm, nonce)
    with pytest.raises(ValueError):
        DigestChallenge(realm, nonce).to_bytes()


def test_challenge_to_bytes_without_charset() -> None:
    assert DigestChallenge("r", "n", charset=None).to_bytes() == (
        b'realm="r",nonce="n",qop="auth",algorithm=md5-sess'
    )
    with pytest.raises(ValueError):
        DigestChallenge("r", "n", charset="utf 8").to_bytes()
    with pytest.raises(ValueError):
        DigestChallenge("r", "n", algorithm="md5/sess").to_bytes()


# gogoc's SUPPORT_MD5_BUG1455: with TSP <= 2.0.0 a NUL inside H(user:realm:pass) truncates A1.


def password_with_nul_in_ha1() -> str:
    return next(f"pw{i}" for i in range(10_000) if 0 in digest_ha1("alice", "testrealm", f"pw{i}"))


def legacy_response(password: str) -> tuple[DigestResponse, bytes]:
    def h(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    ha1 = digest_ha1("alice", "testrealm", password)
    a1 = h(ha1[: ha1.index(0)])  # what strlen() leaves of A1
    nonce, cnonce, uri = "1234567890", "1795323394", "tsp/127.0.0.1"
    value = h(f"{a1}:{nonce}:00000001:{cnonce}:auth:{h(b'AUTHENTICATE:' + uri.encode())}".encode())
    rspauth = h(f"{a1}:{nonce}:00000001:{cnonce}:auth:{h(b':' + uri.encode())}".encode())
    raw = GOGOC_RESPONSE.replace(b"4410ed864907f7f318d43c5637cee923", value.encode())
    return parse_digest_response(raw), b"rspauth=" + rspauth.encode()


def test_legacy_a1_only_when_allowed() -> None:
    password = password_with_nul_in_ha1()
    ha1 = digest_ha1("alice", "testrealm", password)
    response, rspauth = legacy_response(password)
    with pytest.raises(AuthenticationFailed):
        fresh_server().verify(response, ha1)
    assert fresh_server().verify(response, ha1, allow_legacy_a1=True) == rspauth


def test_legacy_mode_still_accepts_the_correct_form() -> None:
    password = password_with_nul_in_ha1()
    ha1 = digest_ha1("alice", "testrealm", password)
    response = gogoc_response(password=password)
    rspauth = fresh_server().verify(response, ha1, allow_legacy_a1=True)
    assert rspauth == fresh_server().verify(response, ha1)
    # And the legacy form is no master key for the wrong password.
    wrong, _ = legacy_response(password)
    with pytest.raises(AuthenticationFailed):
        fresh_server().verify(wrong, HA1, allow_legacy_a1=True)


# --- client ---------------------------------------------------------------------------------


def test_client_rejects_wrong_rspauth() -> None:
    client = DigestClient("alice", "secret", "1795323394", host="127.0.0.1")
    client.respond(fresh_server().challenge())
    with pytest.raises(AuthenticationFailed):
        client.check_rspauth(b"rspauth=00000000000000000000000000000000")
    client.check_rspauth(b'rspauth="BEC75817C5F139F2F892846A1E9A9629"\r\n')


@pytest.mark.parametrize("raw", [b"", b"200 Success", b"rspauth=", b"rspauth=a,rspauth=a"])
def test_client_rejects_malformed_rspauth(raw: bytes) -> None:
    client = DigestClient("alice", "secret", "1795323394", host="127.0.0.1")
    client.respond(fresh_server().challenge())
    with pytest.raises(MalformedResponse):
        client.check_rspauth(raw)


def test_client_call_order() -> None:
    client = DigestClient("alice", "secret", "c", host="h")
    with pytest.raises(RuntimeError):
        client.check_rspauth(GOGOC_RSPAUTH)
    client.respond(fresh_server().challenge())
    with pytest.raises(RuntimeError):
        client.respond(fresh_server().challenge())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"username": "", "password": "p", "cnonce": "c", "host": "h"},
        {"username": "u", "password": "p", "cnonce": "", "host": "h"},
        {"username": "u", "password": "p", "cnonce": "c", "host": ""},
        {"username": "u\n", "password": "p", "cnonce": "c", "host": "h"},
        {"username": "u", "password": "p", "cnonce": "c", "host": "h", "service": "t/s"},
        {"username": "u", "password": "p", "cnonce": "c", "host": "h", "authzid": "\x00"},
    ],
)
def test_client_rejects_bad_arguments(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        DigestClient(**kwargs)


def test_client_without_charset_or_realm() -> None:
    client = DigestClient("u", "p", "c", host="h")
    raw = client.respond(b'nonce="abc",algorithm=md5-sess')
    assert raw.startswith(b'username="u",realm="",nonce="abc",')
    response = parse_digest_response(raw)
    assert response.charset is None
    expected = response_value(
        digest_ha1("u", "", "p"),
        nonce="abc",
        cnonce="c",
        nc="00000001",
        qop="auth",
        digest_uri="tsp/h",
    )
    assert response.response == expected


def test_client_escapes_username() -> None:
    server = fresh_server()
    client = DigestClient('a"l\\ice', "secret", "c", host="h")
    raw = client.respond(server.challenge())
    assert b'username="a\\"l\\\\ice"' in raw
    response = parse_digest_response(raw)
    assert response.username == 'a"l\\ice'
    client.check_rspauth(server.verify(response, digest_ha1('a"l\\ice', "testrealm", "secret")))


# --- challenge parsing ----------------------------------------------------------------------


def test_challenge_options() -> None:
    raw = (
        b'realm="first",realm="second",nonce="n==",qop="auth-int, auth",'
        b'stale=true,maxbuf=1024,cipher="rc4,3des",x-future="y",Algorithm=MD5-SESS'
    )
    challenge = parse_challenge(raw)
    assert challenge.realm == "first"
    assert challenge.nonce == "n=="
    assert challenge.qop == "auth-int, auth"
    assert challenge.charset is None
    assert parse_challenge(b"nonce=n==").nonce == "n=="


@pytest.mark.parametrize(
    "raw",
    [
        b'realm="r"',  # no nonce
        b'nonce=""',
        b"nonce=a,nonce=b",
        b'nonce=a,qop="auth-int,auth-conf"',
        b"nonce=a,algorithm=md5",
        b"nonce=a,algorithm=md5-sess,algorithm=md5-sess",
        b"nonce=a,charset=utf-8,charset=utf-8",
        b'nonce=a,charset="utf 8"',
        b"nonce=a,stale=true,stale=true",
    ],
)
def test_bad_challenges(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_challenge(raw)


# --- response parsing -----------------------------------------------------------------------


def test_parser_syntax_tolerance() -> None:
    raw = (
        b' , USERNAME = "alice" ,, Realm="testrealm"\t,nonce="1234567890" , nc=00000001,'
        b'cnonce="1795323394",digest-uri="tsp/127.0.0.1",\r\n'
        b"response=4410ed864907f7f318d43c5637cee923,qop=auth,charset=utf-8,"
        b'maxbuf=65536,x-unknown="1",x-unknown=2 ,\r\n\0'
    )
    assert parse_digest_response(raw) == parse_digest_response(GOGOC_RESPONSE)


def test_parser_escapes_and_utf8() -> None:
    quoted = rb'"u\"s\\e\r j' + "ü".encode() + b'"'
    raw = GOGOC_RESPONSE.replace(b'"alice"', quoted)
    assert parse_digest_response(raw).username == 'u"s\\er jü'


def test_response_defaults() -> None:
    raw = (
        b'username="u",nonce="n",cnonce="c",nc=00000001,digest-uri="tsp/h",'
        b"response=0123456789abcdef0123456789abcdef"
    )
    response = parse_digest_response(raw)
    assert (response.realm, response.qop, response.charset, response.authzid) == (
        "",
        "auth",
        None,
        None,
    )


def test_size_bound() -> None:
    padding = MAX_DIGEST_SIZE - len(GOGOC_RESPONSE) - len(',x=""')
    at_limit = GOGOC_RESPONSE + b',x="' + b"a" * padding + b'"'
    assert len(at_limit) == MAX_DIGEST_SIZE
    assert parse_digest_response(at_limit) == parse_digest_response(GOGOC_RESPONSE)
    with pytest.raises(MalformedResponse):
        parse_digest_response(at_limit + b" ")


@pytest.mark.parametrize(
    "name", [b"username", b"nonce", b"cnonce", b"nc", b"digest-uri", b"response"]
)
def test_missing_required(name: bytes) -> None:
    kept = [item for item in GOGOC_RESPONSE.split(b",") if not item.startswith(name + b"=")]
    with pytest.raises(MalformedResponse):
        parse_digest_response(b",".join(kept))


@pytest.mark.parametrize(
    "name", [b"username", b"realm", b"nonce", b"cnonce", b"nc", b"qop", b"digest-uri", b"response"]
)
def test_duplicate(name: bytes) -> None:
    item = next(i for i in GOGOC_RESPONSE.split(b",") if i.startswith(name + b"="))
    with pytest.raises(MalformedResponse):
        parse_digest_response(GOGOC_RESPONSE + b"," + item)
    with pytest.raises(MalformedResponse):
        parse_digest_response(GOGOC_RESPONSE + b"," + item.upper())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b",,,",
        GOGOC_RESPONSE.replace(b'username="alice"', b'username=""'),
        GOGOC_RESPONSE.replace(b"nc=00000001", b"nc=0000001"),
        GOGOC_RESPONSE.replace(b"nc=00000001", b"nc=0000000g"),
        GOGOC_RESPONSE.replace(b"=4410ed86", b"=4410ed8"),
        GOGOC_RESPONSE.replace(b"=4410ed86", b"=x410ed86"),
        GOGOC_RESPONSE + b',x="unterminated',
        GOGOC_RESPONSE + b',x="\\',
        GOGOC_RESPONSE + b',x="a\nb"',
        GOGOC_RESPONSE + b',x="a\x00b"',
        GOGOC_RESPONSE + b',x=a"b',
        GOGOC_RESPONSE + b",x=a\\b",
        GOGOC_RESPONSE + b",x=a b",
        GOGOC_RESPONSE + b",x=",
        GOGOC_RESPONSE + b",x",
        GOGOC_RESPONSE + b',x="a"b',
        GOGOC_RESPONSE + b",=a",
        GOGOC_RESPONSE + b',"x"=a',
        GOGOC_RESPONSE + b",x=\x01",
        GOGOC_RESPONSE.replace(b"alice", b"al\xffice"),
    ],
)
def test_malformed_responses(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_digest_response(raw)


def test_response_to_bytes_roundtrip_and_validation() -> None:
    response = parse_digest_response(GOGOC_RESPONSE)
    assert response.to_bytes() == GOGOC_RESPONSE
    with_authzid = parse_digest_response(GOGOC_RESPONSE + b',authzid="alice"')
    assert with_authzid.to_bytes() == GOGOC_RESPONSE + b',authzid="alice"'
    with pytest.raises(ValueError):
        DigestResponse("u\x00", "", "n", "c", "00000001", "auth", "tsp/h", "0" * 32).to_bytes()
    with pytest.raises(ValueError):
        DigestResponse("u", "", "n", "c", "00000001", "auth,x", "tsp/h", "0" * 32).to_bytes()


# --- base64 lines ---------------------------------------------------------------------------


def test_b64_lines() -> None:
    assert encode_b64_line(b"rspauth=x") == b"cnNwYXV0aD14\r\n"
    assert decode_b64_line(b"cnNwYXV0aD14\r\n") == b"rspauth=x"
    assert decode_b64_line(b"\0 cnNwYXV0aD14 \r\n\0") == b"rspauth=x"
    assert decode_b64_line(b"cnNwYXV0aD0") == b"rspauth="  # padding dropped
    assert decode_b64_line(b"\r\n") == b""


@pytest.mark.parametrize("line", [b"cnNw YXV0", b"cnNw!XV0", b"a", b"abcde", b"A" * 10_000])
def test_bad_b64_lines(line: bytes) -> None:
    with pytest.raises(MalformedResponse):
        decode_b64_line(line)
