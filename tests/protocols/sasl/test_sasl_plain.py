"""PLAIN (RFC 4616) in gogoc's raw framing and in base64."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from tunnelbroker.protocols.sasl import (
    MAX_PLAIN_SIZE,
    MalformedResponse,
    PlainCredentials,
    encode_plain,
    parse_plain,
)


@pytest.mark.parametrize(
    "message",
    [
        b"\0alice\0secret\r\n",  # gogoc, tsp.md §2.4
        b"\0\0alice\0secret\r\n",  # over TCP, with the AUTHENTICATE line's NUL glued on
        b"\0\0\0alice\0secret\n",
        b"\0alice\0secret",
        b"alice\0secret\r\n",
    ],
)
def test_gogoc_forms(message: bytes) -> None:
    assert parse_plain(message) == PlainCredentials("", "alice", "secret")


def test_authzid() -> None:
    assert parse_plain(b"admin\0alice\0secret\r\n") == PlainCredentials("admin", "alice", "secret")
    assert parse_plain(b"\0admin\0alice\0secret\r\n") == PlainCredentials(
        "admin", "alice", "secret"
    )


def test_base64_form() -> None:
    # RFC 4616 §4 example message, as a textbook client would base64 it.
    message = base64.b64encode(b"\0tim\0tanstaaftanstaaf") + b"\r\n"
    assert parse_plain(message) == PlainCredentials("", "tim", "tanstaaftanstaaf")
    message = base64.b64encode(b"Ursel\0Kurt\0xipj3plmq")
    assert parse_plain(message) == PlainCredentials("Ursel", "Kurt", "xipj3plmq")


def test_base64_form_must_be_rfc_proper() -> None:
    # Decodes fine, but holds only one separator: the raw-form leniency does not apply.
    with pytest.raises(MalformedResponse):
        parse_plain(base64.b64encode(b"alice\0secret"))


def test_utf8() -> None:
    creds = parse_plain("\0jürgen\0pässwörd ✓\r\n".encode())
    assert creds == PlainCredentials("", "jürgen", "pässwörd ✓")


def test_password_keeps_inner_and_trailing_blanks() -> None:
    assert parse_plain(b"\0alice\0 se cret \r\n").password == " se cret "


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\r\n",
        b"\0\0\0",
        b"\0\0secret\r\n",  # stripping leading NULs leaves no separator: treated as base64
        b"alice\0\0secret",  # authzid given, authcid empty
        b"\0alice\0\r\n",  # empty password (RFC 4616: passwd = 1*SAFE)
        b"a\0b\0c\0d",  # three separators
        b"\0al\xffce\0secret",  # not UTF-8
        b"not base64!",
        b"\0" + b"a" * MAX_PLAIN_SIZE + b"\0secret",
    ],
)
def test_malformed(message: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_plain(message)


def test_encode_is_gogoc_form() -> None:
    assert encode_plain("alice", "secret") == b"\0alice\0secret\r\n"
    assert encode_plain("alice", "secret", authzid="admin") == b"admin\0alice\0secret\r\n"
    assert parse_plain(encode_plain("jürgen", "pä ss", "x")) == PlainCredentials(
        "x", "jürgen", "pä ss"
    )


@pytest.mark.parametrize(
    ("authcid", "password", "authzid"),
    [
        ("", "secret", ""),
        ("alice", "", ""),
        ("al\0ice", "s", ""),
        ("a", "s\0", ""),
        ("a", "s", "\0"),
    ],
)
def test_encode_rejects_bad_fields(authcid: str, password: str, authzid: str) -> None:
    with pytest.raises(ValueError):
        encode_plain(authcid, password, authzid)


def test_password_not_in_repr() -> None:
    creds = parse_plain(b"\0alice\0hunter2\r\n")
    assert "hunter2" not in repr(creds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.password = "x"  # type: ignore[misc]
