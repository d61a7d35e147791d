"""Accounts: password hashing, the DIGEST-MD5 secret, validation and :class:`UserService`.

Each user has two secrets, both derived from the password when it is set:

* an argon2id hash (``password_hash``), checked for SASL PLAIN (and any web login);
* ``digest_ha1`` = MD5(``name:realm:password``), the secret SASL DIGEST-MD5 (RFC 2831 §2.1.2.1)
  needs. It is password-equivalent for DIGEST-MD5 and bound to the realm; docs/store.md says
  what that implies.

Argon2id parameters: 19 MiB of memory, 2 passes, 1 lane (OWASP's minimum recommendation,
RFC 9106 §4's shape). One hash or verify takes about 15 ms on a 2020s x86 core, so a PLAIN
login costs little yet an offline guess costs as much. Hashes made with other parameters still
verify, and are re-hashed with these on the next successful login.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tunnelbroker.store import Store, StoreError, UserRecord

log = logging.getLogger(__name__)

#: argon2id cost: time (passes), memory (KiB), parallelism (lanes). See the module docstring.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST = 19 * 1024
ARGON2_PARALLELISM = 1

USERNAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024

_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST,
    parallelism=ARGON2_PARALLELISM,
)
_USERNAME = re.compile(r"[A-Za-z0-9._-]+")


class InvalidUsername(ValueError):
    """A user name that cannot be stored or sent in TSP; the message says why."""


class InvalidPassword(ValueError):
    """A password that is too short, too long or cannot be sent in TSP; the message says why."""


def hash_password(password: str) -> str:
    """The argon2id PHC string (``$argon2id$v=19$m=19456,t=2,p=1$...``) for ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False for a malformed hash too."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` was made with other parameters than today's."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def digest_ha1_hex(name: str, realm: str, password: str) -> str:
    """MD5(``name:realm:password``) in hex: DIGEST-MD5's HA1 without the nonces (RFC 2831)."""
    return hashlib.md5(f"{name}:{realm}:{password}".encode()).hexdigest()


def tic_md5_hex(password: str) -> str:
    """MD5(password) in lowercase hex: TIC's ``challenge md5`` secret (sixxs.md §2.4).

    Weak by design of the protocol, like the DIGEST-MD5 HA1: whoever reads it can log in over
    TIC (not over PLAIN or the web, which check the argon2 hash).
    """
    return hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()


def validate_username(name: str) -> None:
    """Raise :class:`InvalidUsername` unless ``name`` is 1-64 of ``A-Z a-z 0-9 . _ -``."""
    if not name:
        raise InvalidUsername("the user name is empty")
    if len(name) > USERNAME_MAX:
        raise InvalidUsername(f"the user name is longer than {USERNAME_MAX} characters")
    if not _USERNAME.fullmatch(name):
        raise InvalidUsername(
            f"the user name {name!r} may contain only letters A-Z and a-z, digits, '.', '_' and '-'"
        )


def validate_password(password: str) -> None:
    """Raise :class:`InvalidPassword` unless ``password`` is 8-1024 characters, with no NUL,
    CR or LF (SASL PLAIN separates its fields with NUL; TSP lines end with CR LF)."""
    if len(password) < PASSWORD_MIN:
        raise InvalidPassword(f"the password is shorter than {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise InvalidPassword(f"the password is longer than {PASSWORD_MAX} characters")
    if any(c in password for c in "\0\r\n"):
        raise InvalidPassword("the password contains NUL, CR or LF, which TSP cannot carry")


class UserService:
    """Users of one broker, whose DIGEST-MD5 realm is ``realm``.

    Args:
        store: where users live.
        realm: ``config.broker.realm``.
        upgrade_on_login: after a successful PLAIN login, re-hash a password hashed with old
            argon2 parameters, and recompute a digest secret made for another realm.
    """

    def __init__(self, store: Store, realm: str, *, upgrade_on_login: bool = True) -> None:
        self.store = store
        self.realm = realm
        self.upgrade_on_login = upgrade_on_login
        self._dummy_hash: str | None = None

    def add(
        self, name: str, password: str, is_admin: bool = False, now: float | None = None
    ) -> UserRecord:
        """Create a user.

        Raises:
            InvalidUsername, InvalidPassword: see :func:`validate_username` and
                :func:`validate_password`.
            UserExists: the name is taken.
        """
        validate_username(name)
        validate_password(password)
        return self.store.add_user(
            name,
            hash_password(password),
            digest_ha1_hex(name, self.realm, password),
            self.realm,
            is_admin=is_admin,
            now=time.time() if now is None else now,
            tic_md5=tic_md5_hex(password),
        )

    def get(self, name: str) -> UserRecord | None:
        """The user called ``name``, or None."""
        return self.store.get_user(name)

    def list(self) -> list[UserRecord]:
        """Every user, by name."""
        return self.store.list_users()

    def delete(self, name: str) -> bool:
        """Delete a user with their tunnels and allocations; False if unknown."""
        return self.store.delete_user(name)

    def set_password(self, name: str, password: str) -> bool:
        """Replace a user's password (both secrets, for the current realm); False if unknown.

        Raises:
            InvalidPassword: see :func:`validate_password`.
        """
        validate_password(password)
        return self.store.set_password(
            name,
            hash_password(password),
            digest_ha1_hex(name, self.realm, password),
            self.realm,
            tic_md5_hex(password),
        )

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable or enable a user; False if unknown."""
        return self.store.set_disabled(name, disabled)

    def authenticate_plain(self, name: str, password: str) -> UserRecord | None:
        """The user if ``password`` is theirs and they are enabled, else None.

        Costs one argon2 verify whether or not the user exists, so timing does not tell
        which names exist. Blocks for that long: call it from a worker thread.
        """
        user = self.store.get_user(name)
        if user is None:
            verify_password(self._dummy(), password)
            return None
        if not verify_password(user.password_hash, password) or user.disabled:
            return None
        if self.upgrade_on_login and (
            needs_rehash(user.password_hash) or user.realm != self.realm or user.tic_md5 is None
        ):
            self._upgrade(user, password)
        return user

    def tic_credentials(self, name: str) -> tuple[UserRecord, str] | None:
        """The user and their MD5(password) hex for TIC, or None if unknown, disabled, or not
        known yet (an account made before TIC: one PLAIN or web login fills it in)."""
        user = self.store.get_user(name)
        if user is None or user.disabled or user.tic_md5 is None:
            return None
        return user, user.tic_md5

    def digest_ha1(self, name: str) -> bytes | None:
        """The user's 16-byte HA1 for DIGEST-MD5, or None if unknown, disabled, or stored for
        another realm (the password must be set again, or used once with PLAIN)."""
        found = self.digest_credentials(name)
        return None if found is None else found[1]

    def digest_credentials(self, name: str) -> tuple[UserRecord, bytes] | None:
        """The user and their 16-byte HA1, or None as for :meth:`digest_ha1`."""
        user = self.store.get_user(name)
        if user is None or user.disabled or user.realm != self.realm:
            return None
        try:
            ha1 = bytes.fromhex(user.digest_ha1)
        except ValueError:
            return None
        return (user, ha1) if len(ha1) == 16 else None

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _upgrade(self, user: UserRecord, password: str) -> None:
        new_hash = hash_password(password)
        new_ha1 = digest_ha1_hex(user.name, self.realm, password)
        new_md5 = tic_md5_hex(password)
        try:
            self.store.set_password(user.name, new_hash, new_ha1, self.realm, new_md5)
        except StoreError as e:  # the login itself succeeded; try again next time
            log.warning("could not upgrade the stored secrets of user %r: %s", user.name, e)
            return
        user.password_hash, user.digest_ha1, user.realm = new_hash, new_ha1, self.realm
        user.tic_md5 = new_md5
