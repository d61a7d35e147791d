"""The :class:`Store`: users, tunnels and allocations in SQLite (WAL) or PostgreSQL.

Theory of operation. The broker keeps its live state in memory and writes it behind, in
batches: it collects inserted and changed records into a :class:`Changes` and hands that to
:meth:`Store.apply`, which writes it all in one transaction with executemany statements. Reads
(:meth:`Store.load_tunnels` at start-up, user look-ups during authentication) may run on other
threads at the same time: every call takes its own connection from the engine's pool, and
SQLite runs in WAL mode, so readers never wait for the writer.

Only plain records cross this module's boundary, and only :class:`StoreError` (or a subclass)
escapes it; the driver's own exceptions are wrapped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from tunnelbroker.store.errors import MigrationError, StoreError, UserExists
from tunnelbroker.store.models import allocations, api_tokens, audit_log, invites, tunnels, users
from tunnelbroker.store.records import (
    AllocationRecord,
    AuditRecord,
    TokenRecord,
    TunnelRecord,
    UserRecord,
)

#: Alembic's script directory, shipped inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: How long an SQLite writer waits for another writer's lock before failing, milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: Ids per ``IN (...)`` list; well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_CHUNK = 5_000

_USER_FIELDS = tuple(f.name for f in fields(UserRecord))
_TUNNEL_FIELDS = tuple(f.name for f in fields(TunnelRecord))
_ALLOCATION_FIELDS = tuple(f.name for f in fields(AllocationRecord))
_tunnel_row = attrgetter(*_TUNNEL_FIELDS)
_allocation_row = attrgetter(*_ALLOCATION_FIELDS)


@dataclass(slots=True)
class Changes:
    """One batch for :meth:`Store.apply`, written in a single transaction.

    ``tunnels`` and ``allocations`` whose ``id`` is None are inserted with a new id; the others
    update the row with that id (every column), or insert it with that id if there is none (a
    caller may assign ids itself: see :meth:`Store.highest_ids`). An id may appear once.
    ``released_allocations`` are deleted, before anything else, so a prefix released here may
    be allocated again in the same batch. An allocation's ``tunnel_id`` may be ``-(i + 1)``,
    meaning ``tunnels[i]`` of this batch (typically just inserted).
    """

    tunnels: list[TunnelRecord] = field(default_factory=list)
    allocations: list[AllocationRecord] = field(default_factory=list)
    released_allocations: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tunnels) + len(self.allocations) + len(self.released_allocations)


@dataclass(slots=True)
class Applied:
    """What :meth:`Store.apply` did.

    ``tunnel_ids[i]`` is the id of ``Changes.tunnels[i]`` (generated or given), likewise
    ``allocation_ids``. The records passed in are not modified: assign the ids yourself.
    ``skipped_tunnels`` and ``skipped_allocations`` are indexes into the ``Changes`` lists of
    rows not written because their user (or tunnel) no longer exists: a user was deleted
    meanwhile, which deletes their rows too. A skipped row that had no id has id 0 here.
    """

    tunnel_ids: list[int]
    allocation_ids: list[int]
    skipped_tunnels: list[int] = field(default_factory=list)
    skipped_allocations: list[int] = field(default_factory=list)


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` means psycopg 3.

    Raises:
        StoreError: the URL is malformed or names an unsupported database.
    """
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"invalid database URL: {e}") from e
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported database {u.get_backend_name()!r}: use sqlite or postgresql")
    return u


def _message(e: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's SQL and parameters (may hold secrets)."""
    if isinstance(e, DBAPIError) and e.orig is not None:
        return str(e.orig).strip()
    return str(e).split("\n", 1)[0]


@contextmanager
def _wrapped(what: str) -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except SQLAlchemyError as e:
        raise StoreError(f"{what}: {_message(e)}") from e


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]


class Store:
    """The database. Cheap to call from several threads; one writer at a time is assumed.

    Args:
        url: an SQLAlchemy URL. ``sqlite:///path`` creates the file's directory (mode 0700) and
            the file (mode 0600) if needed; ``postgresql://`` uses psycopg 3.
    """

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self._engine = self._create_engine(self.url)

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def _create_engine(u: URL) -> Engine:
        if u.get_backend_name() != "sqlite":
            try:
                return create_engine(u, pool_pre_ping=True)
            except (SQLAlchemyError, ImportError) as e:
                raise StoreError(f"cannot use {u.render_as_string()}: {e}") from e
        db = u.database or ""
        memory = db in ("", ":memory:") or u.query.get("mode") == "memory"
        if memory:
            # One shared connection, or every pooled connection would see its own database.
            engine = create_engine(
                u, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            path = Path(db)
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # The file holds password-equivalent DIGEST-MD5 secrets: keep it private.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as e:
                raise StoreError(f"cannot create database {path}: {e.strerror}") from e
            engine = create_engine(u)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                if not memory:
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        return engine

    def migrate(self) -> None:
        """Bring the schema up to the newest revision (a no-op when it is already there).

        Raises:
            MigrationError: the migration failed, or the database is newer than this code.
        """
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.util import CommandError

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        try:
            with self._engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except CommandError as e:
            raise MigrationError(f"cannot migrate the database: {e}") from e
        except SQLAlchemyError as e:
            raise MigrationError(f"cannot migrate the database: {_message(e)}") from e

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at; None if it was never migrated."""
        from alembic.runtime.migration import MigrationContext

        with _wrapped("cannot read the schema revision"), self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- users -------------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password_hash: str,
        digest_ha1: str,
        realm: str,
        is_admin: bool = False,
        now: float | None = None,
        tic_md5: str | None = None,
    ) -> UserRecord:
        """Create a user.

        Raises:
            UserExists: the name is taken.
        """
        values: dict[str, Any] = {
            "name": name,
            "password_hash": password_hash,
            "digest_ha1": digest_ha1,
            "realm": realm,
            "is_admin": is_admin,
            "disabled": False,
            "created_at": time.time() if now is None else now,
            "tic_md5": tic_md5,
        }
        with _wrapped(f"cannot add user {name!r}"):
            try:
                with self._engine.begin() as conn:
                    new_id = conn.execute(insert(users).values(values).returning(users.c.id))
                    user_id = int(new_id.scalar_one())
            except IntegrityError as e:
                raise UserExists(f"user {name!r} already exists") from e
        return UserRecord(id=user_id, **values)

    def get_user(self, name: str) -> UserRecord | None:
        """The user called ``name``, or None."""
        return self._one_user(users.c.name == name)

    def get_user_by_id(self, user_id: int) -> UserRecord | None:
        """The user with this id, or None."""
        return self._one_user(users.c.id == user_id)

    def _one_user(self, where: Any) -> UserRecord | None:
        stmt = select(*(users.c[n] for n in _USER_FIELDS)).where(where)
        with _wrapped("cannot read users"), self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else UserRecord(*row)

    def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        stmt = select(*(users.c[n] for n in _USER_FIELDS)).order_by(users.c.name)
        with _wrapped("cannot read users"), self._engine.connect() as conn:
            return [UserRecord(*row) for row in conn.execute(stmt)]

    def delete_user(self, name: str) -> bool:
        """Delete a user, their tunnels and allocations. False if there was no such user."""
        return self._update_user(delete(users).where(users.c.name == name), name)

    def set_password(
        self,
        name: str,
        password_hash: str,
        digest_ha1: str,
        realm: str,
        tic_md5: str | None = None,
    ) -> bool:
        """Replace a user's secrets. False if there is no such user."""
        stmt = (
            update(users)
            .where(users.c.name == name)
            .values(
                password_hash=password_hash, digest_ha1=digest_ha1, realm=realm, tic_md5=tic_md5
            )
        )
        return self._update_user(stmt, name)

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable or enable a user. False if there is no such user."""
        stmt = update(users).where(users.c.name == name).values(disabled=disabled)
        return self._update_user(stmt, name)

    def _update_user(self, stmt: Any, name: str) -> bool:
        with _wrapped(f"cannot change user {name!r}"), self._engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    # -- API tokens ---------------------------------------------------------------------------

    def add_token(self, user_id: int, token_hash: str, name: str, now: float) -> TokenRecord:
        """Store a new token's hash for a user."""
        values: dict[str, Any] = {
            "user_id": user_id,
            "token_hash": token_hash,
            "name": name,
            "created_at": now,
            "last_used": None,
        }
        with _wrapped("cannot add the token"), self._engine.begin() as conn:
            new_id = conn.execute(insert(api_tokens).values(values).returning(api_tokens.c.id))
            return TokenRecord(id=int(new_id.scalar_one()), **values)

    def find_token(self, token_hash: str, now: float | None = None) -> TokenRecord | None:
        """The token with this hash, or None; ``now`` also records it as used."""
        cols = [api_tokens.c[f.name] for f in fields(TokenRecord)]
        with _wrapped("cannot read tokens"), self._engine.begin() as conn:
            row = conn.execute(select(*cols).where(api_tokens.c.token_hash == token_hash)).first()
            if row is None:
                return None
            token = TokenRecord(*row)
            # Recorded at most once a minute: every API call must not be a write.
            if now is not None and (token.last_used is None or now - token.last_used > 60):
                conn.execute(
                    update(api_tokens).where(api_tokens.c.id == token.id).values(last_used=now)
                )
                token.last_used = now
        return token

    def list_tokens(self, user_id: int) -> list[TokenRecord]:
        """A user's tokens, oldest first."""
        cols = [api_tokens.c[f.name] for f in fields(TokenRecord)]
        stmt = select(*cols).where(api_tokens.c.user_id == user_id).order_by(api_tokens.c.id)
        with _wrapped("cannot read tokens"), self._engine.connect() as conn:
            return [TokenRecord(*row) for row in conn.execute(stmt)]

    def delete_token(self, user_id: int, token_id: int) -> bool:
        """Revoke one of a user's tokens; False if they have no such token."""
        stmt = delete(api_tokens).where(
            api_tokens.c.id == token_id, api_tokens.c.user_id == user_id
        )
        with _wrapped("cannot delete the token"), self._engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    # -- audit log and invitations ----------------------------------------------------------

    def audit(
        self,
        action: str,
        *,
        actor: str | None = None,
        source: str | None = None,
        target: str | None = None,
        detail: str | None = None,
        now: float | None = None,
    ) -> None:
        """Append one entry to the audit log."""
        values = {
            "at": time.time() if now is None else now,
            "actor": actor,
            "source": (source or "")[:64] or None,
            "action": action[:64],
            "target": (target or "")[:128] or None,
            "detail": detail,
        }
        with _wrapped("cannot write the audit log"), self._engine.begin() as conn:
            conn.execute(insert(audit_log).values(values))

    def audit_entries(self, limit: int = 200, before_id: int | None = None) -> list[AuditRecord]:
        """The newest entries first."""
        cols = [audit_log.c[f.name] for f in fields(AuditRecord)]
        stmt = select(*cols).order_by(audit_log.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(audit_log.c.id < before_id)
        with _wrapped("cannot read the audit log"), self._engine.connect() as conn:
            return [AuditRecord(*row) for row in conn.execute(stmt)]

    def add_invite(self, code_hash: str, created_by: str, now: float) -> None:
        values = {"code_hash": code_hash, "created_by": created_by, "created_at": now}
        with _wrapped("cannot add the invitation"), self._engine.begin() as conn:
            conn.execute(insert(invites).values(values))

    def use_invite(self, code_hash: str, used_by: str, now: float) -> bool:
        """Spend an unused invitation; False if there is none with that code."""
        stmt = (
            update(invites)
            .where(invites.c.code_hash == code_hash, invites.c.used_by.is_(None))
            .values(used_by=used_by, used_at=now)
        )
        with _wrapped("cannot use the invitation"), self._engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def count_unused_invites(self) -> int:
        stmt = select(func.count()).select_from(invites).where(invites.c.used_by.is_(None))
        with _wrapped("cannot read invitations"), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # -- tunnels and allocations --------------------------------------------------------------

    def load_tunnels(self, include_ended: bool = False) -> list[TunnelRecord]:
        """Every tunnel not ended (or every tunnel), by id."""
        stmt = select(*(tunnels.c[n] for n in _TUNNEL_FIELDS)).order_by(tunnels.c.id)
        if not include_ended:
            stmt = stmt.where(tunnels.c.state != "ended")
        with _wrapped("cannot load tunnels"), self._engine.connect() as conn:
            return [TunnelRecord(*row) for row in conn.execute(stmt)]

    def load_allocations(self) -> list[AllocationRecord]:
        """Every allocation, by id."""
        stmt = select(*(allocations.c[n] for n in _ALLOCATION_FIELDS)).order_by(allocations.c.id)
        with _wrapped("cannot load allocations"), self._engine.connect() as conn:
            return [AllocationRecord(*row) for row in conn.execute(stmt)]

    def count_tunnels(self, state: str | None = None) -> int:
        """How many tunnels there are (in ``state``, if given)."""
        stmt = select(func.count()).select_from(tunnels)
        if state is not None:
            stmt = stmt.where(tunnels.c.state == state)
        with _wrapped("cannot count tunnels"), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def count_live_tunnels_by_user(self) -> dict[int, int]:
        """User id -> number of tunnels not ended, for users that have any."""
        stmt = (
            select(tunnels.c.user_id, func.count())
            .where(tunnels.c.state != "ended", tunnels.c.user_id.is_not(None))
            .group_by(tunnels.c.user_id)
        )
        with _wrapped("cannot count tunnels"), self._engine.connect() as conn:
            return {int(uid): int(n) for uid, n in conn.execute(stmt)}

    def purge_ended_tunnels(self, updated_before: float) -> int:
        """Delete ended tunnels last updated before ``updated_before``; returns how many."""
        stmt = delete(tunnels).where(
            tunnels.c.state == "ended", tunnels.c.updated_at < updated_before
        )
        with _wrapped("cannot purge tunnels"), self._engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def highest_ids(self) -> tuple[int, int]:
        """The highest tunnel and allocation ids ever used, deleted rows included (0: none).

        A caller that assigns ids itself starts after these; ids are never reused.
        """
        with _wrapped("cannot read ids"), self._engine.connect() as conn:
            return self._highest_id(conn, tunnels), self._highest_id(conn, allocations)

    @staticmethod
    def _highest_id(conn: Connection, table: Table) -> int:
        highest = conn.execute(select(func.max(table.c.id))).scalar() or 0
        if conn.dialect.name == "postgresql":
            last = conn.execute(
                text("SELECT pg_sequence_last_value(pg_get_serial_sequence(:t, 'id')::regclass)"),
                {"t": table.name},
            ).scalar()
        else:
            last = conn.execute(
                text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table.name}
            ).scalar()
        return max(int(highest), int(last or 0))

    def apply(self, changes: Changes) -> Applied:
        """Write one batch in one transaction: all of it, or (on error) none of it.

        Rows whose user no longer exists (deleted meanwhile, which cascades), and allocations
        whose tunnel no longer exists, are skipped and reported rather than failing the batch,
        so a write-behind caller that retries failed batches cannot get stuck on them.

        Raises:
            StoreError: the batch is inconsistent (a bad placeholder, a prefix allocated twice,
                an id twice...); nothing was written.
        """
        n_tunnels = len(changes.tunnels)
        for a in changes.allocations:
            if a.tunnel_id is not None and a.tunnel_id < 0 and -a.tunnel_id > n_tunnels:
                raise StoreError(
                    f"allocation {a.prefix}: placeholder tunnel_id {a.tunnel_id} is not in "
                    f"this batch of {n_tunnels} tunnels"
                )
        with _wrapped("cannot write changes"), self._engine.begin() as conn:
            for chunk in _chunks(changes.released_allocations):
                conn.execute(delete(allocations).where(allocations.c.id.in_(chunk)))

            t_rows: list[tuple[Any, ...]] = [_tunnel_row(t) for t in changes.tunnels]
            t_skip = _orphans(conn, t_rows, 1, users)
            tunnel_ids = self._write(conn, tunnels, _TUNNEL_FIELDS, t_rows, t_skip)

            a_rows: list[tuple[Any, ...]] = []
            for a in changes.allocations:
                row = _allocation_row(a)
                if a.tunnel_id is not None and a.tunnel_id < 0:
                    row = (*row[:2], tunnel_ids[-a.tunnel_id - 1], *row[3:])
                a_rows.append(row)
            written = {tunnel_ids[i] for i in range(n_tunnels) if i not in t_skip}
            a_skip = _orphans(conn, a_rows, 1, users) | _orphans(conn, a_rows, 2, tunnels, written)
            allocation_ids = self._write(conn, allocations, _ALLOCATION_FIELDS, a_rows, a_skip)
        return Applied(tunnel_ids, allocation_ids, sorted(t_skip), sorted(a_skip))

    @staticmethod
    def _write(
        conn: Connection,
        table: Table,
        names: Sequence[str],
        rows: list[tuple[Any, ...]],
        skip: set[int],
    ) -> list[int]:
        """Write rows (tuples in ``names`` order, id first) except those at ``skip``.

        An id of None is generated; a row with an id updates it, or inserts it if absent.
        Returns every row's id, in order (0 for a skipped row without one).
        """
        ids: list[int] = [row[0] or 0 for row in rows]
        todo = [i for i in range(len(rows)) if i not in skip]
        given = [i for i in todo if rows[i][0] is not None]
        fresh = [i for i in todo if rows[i][0] is None]
        existing = _existing(conn, table, [rows[i][0] for i in given])

        update_rows = [rows[i] for i in given if rows[i][0] in existing]
        if update_rows:
            stmt_u = update(table).where(table.c.id == bindparam("_id"))
            params = []
            for row in update_rows:
                p = dict(zip(names[1:], row[1:], strict=True))
                p["_id"] = row[0]
                params.append(p)
            conn.execute(stmt_u, params)

        insert_rows = [rows[i] for i in given if rows[i][0] not in existing]
        if insert_rows:
            conn.execute(insert(table), [dict(zip(names, r, strict=True)) for r in insert_rows])
            if conn.dialect.name == "postgresql":
                # Explicit ids do not advance the sequence: move it past them. (SQLite's
                # AUTOINCREMENT bookkeeping does this by itself.)
                conn.execute(
                    text(
                        "SELECT setval(s, GREATEST(COALESCE(pg_sequence_last_value(s), 0), :m))"
                        " FROM CAST(pg_get_serial_sequence(:t, 'id') AS regclass) AS s"
                    ),
                    {"t": table.name, "m": max(r[0] for r in insert_rows)},
                )

        if fresh and conn.dialect.name == "postgresql":
            # Take the ids from the sequence in one round trip, then one pipelined executemany:
            # psycopg converts a huge multi-row INSERT ... RETURNING far slower than this.
            seq = select(func.pg_get_serial_sequence(table.name, "id")).scalar_subquery()
            take = select(func.nextval(seq)).select_from(func.generate_series(1, len(fresh)))
            new_ids = sorted(conn.execute(take).scalars())
            params = [
                dict(zip(names, (new_ids[k], *rows[i][1:]), strict=True))
                for k, i in enumerate(fresh)
            ]
            conn.execute(insert(table), params)
            for k, i in enumerate(fresh):
                ids[i] = new_ids[k]
        elif fresh:
            # SQLite cannot order a multi-row RETURNING, so SQLAlchemy goes row by row here;
            # each row is a cheap in-process call (about 20 us).
            stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
            keys = names[1:]
            params = [dict(zip(keys, rows[i][1:], strict=True)) for i in fresh]
            for i, new_id in zip(fresh, conn.execute(stmt, params).scalars(), strict=True):
                ids[i] = new_id
        return ids


def _existing(conn: Connection, table: Table, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that are rows of ``table``."""
    found: set[int] = set()
    for chunk in _chunks(sorted(set(ids))):
        found.update(conn.execute(select(table.c.id).where(table.c.id.in_(chunk))).scalars())
    return found


def _orphans(
    conn: Connection,
    rows: list[tuple[Any, ...]],
    column: int,
    parent: Table,
    known: set[int] | None = None,
) -> set[int]:
    """Indexes of rows whose ``rows[i][column]`` names no row of ``parent`` (None is fine)."""
    refs = {row[column] for row in rows if row[column] is not None}
    if known:
        refs -= known
    if not refs:
        return set()
    missing = refs - _existing(conn, parent, list(refs))
    return {i for i, row in enumerate(rows) if row[column] in missing} if missing else set()
