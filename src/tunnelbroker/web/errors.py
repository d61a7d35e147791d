"""Errors the web layer turns into answers."""

from __future__ import annotations


class PortalError(Exception):
    """A page-level error: shown to the user as a page with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
