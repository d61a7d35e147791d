"""The throughput benchmark still runs (--quick) and reports every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

BENCH = Path(__file__).parents[2] / "bench" / "bench_throughput.py"
PATHS = {"native", "v6v4", "v6udpv4", "ayiya"}
SERVER_ONLY = {
    f"{kind}_{way}_udp{size}"
    for kind in ("v6v4", "v6udpv4")
    for way, size in (("decap", 64), ("decap", 1400), ("encap", 64), ("encap", 1232))
}


def _number(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


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
    assert set(r["paths"]) == PATHS
    for name, path in r["paths"].items():
        # Every path forwarded something, in every measurement.
        for key in ("udp64_pps", "udp1400_pps", "tcp_mbps"):
            assert path[key] > 0, (name, key, path)
            assert _number(path[f"ratio_{key}"]), (name, key)
        assert _number(path["udp64_broker_cpu"]) and _number(path["udp1400_broker_cpu"])
    assert r["paths"]["native"]["ratio_udp64_pps"] == 1.0
    assert set(r["server_only"]) == SERVER_ONLY
    for name, s in r["server_only"].items():
        assert s["pps"] > 0 and s["broker_cpu"] > 0, (name, s)
        assert all(_number(s[k]) for k in ("broker_ns_per_packet", "cpu1_busy", "pps_per_core"))
    assert r["under_signups"]["pps"] > 0 and r["under_signups"]["signups_per_second"] > 0
    assert set(r["scale"]) == {"1", "100"}
    for n in r["scale"].values():
        assert n["udp64_pps"] > 0 and n["rss_kib"] > 0 and n["broker_ns_per_packet"] > 0
    # RSS over only 100 tunnels is noisy: a number, not a sign, is what this run can check.
    assert _number(r["memory_per_tunnel_bytes"]) and _number(r["scale_cost_spread"])
    assert r["code"]["forwarding"] in ("C", "python")
    # The table went to stdout too.
    assert "tunnel server alone" in res.stdout and "memory per configured tunnel" in res.stdout
