"""One broker owns a store at a time.

The broker keeps its state in memory and writes behind (``broker/persistence.py``), so a second
process changing tunnels or allocations underneath it would be overwritten or would collide with
it on a prefix. The daemon holds this lock while it runs; offline commands (``tunnelbroker
tunnel``) take it too, and refuse to act while the daemon runs.

SQLite: ``flock`` on ``<database>.lock`` beside the file. PostgreSQL: a session advisory lock
held on a connection of its own. Both go away with the process, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tunnelbroker.store.database import normalize_url
from tunnelbroker.store.errors import StoreError

#: pg_try_advisory_lock key: "tunnelbroker" in the first 8 bytes, so other users of the
#: database are unlikely to pick it.
_PG_KEY = int.from_bytes(b"tunnelbr", "big") & 0x7FFF_FFFF_FFFF_FFFF


class StoreLocked(StoreError):
    """Another process (a running broker) owns the store."""


@contextlib.contextmanager
def owner_lock(url: str, what: str = "the broker") -> Iterator[None]:
    """Hold the store's owner lock; raise :class:`StoreLocked` at once if it is taken."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            yield
            return
        path = f"{database}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise StoreLocked(
                    f"the store {database} is in use by another process"
                    + (f" ({holder})" if holder else "")
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what}, pid {os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)
        return
    engine = create_engine(parsed, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_KEY}).scalar()
            conn.commit()
            if not got:
                raise StoreLocked("the store is in use by another process (a running broker)")
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_KEY})
                    conn.commit()
    finally:
        engine.dispose()
