"""Passwords, the DIGEST-MD5 secret, name and password rules, and UserService."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from tunnelbroker.broker import users as users_module
from tunnelbroker.broker.users import (
    InvalidPassword,
    InvalidUsername,
    UserService,
    digest_ha1_hex,
    hash_password,
    needs_rehash,
    validate_password,
    validate_username,
    verify_password,
)
from tunnelbroker.protocols.sasl import digest_ha1, ha1_hex
from tunnelbroker.store import Store, UserExists

PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'tb.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def service(store: Store) -> UserService:
    return UserService(store, "testrealm")


# -- hashing ----------------------------------------------------------------------------------


def test_hash_is_argon2id_with_the_documented_parameters() -> None:
    h = hash_password(PASSWORD)
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert hash_password(PASSWORD) != h  # salted
    assert verify_password(h, PASSWORD)
    assert not verify_password(h, PASSWORD + "x")
    assert not needs_rehash(h)


@pytest.mark.parametrize("bad", ["", "plaintext", "$argon2id$v=19$m=1,t=1,p=1$bad$bad"])
def test_malformed_hashes_never_verify(bad: str) -> None:
    assert not verify_password(bad, PASSWORD)


def test_hashes_with_other_parameters_verify_but_need_rehash() -> None:
    old = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    assert verify_password(old, PASSWORD)
    assert needs_rehash(old)


def test_ha1_vector_matches_the_sasl_module_and_gogoc() -> None:
    # The HA1 the DIGEST-MD5 tests use for gogoc's exchange (user alice, realm testrealm).
    assert digest_ha1_hex("alice", "testrealm", "secret") == "5fb64a97dd09cf7960293cbd09f57def"
    assert digest_ha1_hex("alice", "testrealm", "secret") == ha1_hex("alice", "testrealm", "secret")
    assert bytes.fromhex(digest_ha1_hex("jürgen", "r", "pässword")) == digest_ha1(
        "jürgen", "r", "pässword"
    )
    assert digest_ha1_hex("u", "r", "p") == hashlib.md5(b"u:r:p").hexdigest()


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "alice", "A.b_c-9", "x" * 64])
def test_valid_usernames(name: str) -> None:
    validate_username(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * 65, "longer than 64"),
        ("a b", "may contain only"),
        ("jürgen", "may contain only"),
        ("a:b", "may contain only"),
        ("a\n", "may contain only"),
        ("a\0", "may contain only"),
    ],
)
def test_invalid_usernames(name: str, why: str) -> None:
    with pytest.raises(InvalidUsername, match=why):
        validate_username(name)
    assert issubclass(InvalidUsername, ValueError)


@pytest.mark.parametrize("password", ["12345678", "x" * 1024, "pässwörd ok", "tab\tis fine"])
def test_valid_passwords(password: str) -> None:
    validate_password(password)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("1234567", "shorter than 8"),
        ("x" * 1025, "longer than 1024"),
        ("password\0", "NUL, CR or LF"),
        ("pass\rword", "NUL, CR or LF"),
        ("pass\nword", "NUL, CR or LF"),
    ],
)
def test_invalid_passwords(password: str, why: str) -> None:
    with pytest.raises(InvalidPassword, match=why):
        validate_password(password)
    assert issubclass(InvalidPassword, ValueError)


# -- UserService ------------------------------------------------------------------------------


def test_add_stores_both_secrets(service: UserService, store: Store) -> None:
    u = service.add("alice", PASSWORD, is_admin=True, now=1_700_000_000.0)
    assert (u.name, u.is_admin, u.disabled, u.realm, u.created_at) == (
        "alice",
        True,
        False,
        "testrealm",
        1_700_000_000.0,
    )
    assert u.digest_ha1 == digest_ha1_hex("alice", "testrealm", PASSWORD)
    assert verify_password(u.password_hash, PASSWORD)
    assert store.get_user("alice") == u
    assert [x.name for x in service.list()] == ["alice"]


def test_add_validates_and_refuses_duplicates(service: UserService) -> None:
    with pytest.raises(InvalidUsername):
        service.add("no spaces", PASSWORD)
    with pytest.raises(InvalidPassword):
        service.add("alice", "short")
    service.add("alice", PASSWORD)
    with pytest.raises(UserExists):
        service.add("alice", PASSWORD)


def test_authenticate_plain(service: UserService) -> None:
    alice = service.add("alice", PASSWORD)
    assert service.authenticate_plain("alice", PASSWORD) == alice
    assert service.authenticate_plain("alice", "wrong password") is None
    assert service.authenticate_plain("ALICE", PASSWORD) is None
    assert service.authenticate_plain("bob", PASSWORD) is None
    assert service.set_disabled("alice", True)
    assert service.authenticate_plain("alice", PASSWORD) is None
    assert service.set_disabled("alice", False)
    assert service.authenticate_plain("alice", PASSWORD) is not None


def test_unknown_users_cost_one_verify_too(
    service: UserService, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = users_module.verify_password

    def counting(h: str, pw: str) -> bool:
        calls.append(h)
        return real(h, pw)

    monkeypatch.setattr(users_module, "verify_password", counting)
    assert service.authenticate_plain("nobody", PASSWORD) is None
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")


def test_digest_ha1(service: UserService, store: Store) -> None:
    alice = service.add("alice", PASSWORD)
    assert service.digest_ha1("alice") == digest_ha1("alice", "testrealm", PASSWORD)
    assert service.digest_credentials("alice") == (alice, service.digest_ha1("alice"))
    assert service.digest_ha1("bob") is None
    assert service.digest_credentials("bob") is None
    service.set_disabled("alice", True)
    assert service.digest_ha1("alice") is None
    assert service.digest_credentials("alice") is None
    store.add_user("mallory", "h", "not hex", "testrealm")
    store.add_user("trudy", "h", "abcd", "testrealm")
    assert service.digest_ha1("mallory") is None and service.digest_ha1("trudy") is None


def test_set_password_replaces_both_secrets(service: UserService) -> None:
    service.add("alice", PASSWORD)
    assert service.set_password("alice", "another password")
    assert service.authenticate_plain("alice", PASSWORD) is None
    assert service.authenticate_plain("alice", "another password") is not None
    assert service.digest_ha1("alice") == digest_ha1("alice", "testrealm", "another password")
    assert not service.set_password("bob", "another password")
    with pytest.raises(InvalidPassword):
        service.set_password("alice", "short")


def test_changing_the_realm_invalidates_ha1_until_a_plain_login(store: Store) -> None:
    UserService(store, "oldrealm").add("alice", PASSWORD)
    strict = UserService(store, "newrealm", upgrade_on_login=False)
    assert strict.digest_ha1("alice") is None
    assert strict.authenticate_plain("alice", PASSWORD) is not None
    assert strict.digest_ha1("alice") is None  # not upgraded
    service = UserService(store, "newrealm")
    assert service.authenticate_plain("alice", "wrong password") is None
    assert service.digest_ha1("alice") is None
    u = service.authenticate_plain("alice", PASSWORD)
    assert u is not None and u.realm == "newrealm"
    assert service.digest_ha1("alice") == digest_ha1("alice", "newrealm", PASSWORD)


def test_old_argon2_parameters_are_upgraded_on_login(store: Store, service: UserService) -> None:
    old = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    store.add_user("alice", old, digest_ha1_hex("alice", "testrealm", PASSWORD), "testrealm")
    assert service.authenticate_plain("alice", PASSWORD) is not None
    stored = store.get_user("alice")
    assert stored is not None and stored.password_hash != old
    assert not needs_rehash(stored.password_hash)
    assert verify_password(stored.password_hash, PASSWORD)


def test_delete(service: UserService) -> None:
    service.add("alice", PASSWORD)
    assert service.delete("alice")
    assert not service.delete("alice")
    assert service.get("alice") is None
