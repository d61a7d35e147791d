"""ANONYMOUS (RFC 4505): an optional, unauthenticated trace string.

gogoc sends nothing after ``AUTHENTICATE ANONYMOUS\\r\\n\\0``, so the usual input is empty or
a lone NUL. Any trace a client does send is only fit for a log line, so it is held to the
RFC's "trace" stringprep profile (§3): that keeps control and bidi-override characters out
of the logs.
"""

from __future__ import annotations

import stringprep

from tunnelbroker.protocols.sasl.errors import MalformedResponse

#: RFC 4505 §2: ``token = 1*255TCHAR``.
MAX_TRACE_CHARS = 255
# A UTF-8 character is at most 4 octets; allow a little framing around the token.
_MAX_TRACE_OCTETS = 4 * MAX_TRACE_CHARS + 16

# RFC 4505 §3: the tables of RFC 3454 whose characters the "trace" profile prohibits.
_PROHIBITED = (
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c8,  # change display properties
    stringprep.in_table_c9,  # tagging characters
)


def parse_anonymous(message: bytes) -> str:
    """Return the trace information of an ANONYMOUS message, ``""`` if there is none.

    Surrounding NULs and CR/LF/space are framing left by TSP and are dropped.

    Raises:
        MalformedResponse: bad UTF-8, more than 255 characters, or a character the
            "trace" profile prohibits.
    """
    if len(message) > _MAX_TRACE_OCTETS:
        raise MalformedResponse("ANONYMOUS trace too long")
    try:
        trace = message.strip(b"\0\r\n \t").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedResponse("ANONYMOUS trace is not valid UTF-8") from exc
    if len(trace) > MAX_TRACE_CHARS:
        raise MalformedResponse("ANONYMOUS trace longer than 255 characters")
    for ch in trace:
        if any(table(ch) for table in _PROHIBITED):
            raise MalformedResponse(f"ANONYMOUS trace contains prohibited U+{ord(ch):04X}")
    _check_bidi(trace)
    return trace


def _check_bidi(trace: str) -> None:
    # RFC 3454 §6, required by RFC 4505 §3: right-to-left text may not mix with
    # left-to-right text and must begin and end with a right-to-left character.
    if not any(stringprep.in_table_d1(ch) for ch in trace):
        return
    if any(stringprep.in_table_d2(ch) for ch in trace):
        raise MalformedResponse("ANONYMOUS trace mixes right-to-left and left-to-right text")
    if not (stringprep.in_table_d1(trace[0]) and stringprep.in_table_d1(trace[-1])):
        raise MalformedResponse("ANONYMOUS trace has misplaced right-to-left text")
