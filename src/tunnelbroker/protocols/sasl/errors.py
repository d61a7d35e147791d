"""Exceptions raised by the SASL mechanisms.

Every failure caused by the peer's bytes is a :class:`SaslError`; anything else escaping a
parser is a bug. Misuse by our own code (a comma in a realm we were asked to send, calling
methods out of order) raises ``ValueError`` or ``RuntimeError`` instead, so that it is never
mistaken for a peer failing to authenticate.
"""

from __future__ import annotations


class SaslError(Exception):
    """Base of all failures caused by the peer's input. The TSP layer answers ``300``."""


class AuthenticationFailed(SaslError):
    """Well-formed input with wrong credentials: unknown user, bad digest, replay."""


class MalformedResponse(SaslError):
    """Input that cannot be parsed: bad base64, UTF-8, syntax, size or missing directives."""
