"""TIC errors. The protocol has one failure reply, ``400 <text>``; the text says why."""

from __future__ import annotations


class TicError(Exception):
    """Base of all TIC errors."""


class LocalProtocolError(TicError):
    """Our own side misused the API, or the backend gave values the wire cannot carry."""


class RemoteProtocolError(TicError):
    """The peer sent something invalid. ``fatal``: the connection cannot go on."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
