"""PLAIN (RFC 4616) as spoken by gogoc over TSP.

RFC 4616 §2 defines one client message::

    message = [authzid] UTF8NUL authcid UTF8NUL passwd

gogoc sends it raw, not base64, as its own message after ``AUTHENTICATE PLAIN\\r\\n\\0``::

    \\0alice\\0secret\\r\\n

Over TCP the NUL that ends the AUTHENTICATE line can arrive glued to the front of this
message, so one read may begin with several NULs (tsp.md §2.4). :func:`parse_plain`
therefore drops every leading NUL and then counts the NULs left: one separates authcid and
password, two also carry an authzid. A message without any NUL is tried as base64 of a
proper RFC 4616 message, which is what a textbook SASL client would send.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from tunnelbroker.protocols.sasl.errors import MalformedResponse

#: Cap on one PLAIN message. RFC 4616 §2 asks servers to accept 255 octets per field;
#: this leaves room for three of them, base64 expansion and stray NULs.
MAX_PLAIN_SIZE = 2048


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    """The fields of a PLAIN message. ``authzid`` is ``""`` when the client sent none."""

    authzid: str
    authcid: str
    # Kept out of repr so that logging the credentials never logs the password.
    password: str = field(repr=False)


def parse_plain(message: bytes) -> PlainCredentials:
    """Parse a PLAIN client message in gogoc's raw form or RFC 4616 base64.

    Raises:
        MalformedResponse: oversized input, bad UTF-8 or base64, a wrong number of NULs,
            or an empty authcid or password.
    """
    if len(message) > MAX_PLAIN_SIZE:
        raise MalformedResponse(f"PLAIN message longer than {MAX_PLAIN_SIZE} bytes")
    body = message.rstrip(b"\r\n").lstrip(b"\0")
    nuls = body.count(0)
    if nuls == 0:
        return _parse_base64(body)
    if nuls == 1:
        authcid, password = body.split(b"\0")
        return _credentials(b"", authcid, password)
    if nuls == 2:
        authzid, authcid, password = body.split(b"\0")
        return _credentials(authzid, authcid, password)
    raise MalformedResponse(f"PLAIN message has {nuls} NUL separators")


def encode_plain(authcid: str, password: str, authzid: str = "") -> bytes:
    """Render a PLAIN message the way gogoc sends it: ``[authzid]\\0authcid\\0password\\r\\n``.

    Raises:
        ValueError: an empty authcid or password, or a NUL inside any field.
    """
    if not authcid or not password:
        raise ValueError("PLAIN needs a non-empty authcid and password")
    if "\0" in authzid or "\0" in authcid or "\0" in password:
        raise ValueError("PLAIN fields must not contain NUL")
    return f"{authzid}\0{authcid}\0{password}\r\n".encode()


def _parse_base64(body: bytes) -> PlainCredentials:
    if not body:
        raise MalformedResponse("empty PLAIN message")
    try:
        decoded = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponse("PLAIN message is neither NUL-separated nor base64") from exc
    # The base64 form comes from an RFC 4616 client, so it gets the RFC's grammar exactly:
    # both separators present, no leading-NUL tolerance.
    parts = decoded.split(b"\0")
    if len(parts) != 3:
        raise MalformedResponse("base64 PLAIN message does not hold authzid\\0authcid\\0passwd")
    return _credentials(parts[0], parts[1], parts[2])


def _credentials(authzid: bytes, authcid: bytes, password: bytes) -> PlainCredentials:
    try:
        creds = PlainCredentials(
            authzid=authzid.decode("utf-8"),
            authcid=authcid.decode("utf-8"),
            password=password.decode("utf-8"),
        )
    except UnicodeDecodeError as exc:
        raise MalformedResponse("PLAIN message is not valid UTF-8") from exc
    if not creds.authcid:
        raise MalformedResponse("PLAIN message has an empty authcid")
    # RFC 4616 §2: passwd = 1*SAFE, so an empty password is a syntax error, not a wrong one.
    if not creds.password:
        raise MalformedResponse("PLAIN message has an empty password")
    return creds
