"""DIGEST-MD5 (RFC 2831) as used by TSP (RFC 5572 §4.4.2), server and client side.

Theory of operation
-------------------
TSP uses only initial authentication (RFC 2831 §2.1), with ``qop=auth`` and no security
layer. Each message is one base64 line (:func:`encode_b64_line`, :func:`decode_b64_line`);
everything else here works on the decoded bytes::

    C: AUTHENTICATE DIGEST-MD5
    S: realm="…",nonce="…",qop="auth",algorithm=md5-sess,charset=utf-8
    C: charset=utf-8,username="…",realm="…",nonce="…",nc=00000001,cnonce="…",
       digest-uri="tsp/<host>",response=<32 hex>,qop=auth
    S: rspauth=<32 hex>
    S: 200 Success                      (the TSP layer's line, a separate write)

The server needs only ``H(username:realm:password)`` (:func:`digest_ha1`), so the broker
stores that 16-byte value instead of the password. With it (RFC 2831 §2.1.2.1)::

    A1       = H(username:realm:password) ":" nonce ":" cnonce [":" authzid]
    A2       = "AUTHENTICATE:" digest-uri       (rspauth: ":" digest-uri)
    response = HEX(H(HEX(H(A1)) ":" nonce ":" nc ":" cnonce ":" qop ":" HEX(H(A2))))

gogoc interop, read from its source and measured (tsp.md §2.4):

* It splits the challenge on commas and strips quotes, so nothing we send may hold a
  comma, quote or backslash inside a value.
* Its digest-uri is ``tsp/`` plus the server name from its own config, verbatim, so the
  server verifies with the digest-uri the client sent and checks only the service part.
* It hashes the raw UTF-8 bytes of username and password. RFC 2831 §2.1.2.1 asks for a
  conversion to ISO 8859-1 when possible; we follow gogoc, which is the same for ASCII.
* When the session's TSP version is 2.0.0 or older, gogoc (``SUPPORT_MD5_BUG1455``) builds
  A1 with C string functions, so a NUL byte inside ``H(username:realm:password)`` cuts A1
  short there, dropping nonce and cnonce. About 6% of accounts hit this.
  :meth:`DigestServer.verify` accepts that form when ``allow_legacy_a1`` is set.

Nonces and cnonces are arguments: nothing here draws randomness or reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from tunnelbroker.protocols.sasl.errors import AuthenticationFailed, MalformedResponse

#: RFC 2831 §2.1.2: "The size of a digest-response MUST be less than 4096 bytes." The same
#: cap is applied to challenges (which must be under 2048) and to rspauth.
MAX_DIGEST_SIZE = 4096
#: The only nonce count of an initial authentication (RFC 2831 §2.1.3).
INITIAL_NC = "00000001"

# base64 of MAX_DIGEST_SIZE bytes, plus slack for CR/LF, NULs and blanks around it.
_MAX_B64_LINE = 4 * ((MAX_DIGEST_SIZE + 2) // 3) + 64
_HA1_SIZE = 16
# RFC 2616 §2.2 separators; a token is any other visible US-ASCII character.
_SEPARATORS = frozenset('()<>@,;:\\"/[]?={} \t')
_LWS = " \t\r\n"
_HEX = frozenset("0123456789abcdefABCDEF")


# --- base64 lines ---------------------------------------------------------------------------


def encode_b64_line(raw: bytes) -> bytes:
    """One TSP SASL line: ``base64(raw) + b"\\r\\n"``."""
    return base64.b64encode(raw) + b"\r\n"


def decode_b64_line(line: bytes) -> bytes:
    """Decode one base64 SASL line, ignoring surrounding blanks, NULs and CR/LF.

    Missing ``=`` padding is tolerated; any other defect is not.

    Raises:
        MalformedResponse: oversized or not base64.
    """
    if len(line) > _MAX_B64_LINE:
        raise MalformedResponse("base64 line too long")
    data = line.strip(b" \t\r\n\0")
    data += b"=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponse("invalid base64") from exc


# --- hashing --------------------------------------------------------------------------------


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def digest_ha1(username: str, realm: str, password: str) -> bytes:
    """``H(username:realm:password)``, the 16 bytes the broker stores per user and realm."""
    return _md5(f"{username}:{realm}:{password}".encode())


def ha1_hex(username: str, realm: str, password: str) -> str:
    """:func:`digest_ha1` as 32 lowercase hex digits, for storage as text."""
    return digest_ha1(username, realm, password).hex()


def session_key(ha1: bytes, nonce: str, cnonce: str, authzid: str | None = None) -> bytes:
    """``H(A1)`` for md5-sess; ``authzid`` joins A1 only when the client sent one."""
    a1 = ha1 + f":{nonce}:{cnonce}".encode()
    if authzid is not None:
        a1 += f":{authzid}".encode()
    return _md5(a1)


def _legacy_session_key(ha1: bytes) -> bytes:
    # gogoc SUPPORT_MD5_BUG1455: md5(A1, strlen(A1)) stops at the first NUL of H(...).
    return _md5(ha1[: ha1.index(0)])


def _kd(
    key: bytes, *, nonce: str, nc: str, cnonce: str, qop: str, digest_uri: str, rspauth: bool
) -> str:
    # A2 has no method for rspauth (RFC 2831 §2.1.3); qop=auth has no ":000…" suffix.
    a2 = f"{'' if rspauth else 'AUTHENTICATE'}:{digest_uri}"
    return _md5_hex(f"{key.hex()}:{nonce}:{nc}:{cnonce}:{qop}:{_md5_hex(a2.encode())}".encode())


def response_value(
    ha1: bytes,
    *,
    nonce: str,
    cnonce: str,
    nc: str,
    qop: str,
    digest_uri: str,
    authzid: str | None = None,
    rspauth: bool = False,
) -> str:
    """RFC 2831 §2.1.2.1 ``response-value`` (or, with ``rspauth=True``, §2.1.3's rspauth).

    Values are hashed as given: RFC 2831 preserves the client's case of qop and digest-uri.
    """
    key = session_key(ha1, nonce, cnonce, authzid)
    return _kd(
        key, nonce=nonce, nc=nc, cnonce=cnonce, qop=qop, digest_uri=digest_uri, rspauth=rspauth
    )


# --- directive lists ------------------------------------------------------------------------


def _is_ctl(ch: str) -> bool:
    return ch < " " or ch == "\x7f"


def _is_token(value: str) -> bool:
    return bool(value) and all(
        ch < "\x80" and not _is_ctl(ch) and ch not in _SEPARATORS for ch in value
    )


def _skip_lws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _LWS:
        pos += 1
    return pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string body from just after its opening quote."""
    chars: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(chars), pos + 1
        if ch == "\\":
            # quoted-pair = "\" CHAR: the next character stands for itself.
            pos += 1
            if pos == len(text):
                break
            ch = text[pos]
        # TEXT allows LWS but no other CTL; CR/LF folding has no use inside one SASL line.
        if _is_ctl(ch) and ch not in " \t":
            raise MalformedResponse(f"control character U+{ord(ch):04X} in a quoted string")
        chars.append(ch)
        pos += 1
    raise MalformedResponse("unterminated quoted string")


def _read_bare(text: str, pos: int) -> tuple[str, int]:
    """Read an unquoted value: up to the next comma or blank.

    RFC 2831 wants a token here, but the RFC 5572 example challenge sends realm and nonce
    unquoted, and a base64 nonce holds "=", so any visible character but a quote or
    backslash is taken.
    """
    start = pos
    while pos < len(text) and text[pos] != "," and text[pos] not in _LWS:
        ch = text[pos]
        if ch in '"\\' or _is_ctl(ch):
            raise MalformedResponse(f"unexpected {ch!r} in an unquoted value")
        pos += 1
    if pos == start:
        raise MalformedResponse("empty unquoted value")
    return text[start:pos], pos


def _parse_directives(raw: bytes) -> list[tuple[str, str]]:
    """Parse an RFC 2831 ``1#( name "=" ( token | quoted-string ) )`` list.

    Names are returned lowercased (they are case-insensitive); values have their quotes
    and escapes removed. Empty list elements are skipped, as the ``#rule`` allows.
    """
    if len(raw) > MAX_DIGEST_SIZE:
        raise MalformedResponse(f"DIGEST-MD5 message longer than {MAX_DIGEST_SIZE} bytes")
    try:
        text = raw.strip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedResponse("DIGEST-MD5 message is not valid UTF-8") from exc
    directives: list[tuple[str, str]] = []
    pos = 0
    while True:
        while pos < len(text) and (text[pos] in _LWS or text[pos] == ","):
            pos += 1
        if pos == len(text):
            return directives
        start = pos
        while pos < len(text) and _is_token(text[pos]):
            pos += 1
        name = text[start:pos]
        if not name:
            raise MalformedResponse(f"expected a directive name at offset {start}")
        pos = _skip_lws(text, pos)
        if pos == len(text) or text[pos] != "=":
            raise MalformedResponse(f"expected '=' after {name!r}")
        pos = _skip_lws(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            value, pos = _read_quoted(text, pos + 1)
        else:
            value, pos = _read_bare(text, pos)
        directives.append((name.lower(), value))
        pos = _skip_lws(text, pos)
        if pos < len(text) and text[pos] != ",":
            raise MalformedResponse(f"expected ',' after the value of {name!r}")


def _collect(
    directives: list[tuple[str, str]], singletons: frozenset[str], what: str
) -> dict[str, str]:
    """The first value of each name; a second one of a ``singletons`` name is an error."""
    values: dict[str, str] = {}
    for name, value in directives:
        if name in values:
            if name in singletons:
                raise MalformedResponse(f"{what} repeats {name!r}")
            continue
        values[name] = value
    return values


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_quotable(name: str, value: str) -> None:
    if any(_is_ctl(ch) and ch != "\t" for ch in value):
        raise ValueError(f"{name} must not contain control characters")


def _check_gogoc_safe(name: str, value: str) -> None:
    # gogoc splits challenges on commas and does not unescape: keep values it can read.
    if not value:
        raise ValueError(f"{name} must not be empty")
    if any(ch in ',"\\' or _is_ctl(ch) for ch in value):
        raise ValueError(f"{name} must not contain commas, quotes, backslashes or controls")


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(ch in _HEX for ch in value)


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """The server's ``digest-challenge`` (RFC 2831 §2.1.1).

    ``qop`` holds the qop-options as sent (possibly a comma list); ``charset`` is ``None``
    when the directive is absent.
    """

    realm: str
    nonce: str
    qop: str = "auth"
    algorithm: str = "md5-sess"
    charset: str | None = "utf-8"

    def to_bytes(self) -> bytes:
        """``realm="…",nonce="…",qop="auth",algorithm=md5-sess,charset=utf-8``.

        Raises:
            ValueError: a realm or nonce that gogoc could not read back (empty, or holding a
                comma, quote, backslash or control character), or an unquotable option.
        """
        _check_gogoc_safe("realm", self.realm)
        _check_gogoc_safe("nonce", self.nonce)
        _check_gogoc_safe("qop", self.qop)
        if not _is_token(self.algorithm):
            raise ValueError("algorithm must be a token")
        parts = [
            f'realm="{self.realm}"',
            f'nonce="{self.nonce}"',
            f'qop="{self.qop}"',
            f"algorithm={self.algorithm}",
        ]
        if self.charset is not None:
            if not _is_token(self.charset):
                raise ValueError("charset must be a token")
            parts.append(f"charset={self.charset}")
        return ",".join(parts).encode()


@dataclass(frozen=True, slots=True)
class DigestResponse:
    """The client's ``digest-response`` (RFC 2831 §2.1.2).

    ``realm`` is ``""`` when absent (as A1 then uses); ``charset`` and ``authzid`` are
    ``None`` when absent. ``response`` is kept as sent; it is compared case-insensitively.
    """

    username: str
    realm: str
    nonce: str
    cnonce: str
    nc: str
    qop: str
    digest_uri: str
    response: str
    charset: str | None = None
    authzid: str | None = None

    def to_bytes(self) -> bytes:
        """Render in gogoc's exact order, quoting and escaping where RFC 2831 quotes.

        Raises:
            ValueError: a control character in a quoted value, or a bare value that is not
                a token.
        """
        quoted = {
            "username": self.username,
            "realm": self.realm,
            "nonce": self.nonce,
            "cnonce": self.cnonce,
            "digest-uri": self.digest_uri,
        }
        if self.authzid is not None:
            quoted["authzid"] = self.authzid
        for name, value in quoted.items():
            _check_quotable(name, value)
        bare = {"nc": self.nc, "response": self.response, "qop": self.qop}
        if self.charset is not None:
            bare["charset"] = self.charset
        for name, value in bare.items():
            if not _is_token(value):
                raise ValueError(f"{name} must be a token")
        parts = [] if self.charset is None else [f"charset={self.charset}"]
        parts += [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"nc={self.nc}",
            f"cnonce={_quote(self.cnonce)}",
            f"digest-uri={_quote(self.digest_uri)}",
            f"response={self.response}",
            f"qop={self.qop}",
        ]
        if self.authzid is not None:
            parts.append(f"authzid={_quote(self.authzid)}")
        return ",".join(parts).encode()


_CHALLENGE_SINGLETONS = frozenset(
    {"nonce", "qop", "stale", "maxbuf", "charset", "algorithm", "cipher"}
)
_RESPONSE_SINGLETONS = frozenset(
    {
        "username",
        "realm",
        "nonce",
        "cnonce",
        "nc",
        "qop",
        "digest-uri",
        "response",
        "maxbuf",
        "charset",
        "cipher",
        "authzid",
    }
)
_RESPONSE_REQUIRED = ("username", "nonce", "cnonce", "nc", "digest-uri", "response")


def parse_challenge(raw: bytes) -> DigestChallenge:
    """Parse a server challenge (client side); values may be quoted or bare.

    RFC 2831 allows several realms; the first is taken. A missing qop means ``auth`` and a
    missing algorithm ``md5-sess`` (gogoc ignores it too).

    Raises:
        MalformedResponse: bad syntax, a repeated singleton directive, no nonce, no ``auth``
            among the qop-options, an algorithm other than md5-sess, or a charset that
            could not be echoed as a token.
    """
    values = _collect(_parse_directives(raw), _CHALLENGE_SINGLETONS, "challenge")
    nonce = values.get("nonce", "")
    if not nonce:
        raise MalformedResponse("challenge has no nonce")
    qop = values.get("qop", "auth")
    if "auth" not in (option.strip(_LWS).lower() for option in qop.split(",")):
        raise MalformedResponse(f"challenge offers no qop=auth (qop={qop!r})")
    algorithm = values.get("algorithm", "md5-sess")
    if algorithm.lower() != "md5-sess":
        raise MalformedResponse(f"unsupported algorithm {algorithm!r}")
    charset = values.get("charset")
    if charset is not None and not _is_token(charset):
        raise MalformedResponse("challenge charset is not a token")
    return DigestChallenge(
        realm=values.get("realm", ""),
        nonce=nonce,
        qop=qop,
        algorithm=algorithm,
        charset=charset,
    )


def parse_digest_response(raw: bytes) -> DigestResponse:
    """Parse a client's digest-response (server side). Unknown directives are ignored.

    Raises:
        MalformedResponse: over :data:`MAX_DIGEST_SIZE`, bad syntax or UTF-8, a repeated
            directive, a missing required one (username, nonce, cnonce, nc, digest-uri,
            response), an empty username, or nc/response that are not 8/32 hex digits.
    """
    values = _collect(_parse_directives(raw), _RESPONSE_SINGLETONS, "response")
    missing = [name for name in _RESPONSE_REQUIRED if name not in values]
    if missing:
        raise MalformedResponse(f"response lacks {', '.join(missing)}")
    if not values["username"]:
        raise MalformedResponse("response has an empty username")
    if not _is_hex(values["nc"], 8):
        raise MalformedResponse("nc is not 8 hex digits")
    if not _is_hex(values["response"], 32):
        raise MalformedResponse("response is not 32 hex digits")
    return DigestResponse(
        username=values["username"],
        realm=values.get("realm", ""),
        nonce=values["nonce"],
        cnonce=values["cnonce"],
        nc=values["nc"],
        qop=values.get("qop", "auth"),
        digest_uri=values["digest-uri"],
        response=values["response"],
        charset=values.get("charset"),
        authzid=values.get("authzid"),
    )


def _digest_equal(expected: str, received: str) -> bool:
    return hmac.compare_digest(expected.encode(), received.lower().encode())


# --- the two ends ---------------------------------------------------------------------------


class DigestServer:
    """One DIGEST-MD5 exchange, server side: one challenge, at most one verification.

    Typical use by the TSP layer::

        server = DigestServer(realm, nonce)
        send(encode_b64_line(server.challenge()))
        response = parse_digest_response(decode_b64_line(line))
        send(encode_b64_line(server.verify(response, store.ha1(response.username, realm))))
    """

    def __init__(self, realm: str, nonce: str) -> None:
        """Raises ValueError if realm or nonce cannot go into a gogoc-readable challenge."""
        self._challenge = DigestChallenge(realm=realm, nonce=nonce)
        # Rendered now so that a bad realm or nonce fails at construction, not mid-session.
        self._challenge_bytes = self._challenge.to_bytes()
        self._answered = False

    @property
    def realm(self) -> str:
        return self._challenge.realm

    @property
    def nonce(self) -> str:
        return self._challenge.nonce

    def challenge(self) -> bytes:
        """The raw challenge; the same bytes every time, so retransmissions may resend it."""
        return self._challenge_bytes

    def verify(
        self,
        response: DigestResponse,
        ha1: bytes | None,
        *,
        expected_service: str = "tsp",
        allow_legacy_a1: bool = False,
    ) -> bytes:
        """Check a client's response and return the raw ``rspauth=<hex>`` to send back.

        Args:
            response: the parsed digest-response.
            ha1: the stored :func:`digest_ha1` of ``response.username`` in our realm, or
                ``None`` for an unknown user.
            expected_service: the serv-type the digest-uri must start with. Its host part
                is not checked: gogoc puts its configured server string there verbatim.
            allow_legacy_a1: also accept gogoc's truncated A1 (see the module docstring);
                set it when the TSP session negotiated version 2.0.0 or older.

        Raises:
            AuthenticationFailed: unknown user, a second attempt on this challenge, nonce
                or realm mismatch, qop other than auth, nc other than 00000001, a foreign
                service, an authzid other than the username, or a wrong response.
            ValueError: ``ha1`` is not 16 bytes (a store bug).
        """
        if ha1 is not None and len(ha1) != _HA1_SIZE:
            raise ValueError(f"ha1 must be {_HA1_SIZE} bytes, got {len(ha1)}")
        # One attempt per nonce: RFC 2831 §2.1.3 checks nc, and a second answer to the same
        # challenge is a replay whatever its nc says.
        if self._answered:
            raise AuthenticationFailed("challenge already answered")
        self._answered = True
        if ha1 is None:
            raise AuthenticationFailed(f"unknown user {response.username!r}")
        if response.nonce != self.nonce:
            raise AuthenticationFailed("nonce does not match the challenge")
        if response.realm != self.realm:
            raise AuthenticationFailed(f"realm {response.realm!r} is not ours")
        if response.qop.lower() != "auth":
            raise AuthenticationFailed(f"unsupported qop {response.qop!r}")
        if response.nc != INITIAL_NC:
            raise AuthenticationFailed(f"nonce count {response.nc} is not {INITIAL_NC}")
        service, slash, host = response.digest_uri.partition("/")
        if not slash or not host or service.lower() != expected_service.lower():
            raise AuthenticationFailed(f"digest-uri {response.digest_uri!r} is not for us")
        # RFC 2831 §2.1.2: an authzid the server does not support must fail. We support only
        # acting as oneself, which an empty authzid also means.
        if response.authzid not in (None, "", response.username):
            raise AuthenticationFailed("authzid differs from the username")

        def kd(key: bytes, rspauth: bool) -> str:
            return _kd(
                key,
                nonce=response.nonce,
                nc=response.nc,
                cnonce=response.cnonce,
                qop=response.qop,
                digest_uri=response.digest_uri,
                rspauth=rspauth,
            )

        keys = [session_key(ha1, response.nonce, response.cnonce, response.authzid)]
        if allow_legacy_a1 and 0 in ha1 and response.authzid is None:
            keys.append(_legacy_session_key(ha1))
        for key in keys:
            if _digest_equal(kd(key, rspauth=False), response.response):
                return b"rspauth=" + kd(key, rspauth=True).encode()
        raise AuthenticationFailed(f"wrong response for {response.username!r}")


class DigestClient:
    """One DIGEST-MD5 exchange, client side, producing gogoc's exact response bytes."""

    def __init__(
        self,
        username: str,
        password: str,
        cnonce: str,
        service: str = "tsp",
        *,
        host: str,
        authzid: str | None = None,
    ) -> None:
        """``cnonce`` comes from the caller (gogoc uses the Unix time); ``host`` goes into
        ``digest-uri="<service>/<host>"``.

        Raises:
            ValueError: empty username, cnonce or host, a non-token service, or control
                characters in a value that travels quoted.
        """
        if not username or not cnonce or not host:
            raise ValueError("username, cnonce and host must not be empty")
        if not _is_token(service):
            raise ValueError("service must be a token")
        for name, value in (("username", username), ("cnonce", cnonce), ("host", host)):
            _check_quotable(name, value)
        if authzid is not None:
            _check_quotable("authzid", authzid)
        self._username = username
        self._password = password
        self._cnonce = cnonce
        self._digest_uri = f"{service}/{host}"
        self._authzid = authzid
        self._expected_rspauth: str | None = None

    def respond(self, challenge_raw: bytes) -> bytes:
        """Answer the raw (base64-decoded) challenge with a raw digest-response.

        Raises:
            MalformedResponse: the challenge cannot be parsed or offers nothing we support.
            RuntimeError: called twice; a cnonce must not be reused.
        """
        if self._expected_rspauth is not None:
            raise RuntimeError("respond() was already called for this exchange")
        challenge = parse_challenge(challenge_raw)
        ha1 = digest_ha1(self._username, challenge.realm, self._password)
        key = session_key(ha1, challenge.nonce, self._cnonce, self._authzid)

        def kd(rspauth: bool) -> str:
            return _kd(
                key,
                nonce=challenge.nonce,
                nc=INITIAL_NC,
                cnonce=self._cnonce,
                qop="auth",
                digest_uri=self._digest_uri,
                rspauth=rspauth,
            )

        response = kd(rspauth=False)
        self._expected_rspauth = kd(rspauth=True)
        return DigestResponse(
            username=self._username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            cnonce=self._cnonce,
            nc=INITIAL_NC,
            qop="auth",
            digest_uri=self._digest_uri,
            response=response,
            charset=challenge.charset,
            authzid=self._authzid,
        ).to_bytes()

    def check_rspauth(self, raw: bytes) -> None:
        """Check the server's raw ``rspauth=<hex>`` (mutual authentication).

        Raises:
            AuthenticationFailed: the rspauth does not prove the server knows our secret.
            MalformedResponse: no single rspauth directive could be parsed.
            RuntimeError: :meth:`respond` has not been called.
        """
        if self._expected_rspauth is None:
            raise RuntimeError("check_rspauth() before respond()")
        rspauth = [value for name, value in _parse_directives(raw) if name == "rspauth"]
        if len(rspauth) != 1:
            raise MalformedResponse(f"expected one rspauth directive, got {len(rspauth)}")
        if not _digest_equal(self._expected_rspauth, rspauth[0]):
            raise AuthenticationFailed("server rspauth does not match")
