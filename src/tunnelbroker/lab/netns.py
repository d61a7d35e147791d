"""Small helpers over ``ip netns``: run commands, list namespaces, stop what runs inside them.

Everything here shells out to iproute2 with a timeout, so no call can hang a test run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

#: Upper bound for one iproute2 or nft call made while building or tearing down a lab.
CMD_TIMEOUT = 10.0


def run_cmd(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = CMD_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with captured text output and a timeout.

    On failure with ``check`` the :class:`subprocess.CalledProcessError` carries stderr as a
    note, because the bare exception only shows the exit status.
    """
    try:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            # Without this a command reading stdin would inherit pytest's and could block.
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        if detail:
            exc.add_note(detail)
        raise


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run_cmd(["ip", "netns", "list"]).stdout
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """Pids of the processes inside ``ns``; empty when it does not exist."""
    res = run_cmd(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when there is no such process.

    Together with the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie has already left its namespaces: count it as gone
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    started = proc_start_time(pid)
    if started is None:
        return False
    return start_time is None or started == start_time


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_pids(pids: Iterable[int], grace: float = 2.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, then SIGKILL the rest.

    Returns the pids still alive afterwards (normally none).
    """
    alive = [p for p in pids if pid_alive(p) and p != os.getpid()]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not alive:
            break
        _signal_all(alive, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if pid_alive(p)]
    return alive


def delete_namespace(ns: str, grace: float = 2.0) -> bool:
    """Stop every process in ``ns`` and delete it. Returns True when it is gone.

    Deleting only unmounts the name: a process left inside would keep the namespace (and its
    links) alive, so processes go first.
    """
    kill_pids(namespace_pids(ns), grace)
    run_cmd(["ip", "netns", "delete", ns], check=False)
    return ns not in list_namespaces()


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "ping"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed"
    probe = f"tbprobe{os.getpid()}"
    try:
        res = run_cmd(["ip", "netns", "add", probe], check=False)
        if res.returncode != 0:
            return f"'ip netns add' failed: {res.stderr.strip()}"
        res = run_cmd(
            [
                "ip",
                "-n",
                probe,
                "link",
                "add",
                "name",
                "probe0",
                "type",
                "veth",
                "peer",
                "name",
                "probe1",
            ],
            check=False,
        )
        if res.returncode != 0:
            return f"cannot create veth pairs: {res.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' does not work: {exc}"
    finally:
        run_cmd(["ip", "netns", "delete", probe], check=False)
    return None
