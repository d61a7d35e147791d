"""SHA-1 per AYIYA datagram: sixteen AVX-512 lanes against libcrypto one at a time (issue 4).

Builds ``bench/sha1_lanes.c`` with the fast path's ``sha1x16.c`` (gcc and libssl-dev, which
``scripts/install`` provides), runs it pinned to one CPU, and prints (or writes with
``--json``) nanoseconds per message for 108-, 620- and 1,444-byte messages (a 64-byte UDP
packet, a middling one and a 1,400-byte one, each with AYIYA's 44 bytes) at 1 to 64 messages
per call. The fast path hands the lanes a whole batch when it has at least ``X16_MIN``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src" / "tunnelbroker" / "tunnelserver"


def run(seconds: float, cpu: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "sha1_lanes"
        subprocess.run(
            [
                "gcc",
                "-O2",
                f"-I{SRC}",
                str(HERE / "sha1_lanes.c"),
                str(SRC / "sha1x16.c"),
                "-lcrypto",
                "-o",
                str(exe),
            ],
            check=True,
        )
        out = subprocess.run(
            ["taskset", "-c", cpu, str(exe), str(seconds)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    rows = []
    for line in out.splitlines():
        size, n, x16, evp = line.split()
        rows.append(
            {
                "bytes": int(size),
                "messages_per_call": int(n),
                "lanes_ns": float(x16),
                "libcrypto_ns": float(evp),
                "speedup": float(evp) / float(x16),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per case and method")
    ap.add_argument("--cpu", default="1", help="the CPU to pin to")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    rows = run(args.seconds, args.cpu)
    print(f"{'bytes':>6} {'per call':>8} {'lanes ns':>9} {'libcrypto ns':>12} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['bytes']:>6} {r['messages_per_call']:>8} {r['lanes_ns']:>9.0f} "
            f"{r['libcrypto_ns']:>12.0f} {r['speedup']:>8.2f}"
        )
    if args.json:
        cpu = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        report = {
            "machine": {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
            "seconds": args.seconds,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
