"""Store round trips, on SQLite and on a real PostgreSQL (see conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from pathlib import Path

import pytest

from tunnelbroker.store import (
    AllocationRecord,
    Applied,
    Changes,
    Store,
    StoreError,
    TunnelRecord,
    UserExists,
    UserRecord,
)
from tunnelbroker.store.database import normalize_url

HA1 = "5fb64a97dd09cf7960293cbd09f57def"


def tunnel(i: int = 0, *, user_id: int | None = None, state: str = "active") -> TunnelRecord:
    return TunnelRecord(
        id=None,
        user_id=user_id,
        kind="tsp",
        type="v6udpv4",
        state=state,
        transport="udp",
        client_ipv4=f"198.51.100.{i % 250}",
        client_port=40000 + i % 20000,
        client_ipv6=None,
        server_ipv4="192.0.2.1",
        server_ipv6="2001:db8::1",
        link_prefix=f"2001:db8:8000:{i:x}::/64",
        delegated_prefix=None,
        dns_servers=["2001:db8::53", "2001:db8::54"],
        keepalive_interval=30,
        mtu=1280,
        created_at=1_700_000_000.25 + i,
        updated_at=1_700_000_000.25 + i,
        expires_at=1_700_086_400.5 + i,
    )


def add_alice(store: Store, name: str = "alice") -> UserRecord:
    return store.add_user(name, "$argon2id$fake", HA1, "testrealm", now=1_700_000_000.5)


# -- URLs and files ---------------------------------------------------------------------------


def test_postgresql_urls_mean_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:////x/y.db").drivername == "sqlite"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_or_malformed_urls_are_store_errors(url: str) -> None:
    with pytest.raises(StoreError):
        Store(url)


def test_sqlite_creates_a_private_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tb.db"
    with Store(f"sqlite:///{path}") as s:
        s.migrate()
        with s._engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            fk = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    assert (mode, fk, sync) == ("wal", 1, 1)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_sqlite_in_memory_works() -> None:
    with Store("sqlite://") as s:
        s.migrate()
        add_alice(s)
        assert s.get_user("alice") is not None


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create database"):
        Store(f"sqlite:///{tmp_path / 'file' / 'tb.db'}")


# -- users ------------------------------------------------------------------------------------


def test_user_round_trip(store: Store) -> None:
    alice = add_alice(store)
    assert alice == UserRecord(
        id=alice.id,
        name="alice",
        password_hash="$argon2id$fake",
        digest_ha1=HA1,
        realm="testrealm",
        is_admin=False,
        disabled=False,
        created_at=1_700_000_000.5,
    )
    assert store.get_user("alice") == alice
    assert store.get_user_by_id(alice.id) == alice
    assert store.get_user("bob") is None
    assert store.get_user_by_id(alice.id + 1000) is None
    root = store.add_user("root", "h", "0" * 32, "r", is_admin=True)
    assert root.is_admin and root.created_at > 1_700_000_000
    assert [u.name for u in store.list_users()] == ["alice", "root"]


def test_duplicate_user_raises_user_exists(store: Store) -> None:
    add_alice(store)
    with pytest.raises(UserExists, match="alice"):
        add_alice(store)
    assert len(store.list_users()) == 1  # and the store is still usable


def test_set_password_and_disabled(store: Store) -> None:
    add_alice(store)
    assert store.set_password("alice", "new-hash", "f" * 32, "otherrealm")
    assert store.set_disabled("alice", True)
    u = store.get_user("alice")
    assert u is not None
    assert (u.password_hash, u.digest_ha1, u.realm, u.disabled) == (
        "new-hash",
        "f" * 32,
        "otherrealm",
        True,
    )
    assert store.set_disabled("alice", False)
    assert store.get_user("alice").disabled is False  # type: ignore[union-attr]
    assert not store.set_password("bob", "h", "0" * 32, "r")
    assert not store.set_disabled("bob", True)


def test_delete_user_cascades_to_tunnels_and_allocations(store: Store) -> None:
    alice = add_alice(store)
    bob = add_alice(store, "bob")
    done = store.apply(
        Changes(
            tunnels=[tunnel(1, user_id=alice.id), tunnel(2, user_id=bob.id), tunnel(3)],
            allocations=[
                AllocationRecord(None, alice.id, -1, "link", "2001:db8:8000:1::/64", 1.0),
                AllocationRecord(None, alice.id, None, "delegated", "2001:db8:c000::/56", 1.0),
                AllocationRecord(None, bob.id, -2, "link", "2001:db8:8000:2::/64", 1.0),
            ],
        )
    )
    assert store.count_live_tunnels_by_user() == {alice.id: 1, bob.id: 1}
    assert store.delete_user("alice")
    assert not store.delete_user("alice")
    assert [t.id for t in store.load_tunnels()] == done.tunnel_ids[1:]
    assert [a.prefix for a in store.load_allocations()] == ["2001:db8:8000:2::/64"]
    assert store.count_live_tunnels_by_user() == {bob.id: 1}


# -- tunnels and allocations -------------------------------------------------------------------


def test_tunnel_round_trip_keeps_every_column(store: Store) -> None:
    alice = add_alice(store)
    t = tunnel(7, user_id=alice.id)
    t.client_ipv6, t.delegated_prefix, t.last_seen = "2001:db8:ffff::2", "2001:db8:c000::/56", 5.5
    t.packets_in, t.bytes_out = 3, 2**40  # counters need 64 bits
    t.claimed_ipv4 = "192.168.1.2"
    done = store.apply(Changes(tunnels=[t]))
    assert isinstance(done, Applied) and len(done.tunnel_ids) == 1
    assert t.id is None  # the caller's record is left alone
    loaded = store.load_tunnels()
    assert loaded == [dataclasses.replace(t, id=done.tunnel_ids[0])]


def test_apply_inserts_updates_and_ends(store: Store) -> None:
    first = store.apply(Changes(tunnels=[tunnel(1), tunnel(2)]))
    a, b = store.load_tunnels()
    assert [a.id, b.id] == first.tunnel_ids
    a.state, a.end_reason, a.updated_at = "ended", "expired", 9.0
    b.last_seen, b.bytes_in = 8.0, 1234
    second = store.apply(Changes(tunnels=[a, tunnel(3), b]))
    assert second.tunnel_ids[0] == a.id and second.tunnel_ids[2] == b.id
    assert second.tunnel_ids[1] not in first.tunnel_ids
    assert second.skipped_tunnels == []
    live = store.load_tunnels()
    assert [t.id for t in live] == [b.id, second.tunnel_ids[1]]
    assert live[0].bytes_in == 1234 and live[0].last_seen == 8.0
    everything = store.load_tunnels(include_ended=True)
    assert [t.id for t in everything] == sorted(second.tunnel_ids)
    assert everything[0].state == "ended" and everything[0].end_reason == "expired"
    assert store.count_tunnels() == 3
    assert store.count_tunnels("ended") == 1
    assert store.count_tunnels("offered") == 0


def test_placeholders_point_at_tunnels_of_the_same_batch(store: Store) -> None:
    alice = add_alice(store)
    existing = store.apply(Changes(tunnels=[tunnel(0)])).tunnel_ids[0]
    stored = store.load_tunnels()[0]
    done = store.apply(
        Changes(
            tunnels=[tunnel(1, user_id=alice.id), stored, tunnel(2)],
            allocations=[
                AllocationRecord(None, None, -3, "link", "2001:db8:8000:2::/64", 1.0),
                AllocationRecord(None, alice.id, -1, "link", "2001:db8:8000:1::/64", 1.0),
                AllocationRecord(None, None, -2, "ipv4", "100.64.0.0/30", 1.0),
                AllocationRecord(None, alice.id, None, "delegated", "2001:db8:c000::/56", 1.0),
            ],
        )
    )
    assert done.tunnel_ids[1] == existing
    by_prefix = {a.prefix: a for a in store.load_allocations()}
    assert [by_prefix[p].id for p in list(by_prefix)] == done.allocation_ids
    assert by_prefix["2001:db8:8000:2::/64"].tunnel_id == done.tunnel_ids[2]
    assert by_prefix["2001:db8:8000:1::/64"].tunnel_id == done.tunnel_ids[0]
    assert by_prefix["2001:db8:8000:1::/64"].user_id == alice.id
    assert by_prefix["100.64.0.0/30"].tunnel_id == existing
    assert by_prefix["2001:db8:c000::/56"].tunnel_id is None


def test_bad_placeholder_is_rejected_before_writing(store: Store) -> None:
    with pytest.raises(StoreError, match="placeholder"):
        store.apply(
            Changes(
                tunnels=[tunnel(1)],
                allocations=[AllocationRecord(None, None, -2, "link", "2001:db8::/64", 1.0)],
            )
        )
    assert store.count_tunnels() == 0


def test_allocation_update_release_and_reuse_in_one_batch(store: Store) -> None:
    alice = add_alice(store)
    done = store.apply(
        Changes(
            tunnels=[tunnel(1, user_id=alice.id)],
            allocations=[
                AllocationRecord(None, alice.id, -1, "link", "2001:db8:8000:1::/64", 1.0),
                AllocationRecord(None, alice.id, -1, "delegated", "2001:db8:c000::/56", 1.0),
            ],
        )
    )
    link, delegated = store.load_allocations()
    t = store.load_tunnels()[0]
    t.state = "ended"
    link.tunnel_id = None  # the user keeps the /64 between tunnels
    again = store.apply(
        Changes(
            tunnels=[t],
            allocations=[
                link,
                AllocationRecord(None, None, None, "delegated", "2001:db8:c000::/56", 2.0),
            ],
            released_allocations=[delegated.id],  # type: ignore[list-item]
        )
    )
    assert again.allocation_ids[0] == link.id
    assert again.allocation_ids[1] not in done.allocation_ids
    loaded = store.load_allocations()
    assert [(a.id, a.user_id, a.tunnel_id) for a in loaded] == [
        (link.id, alice.id, None),
        (again.allocation_ids[1], None, None),
    ]


def test_ending_a_tunnel_and_purging_it_unlinks_allocations(store: Store) -> None:
    store.apply(
        Changes(
            tunnels=[tunnel(1, state="ended"), tunnel(2, state="ended"), tunnel(3)],
            allocations=[AllocationRecord(None, None, -1, "link", "2001:db8::/64", 1.0)],
        )
    )
    cutoff = tunnel(2).updated_at  # purges tunnel 1 only: it was updated before
    assert store.purge_ended_tunnels(cutoff) == 1
    assert store.count_tunnels() == 2
    assert store.load_allocations()[0].tunnel_id is None


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    store.apply(
        Changes(allocations=[AllocationRecord(None, None, None, "link", "2001:db8::/64", 1.0)])
    )
    with pytest.raises(StoreError, match="cannot write changes"):  # the prefix is taken
        store.apply(
            Changes(
                tunnels=[tunnel(1)],
                allocations=[AllocationRecord(None, None, -1, "link", "2001:db8::/64", 1.0)],
            )
        )
    t = dataclasses.replace(tunnel(2), id=50)
    with pytest.raises(StoreError):  # one id twice
        store.apply(Changes(tunnels=[t, dataclasses.replace(t)]))
    assert store.count_tunnels() == 0
    assert len(store.load_allocations()) == 1


def test_caller_assigned_ids_are_inserted_then_updated(store: Store) -> None:
    assert store.highest_ids() == (0, 0)
    t = dataclasses.replace(tunnel(1), id=100)
    a = AllocationRecord(200, None, 100, "link", t.link_prefix, 1.0)
    done = store.apply(Changes(tunnels=[t], allocations=[a]))
    assert (done.tunnel_ids, done.allocation_ids) == ([100], [200])
    assert store.load_tunnels() == [t]
    assert store.load_allocations() == [a]
    t.state, a.tunnel_id = "ended", None
    store.apply(Changes(tunnels=[t], allocations=[a]))
    assert store.load_tunnels(include_ended=True) == [t]
    assert store.load_allocations() == [a]
    # Generated ids continue after the highest given one, on every backend.
    fresh = store.apply(
        Changes(
            tunnels=[tunnel(2)],
            allocations=[AllocationRecord(None, None, -1, "link", tunnel(2).link_prefix, 1.0)],
        )
    )
    assert fresh.tunnel_ids[0] > 100 and fresh.allocation_ids[0] > 200
    assert store.highest_ids() == (fresh.tunnel_ids[0], fresh.allocation_ids[0])


def test_highest_ids_remember_deleted_rows(store: Store) -> None:
    done = store.apply(Changes(tunnels=[tunnel(1, state="ended"), tunnel(2, state="ended")]))
    store.purge_ended_tunnels(updated_before=2e9)
    assert store.count_tunnels() == 0
    assert store.highest_ids() == (done.tunnel_ids[1], 0)
    again = store.apply(Changes(tunnels=[tunnel(3)]))
    assert again.tunnel_ids[0] > done.tunnel_ids[1]


def test_rows_of_a_user_deleted_meanwhile_are_skipped(store: Store) -> None:
    alice = add_alice(store)
    bob = add_alice(store, "bob")
    store.apply(
        Changes(
            tunnels=[tunnel(1, user_id=alice.id), tunnel(2)],
            allocations=[AllocationRecord(None, alice.id, -1, "link", "2001:db8::/64", 1.0)],
        )
    )
    gone, kept = store.load_tunnels()
    alloc = store.load_allocations()[0]
    store.delete_user("alice")  # e.g. by the CLI while the broker runs: cascades
    kept.bytes_in = 99
    done = store.apply(
        Changes(
            tunnels=[gone, kept, tunnel(3, user_id=alice.id), tunnel(4, user_id=bob.id)],
            allocations=[
                alloc,
                AllocationRecord(None, None, gone.id, "ipv4", "100.64.0.0/30", 1.0),
                AllocationRecord(None, None, -3, "ipv4", "100.64.0.4/30", 1.0),
                AllocationRecord(None, bob.id, -4, "link", "2001:db8:1::/64", 1.0),
                AllocationRecord(None, None, 123456, "ipv4", "100.64.0.8/30", 1.0),
            ],
        )
    )
    assert done.skipped_tunnels == [0, 2]
    assert done.skipped_allocations == [0, 1, 2, 4]
    assert done.tunnel_ids[:3] == [gone.id, kept.id, 0]
    assert [t.id for t in store.load_tunnels()] == [kept.id, done.tunnel_ids[3]]
    assert store.load_tunnels()[0].bytes_in == 99
    assert [a.prefix for a in store.load_allocations()] == ["2001:db8:1::/64"]


def test_empty_batch(store: Store) -> None:
    assert store.apply(Changes()) == Applied([], [])
    assert len(Changes()) == 0


def test_ten_thousand_in_one_batch(store: Store) -> None:
    """Correctness at the broker's batch size (speed is measured by hand, not asserted)."""
    n = 10_000
    done = store.apply(
        Changes(
            tunnels=[tunnel(i) for i in range(n)],
            allocations=[
                AllocationRecord(None, None, -(i + 1), "link", tunnel(i).link_prefix, 1.0)
                for i in range(n)
            ],
        )
    )
    assert len(set(done.tunnel_ids)) == n and done.tunnel_ids == sorted(done.tunnel_ids)
    loaded = store.load_tunnels()
    assert [t.id for t in loaded] == done.tunnel_ids
    assert [t.client_port for t in loaded] == [tunnel(i).client_port for i in range(n)]
    allocs = store.load_allocations()
    assert [a.id for a in allocs] == done.allocation_ids
    assert all(a.prefix == t.link_prefix for a, t in zip(allocs, loaded, strict=True))
    assert all(a.tunnel_id == t.id for a, t in zip(allocs, loaded, strict=True))
    for t in loaded:
        t.packets_in += 1
    assert store.apply(Changes(tunnels=loaded)).tunnel_ids == done.tunnel_ids
    assert {t.packets_in for t in store.load_tunnels()} == {1}


def test_readers_run_while_the_writer_writes(store: Store) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for t in store.load_tunnels():
                    assert t.id is not None
                store.get_user("alice")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        for batch in range(20):
            store.apply(Changes(tunnels=[tunnel(batch * 50 + i) for i in range(50)]))
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert errors == []
    assert store.count_tunnels() == 1000


def test_tokens_are_per_user_and_go_with_the_user(store: Store) -> None:
    alice = store.add_user("alice", "h", "0" * 32, "r")
    bob = store.add_user("bob", "h", "0" * 32, "r")
    t = store.add_token(alice.id, "a" * 64, "laptop", 10.0)
    store.add_token(bob.id, "b" * 64, "router", 10.0)
    found = store.find_token("a" * 64, now=100.0)
    assert found is not None and (found.id, found.user_id, found.name) == (t.id, alice.id, "laptop")
    assert found.last_used == 100.0
    again = store.find_token("a" * 64, now=130.0)  # within a minute: not written again
    assert again is not None and again.last_used == 100.0
    assert store.find_token("c" * 64) is None
    assert [x.name for x in store.list_tokens(alice.id)] == ["laptop"]
    assert not store.delete_token(bob.id, t.id)  # not bob's
    assert store.delete_user("alice")
    assert store.find_token("a" * 64) is None and store.list_tokens(bob.id)[0].name == "router"


def test_audit_log_newest_first_and_paged(store: Store) -> None:
    for i in range(5):
        store.audit("login", actor="alice", source="192.0.2.1", target=f"t{i}", now=float(i))
    entries = store.audit_entries(limit=3)
    assert [e.target for e in entries] == ["t4", "t3", "t2"] and entries[0].actor == "alice"
    older = store.audit_entries(limit=3, before_id=entries[-1].id)
    assert [e.target for e in older] == ["t1", "t0"]


def test_invites_are_single_use(store: Store) -> None:
    store.add_invite("f" * 64, "admin", 1.0)
    assert store.count_unused_invites() == 1
    assert store.use_invite("f" * 64, "alice", 2.0)
    assert not store.use_invite("f" * 64, "bob", 3.0)
    assert not store.use_invite("e" * 64, "bob", 3.0)
    assert store.count_unused_invites() == 0
