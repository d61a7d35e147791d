"""Property tests: peer input fails only with SaslError, and both ends agree on any values."""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tunnelbroker.protocols.sasl import (
    DigestClient,
    DigestResponse,
    DigestServer,
    SaslError,
    decode_b64_line,
    digest_ha1,
    encode_b64_line,
    encode_plain,
    parse_anonymous,
    parse_challenge,
    parse_digest_response,
    parse_plain,
)

GOGOC_RESPONSE = (
    b'charset=utf-8,username="alice",realm="testrealm",nonce="1234567890",nc=00000001,'
    b'cnonce="1795323394",digest-uri="tsp/127.0.0.1",'
    b"response=4410ed864907f7f318d43c5637cee923,qop=auth"
)
CHALLENGE = b'realm="testrealm",nonce="1234567890",qop="auth",algorithm=md5-sess,charset=utf-8'


def text_chars(except_: str = "", controls: bool = True) -> st.SearchStrategy[str]:
    """Any character UTF-8 can carry (no surrogates), optionally without controls."""
    if controls:
        return st.characters(blacklist_categories=["Cs"], blacklist_characters=except_)
    return st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters=except_)


# Values that travel quoted: anything but control characters, with quotes and backslashes
# drawn often, since gogoc escapes exactly those two.
quotable = st.text(
    alphabet=st.one_of(
        st.sampled_from('"\\ ,=\t'),
        text_chars(controls=False),
    ),
    min_size=1,
    max_size=40,
)
# Values we put into a challenge: what gogoc can read back.
gogoc_safe = st.text(
    alphabet=text_chars(except_=',"\\', controls=False),
    min_size=1,
    max_size=40,
)
hex_digits = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


def fragments() -> st.SearchStrategy[bytes]:
    """Bytes that look like directive lists, to get past the first syntax checks."""
    piece = st.one_of(
        st.sampled_from(
            [b"username", b"realm", b"nonce", b"cnonce", b"nc", b"qop", b"digest-uri"]
            + [b"response", b"charset", b"authzid", b"rspauth", b"algorithm", b"="]
            + [b",", b'"', b"\\", b" ", b"\r\n", b"\0", b"00000001", b"auth", b"\xc3"]
        ),
        st.binary(max_size=4),
    )
    return st.lists(piece, max_size=40).map(b"".join)


def only_sasl_errors(function: object, data: bytes) -> None:
    assert callable(function)
    try:
        function(data)
    except SaslError:
        pass


@settings(max_examples=300)
@given(data=st.one_of(st.binary(max_size=600), fragments()))
@example(data=GOGOC_RESPONSE)
@example(data=b"\0\0alice\0secret\r\n")
def test_parsers_raise_only_sasl_errors(data: bytes) -> None:
    for parser in (
        parse_digest_response,
        parse_challenge,
        parse_plain,
        parse_anonymous,
        decode_b64_line,
    ):
        only_sasl_errors(parser, data)


@given(data=st.one_of(st.binary(max_size=600), fragments()))
def test_base64_wrapped_input_raises_only_sasl_errors(data: bytes) -> None:
    line = encode_b64_line(data)
    only_sasl_errors(parse_plain, line)
    only_sasl_errors(lambda raw: parse_digest_response(decode_b64_line(raw)), line)


@given(challenge=st.one_of(st.binary(max_size=300), fragments()), rspauth=fragments())
@example(challenge=CHALLENGE, rspauth=b"rspauth=bec75817c5f139f2f892846a1e9a9629")
def test_client_raises_only_sasl_errors(challenge: bytes, rspauth: bytes) -> None:
    client = DigestClient("alice", "secret", "1795323394", host="127.0.0.1")
    try:
        client.respond(challenge)
    except SaslError:
        return
    only_sasl_errors(client.check_rspauth, rspauth)


@given(
    username=quotable,
    password=st.text(max_size=40),
    realm=gogoc_safe,
    nonce=gogoc_safe,
    cnonce=quotable,
    host=quotable,
)
def test_client_server_roundtrip(
    username: str, password: str, realm: str, nonce: str, cnonce: str, host: str
) -> None:
    server = DigestServer(realm, nonce)
    client = DigestClient(username, password, cnonce, host=host)
    raw = client.respond(server.challenge())
    # Across the wire in TSP's base64 lines.
    response = parse_digest_response(decode_b64_line(encode_b64_line(raw)))
    assert (response.username, response.realm, response.nonce) == (username, realm, nonce)
    assert response.digest_uri == f"tsp/{host}"
    rspauth = server.verify(response, digest_ha1(username, realm, password))
    client.check_rspauth(decode_b64_line(encode_b64_line(rspauth)))


@given(username=quotable, password=st.text(max_size=20), wrong=st.text(max_size=20))
def test_wrong_password_fails(username: str, password: str, wrong: str) -> None:
    server = DigestServer("realm", "nonce")
    client = DigestClient(username, wrong, "cnonce", host="h")
    response = parse_digest_response(client.respond(server.challenge()))
    try:
        server.verify(response, digest_ha1(username, "realm", password))
    except SaslError:
        assert wrong != password
    else:
        assert wrong == password


@given(
    username=quotable,
    realm=st.one_of(st.just(""), quotable),
    nonce=quotable,
    cnonce=quotable,
    digest_uri=quotable,
    response=hex_digits,
    charset=st.one_of(st.none(), st.sampled_from(["utf-8", "utf8", "UTF-8"])),
    authzid=st.one_of(st.none(), st.just(""), quotable),
)
def test_response_quoting_roundtrip(
    username: str,
    realm: str,
    nonce: str,
    cnonce: str,
    digest_uri: str,
    response: str,
    charset: str | None,
    authzid: str | None,
) -> None:
    value = DigestResponse(
        username=username,
        realm=realm,
        nonce=nonce,
        cnonce=cnonce,
        nc="00000001",
        qop="auth",
        digest_uri=digest_uri,
        response=response,
        charset=charset,
        authzid=authzid,
    )
    assert parse_digest_response(value.to_bytes()) == value


@given(
    authcid=st.text(alphabet=text_chars(except_="\0"), min_size=1),
    password=st.text(alphabet=text_chars(except_="\0\r\n"), min_size=1),
    authzid=st.text(alphabet=text_chars(except_="\0")),
    leading_nuls=st.integers(min_value=0, max_value=3),
)
def test_plain_roundtrip(authcid: str, password: str, authzid: str, leading_nuls: int) -> None:
    message = b"\0" * leading_nuls + encode_plain(authcid, password, authzid)
    credentials = parse_plain(message)
    assert credentials.authcid == authcid
    assert credentials.password == password
    # Leading NULs are indistinguishable from an empty authzid, so only a real one survives.
    assert credentials.authzid == authzid
    rfc_form = base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode())
    assert parse_plain(rfc_form) == credentials
