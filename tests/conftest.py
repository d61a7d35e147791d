"""Store fixtures: a throwaway PostgreSQL server for the session, and one URL per backend.

The server is initdb'd into a temporary directory, listens on 127.0.0.1 on a free port with
trust authentication, and is stopped and deleted at the end even when tests fail. PostgreSQL
refuses to run as root, so as root it runs as ``postgres`` (or ``nobody``) via ``runuser``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tunnelbroker.lab.netns import netns_unavailable_reason
from tunnelbroker.lab.topology import Lab, cleanup_stale
from tunnelbroker.store import Store


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    superuser: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed")
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as a user")
        for name in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if owner is None:
            pytest.skip("running as root and neither user 'postgres' nor 'nobody' exists")
        prefix = [runuser, "-u", owner.pw_name, "--"]

    tmp = Path(tempfile.mkdtemp(prefix="tunnelbroker-pg-"))
    data = tmp / "data"
    started = False
    try:
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            tmp,
        )
        for attempt in itertools.count():
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} "
                "-c fsync=off -c full_page_writes=off -c max_connections=50"
            )
            try:
                _run(
                    [
                        *prefix,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(tmp / "server.log"),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    tmp,
                )
            except RuntimeError:
                if attempt >= 2:  # perhaps the port was taken between probing and binding
                    raise
                continue
            started = True
            break
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        if started:
            stop = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w"]
            subprocess.run([*stop, "stop"], cwd=tmp, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


_db_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    admin = postgres_server.url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'tunnelbroker.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store, once per backend."""
    s = Store(store_url)
    try:
        s.migrate()
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- the network-namespace lab


@cache
def _unavailable() -> str | None:
    reason = netns_unavailable_reason()
    if reason is None:
        # Once per session: namespaces of runs that were killed before they could clean up.
        cleanup_stale()
    return reason


@pytest.fixture
def netns_ok() -> None:
    """Skip the test when network namespaces cannot be used here (not root, no iproute2...)."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab(netns_ok: None) -> Iterator[Lab]:
    """A started :class:`Lab`; closed after the test even when it fails."""
    with Lab() as started:
        yield started
