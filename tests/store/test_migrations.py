"""The Alembic migrations: they run from anywhere, are idempotent and match models.py."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from tunnelbroker.store import AllocationRecord, MigrationError, Store, TunnelRecord, UserRecord
from tunnelbroker.store.database import MIGRATIONS_DIR, normalize_url
from tunnelbroker.store.models import Base, allocations, tunnels, users


def _head() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migration_files_are_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()


def test_records_mirror_tables_column_for_column() -> None:
    for record, table in ((UserRecord, users), (TunnelRecord, tunnels)):
        assert [f.name for f in fields(record)] == [c.name for c in table.c]
    assert [f.name for f in fields(AllocationRecord)] == [c.name for c in allocations.c]


def test_migrate_from_any_cwd_and_twice(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Store(store_url) as s:
        assert s.schema_revision() is None
        s.migrate()
        assert s.schema_revision() == _head()
        s.migrate()
        assert s.schema_revision() == _head()
    with Store(store_url) as s:  # and again from a new process's point of view
        s.migrate()
        assert s.schema_revision() == _head()


def test_migrated_schema_equals_models(store: Store) -> None:
    engine = create_engine(normalize_url(str(store.url.render_as_string(hide_password=False))))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, Base.metadata)
            names = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diffs == []
    assert {"users", "tunnels", "allocations", "alembic_version"} <= names


def test_downgrade_then_upgrade_again(store: Store) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store._engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert store.schema_revision() is None
    store.migrate()
    assert store.schema_revision() == _head()


def test_database_newer_than_code_is_a_migration_error(store: Store) -> None:
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError, match="9999"):
        store.migrate()


def test_sqlite_ddl_is_exactly_what_the_models_create(tmp_path: Path) -> None:
    """Stricter than compare_metadata on SQLite: also catches AUTOINCREMENT and ON DELETE."""

    def ddl(url: str) -> list[tuple[str, str]]:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                    "AND name NOT IN ('alembic_version', 'sqlite_sequence') ORDER BY name"
                )
                return [(name, " ".join(sql.split())) for name, sql in rows]
        finally:
            engine.dispose()

    with Store(f"sqlite:///{tmp_path / 'migrated.db'}") as s:
        s.migrate()
    engine = create_engine(f"sqlite:///{tmp_path / 'created.db'}")
    Base.metadata.create_all(engine)
    engine.dispose()
    migrated = ddl(f"sqlite:///{tmp_path / 'migrated.db'}")
    assert migrated == ddl(f"sqlite:///{tmp_path / 'created.db'}")
    assert sum("AUTOINCREMENT" in sql for _, sql in migrated) == 6
    assert sum(sql.count("ON DELETE") for _, sql in migrated) == 4
