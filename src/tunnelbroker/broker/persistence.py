"""Write-behind persistence with group commit.

The broker answers from memory and hands every change here. One writer thread applies whatever
has queued up in a single transaction, so a burst of thousands of sign-ups costs a handful of
commits instead of one each, and the event loop never waits on the database.

Records carry broker-assigned ids and are snapshotted when queued, so the writer never sees a
record half-changed and a record changed twice before a commit is written once, as it was last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

from tunnelbroker.store.database import Changes, Store
from tunnelbroker.store.records import AllocationRecord, TunnelRecord

log = logging.getLogger(__name__)


class Persister:
    """Queues tunnel and allocation changes and commits them in batches on one thread."""

    def __init__(self, store: Store, retry_delay: float = 1.0) -> None:
        self._store = store
        self._retry_delay = retry_delay
        self._lock = threading.Lock()
        self._tunnels: dict[int, TunnelRecord] = {}
        self._allocations: dict[int, AllocationRecord] = {}
        self._released: set[int] = set()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Committed batches, and batches that failed and were retried.
        self.commits = 0
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tb-persister", daemon=True)
        self._thread.start()

    def save_tunnel(self, record: TunnelRecord) -> None:
        """Queue the tunnel as it is now (insert or update by id)."""
        snapshot = dataclasses.replace(record, dns_servers=list(record.dns_servers))
        with self._lock:
            self._tunnels[snapshot.id or 0] = snapshot
            self._idle.clear()
        self._wake.set()

    def save_allocation(self, record: AllocationRecord) -> None:
        snapshot = dataclasses.replace(record)
        with self._lock:
            self._released.discard(snapshot.id or 0)
            self._allocations[snapshot.id or 0] = snapshot
            self._idle.clear()
        self._wake.set()

    def release_allocation(self, record: AllocationRecord) -> None:
        with self._lock:
            self._allocations.pop(record.id or 0, None)
            self._released.add(record.id or 0)
            self._idle.clear()
        self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything queued so far is committed (for shutdown and tests)."""
        self._wake.set()
        return self._idle.wait(timeout)

    async def aflush(self, timeout: float = 30.0) -> bool:
        return await asyncio.to_thread(self.flush, timeout)

    def stop(self) -> None:
        if self._thread is None:
            return
        self.flush()
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._thread = None

    def _take(self) -> Changes | None:
        with self._lock:
            if not (self._tunnels or self._allocations or self._released):
                self._idle.set()
                return None
            changes = Changes(
                tunnels=list(self._tunnels.values()),
                allocations=list(self._allocations.values()),
                released_allocations=sorted(self._released),
            )
            self._tunnels, self._allocations, self._released = {}, {}, set()
            return changes

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while (changes := self._take()) is not None:
                if not self._commit(changes):
                    break
            if self._stopping:
                return

    def _commit(self, changes: Changes) -> bool:
        try:
            self._store.apply(changes)
        except Exception:
            # The database refused or is unreachable: keep the changes (newer ones win) and
            # retry, so nothing the broker answered is lost. The log says why.
            self.failures += 1
            log.exception(
                "store: commit of %d tunnel changes failed; will retry", len(changes.tunnels)
            )
            with self._lock:
                for t in changes.tunnels:
                    self._tunnels.setdefault(t.id or 0, t)
                for a in changes.allocations:
                    if (a.id or 0) not in self._released:
                        self._allocations.setdefault(a.id or 0, a)
                self._released.update(
                    i for i in changes.released_allocations if i not in self._allocations
                )
            threading.Event().wait(self._retry_delay)
            return False
        self.commits += 1
        return True
