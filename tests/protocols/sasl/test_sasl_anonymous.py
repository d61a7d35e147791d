"""ANONYMOUS (RFC 4505)."""

from __future__ import annotations

import pytest

from tunnelbroker.protocols.sasl import MAX_TRACE_CHARS, MalformedResponse, parse_anonymous


@pytest.mark.parametrize("message", [b"", b"\0", b"\r\n", b"\0\r\n\0"])
def test_gogoc_sends_nothing(message: bytes) -> None:
    assert parse_anonymous(message) == ""


@pytest.mark.parametrize(
    ("message", "trace"),
    [
        (b"sirhc", "sirhc"),  # RFC 4505 §4
        (b"\0sirhc\r\n", "sirhc"),
        (b"chris@example.com", "chris@example.com"),
        ("Jürgen from café".encode(), "Jürgen from café"),
        ("\u05d0\u05d1 \u05d2".encode(), "\u05d0\u05d1 \u05d2"),  # right-to-left only
    ],
)
def test_trace(message: bytes, trace: str) -> None:
    assert parse_anonymous(message) == trace


def test_longest_trace() -> None:
    assert parse_anonymous(("é" * MAX_TRACE_CHARS).encode()) == "é" * MAX_TRACE_CHARS


@pytest.mark.parametrize(
    "message",
    [
        b"\xff\xfe",  # not UTF-8
        ("x" * (MAX_TRACE_CHARS + 1)).encode(),
        b"a" * 5000,
        b"evil\x1b[31mred",  # C.2.1 ASCII control
        "a\u0085b".encode(),  # C.2.2 non-ASCII control
        "a\ue000b".encode(),  # C.3 private use
        "a\ufffeb".encode(),  # C.4 non-character
        "a\u202eb".encode(),  # C.8 right-to-left override
        "\U000e0041".encode(),  # C.9 tagging character
        "\u05d0abc\u05d1".encode(),  # mixes right-to-left and left-to-right
        "\u05d0 1".encode(),  # right-to-left text not ending right-to-left
    ],
)
def test_rejected(message: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_anonymous(message)
