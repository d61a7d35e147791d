"""Portal sessions: a signed cookie (Starlette's SessionMiddleware), CSRF tokens and flashes.

The cookie holds only the user id, the CSRF token and when the session started; the signing
key lives in ``<data_dir>/web-session.key`` (made on first start, mode 0600), so sessions
survive restarts and are never forgeable without it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from fastapi import Request

from tunnelbroker.web.errors import PortalError


def session_key(data_dir: str) -> str:
    """The signing key, created on first use."""
    path = Path(data_dir) / "web-session.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, given: str | None) -> None:
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not given or not hmac.compare_digest(expected, given):
        raise PortalError(
            403, "The form expired or came from elsewhere: reload the page and try again."
        )


def log_in(request: Request, user_id: int) -> None:
    """A fresh session for this user (a new CSRF token too: no fixation)."""
    request.session.clear()
    request.session.update({"uid": user_id, "since": time.time()})
    csrf_token(request)


def session_user_id(request: Request, lifetime: int) -> int | None:
    uid, since = request.session.get("uid"), request.session.get("since")
    if not isinstance(uid, int) or not isinstance(since, (int, float)):
        return None
    if time.time() - since > lifetime:
        request.session.clear()
        return None
    return uid


def flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session.setdefault("flash", []).append([kind, message])


def take_flashes(request: Request) -> list[list[str]]:
    return list(request.session.pop("flash", []))
