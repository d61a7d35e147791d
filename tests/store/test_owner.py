"""The store's owner lock: one broker (or offline command) at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnelbroker.store.owner import StoreLocked, owner_lock

_HOLD = """
import sys, time
from tunnelbroker.store.owner import owner_lock
with owner_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _other_process_holds(url: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_lock_is_exclusive_across_processes(store_url: str) -> None:
    if store_url.startswith("sqlite:///"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    holder = _other_process_holds(store_url)
    try:
        with pytest.raises(StoreLocked, match="in use by another process"), owner_lock(store_url):
            pass
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    with owner_lock(store_url):  # free again once the holder is gone
        pass


def test_sqlite_names_the_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    holder = _other_process_holds(url)
    try:
        with pytest.raises(StoreLocked, match=r"test holder, pid \d+"), owner_lock(url):
            pass
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
    # A holder that died (SIGKILL) left no stale lock behind.
    with owner_lock(url):
        pass


def test_reentry_in_one_process_is_refused_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'y.db'}"
    with owner_lock(url), pytest.raises(StoreLocked), owner_lock(url):
        pass
