"""The SHA-1 lanes benchmark still builds, checks its digests against libcrypto, and runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelbroker.tunnelserver import fastpath

BENCH = Path(__file__).parents[2] / "bench" / "bench_sha1_lanes.py"


@pytest.mark.skipif(
    not getattr(fastpath.load(), "SHA1_LANES", 0), reason="no sixteen-lane SHA-1 here"
)
def test_quick_run_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "0.002", "--cpu", "0", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["bytes"], r["messages_per_call"]) for r in rows} == {
        (b, n) for b in (108, 620, 1444) for n in (1, 2, 4, 6, 8, 16, 32, 64)
    }
    assert all(r["lanes_ns"] > 0 and r["libcrypto_ns"] > 0 for r in rows)
