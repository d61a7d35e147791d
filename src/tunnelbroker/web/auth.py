"""Who is calling: account passwords (HTTP Basic), API tokens (Bearer), tunnel update keys.

Passwords are checked with argon2 on a worker thread (the event loop never blocks on it).
Failures are rate-limited per client address, so guessing is slow however it is spread
over accounts; successes are never limited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from tunnelbroker.broker.limits import KeyedRateLimiter
from tunnelbroker.broker.users import UserService
from tunnelbroker.store import Store, UserRecord

#: Tokens look like ``tb_`` + 32 URL-safe characters: recognisable in logs and secret scanners.
TOKEN_PREFIX = "tb_"


def new_token() -> tuple[str, str]:
    """A fresh API token and the SHA-256 hex that is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic ...`` -> (user, password), or None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def same_secret(given: str, stored: str | None) -> bool:
    """Constant-time comparison of a presented secret with a stored one."""
    return stored is not None and hmac.compare_digest(given.encode(), stored.encode())


@dataclass
class Authenticator:
    """Checks credentials and counts failures per client address."""

    users: UserService
    store: Store
    failures: KeyedRateLimiter[str]

    def retry_after(self, client: str, now: float) -> float:
        """Seconds this address must wait after too many failures (0: go ahead)."""
        return self.failures.retry_after(client, now)

    def failed(self, client: str, now: float) -> None:
        self.failures.allow(client, now)

    async def password(self, name: str, password: str) -> UserRecord | None:
        if not name or not password or len(password) > 1024:
            return None
        return await asyncio.to_thread(self.users.authenticate_plain, name, password)

    async def token(self, token: str, now: float) -> UserRecord | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        record = await asyncio.to_thread(self.store.find_token, token_hash(token), now)
        if record is None:
            return None
        user = await asyncio.to_thread(self.store.get_user_by_id, record.user_id)
        return None if user is None or user.disabled else user
