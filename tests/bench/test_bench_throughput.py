"""The throughput benchmark still runs (--quick) and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

BENCH = Path(__file__).parents[2] / "bench" / "bench_throughput.py"


def test_quick_run_reports_every_figure(netns_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(out.read_text())
    assert set(r["paths"]) == {"native", "v6v4", "v6udpv4", "ayiya"}
    for path in r["paths"].values():
        assert path["udp64_pps"] > 0 and path["udp1400_pps"] > 0 and path["tcp_mbps"] > 0
    assert set(r["scale"]) == {"1", "100"} and r["memory_per_tunnel_bytes"] > 0
    assert r["server_only"]["udp64_pps"] > 0 and r["server_only"]["encap_udp64_pps"] > 0
    assert r["under_signups"]["udp64_pps"] > 0 and r["under_signups"]["signups_per_second"] > 0
