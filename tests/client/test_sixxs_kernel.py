"""A SixXS heartbeat tunnel on the kernel data plane: the sit device as TIC describes it.

This host's kernel has no sit, so the check runs in a VM booting Debian's kernel
(tests/vm.py): the same scenario as the userspace one in tests/client/test_sixxs_dataplane.py
(``Tunnel MTU`` 1480 and ``IPv6 PrefixLength`` 64 on the device, the routes, an echo from a
raw protocol-41 PoP on loopback answered through it), with ``backend="kernel"``.

Run as a script (``python test_sixxs_kernel.py --guest DIR``) this file is the guest side.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.client.test_sixxs_dataplane import heartbeat_scenario, in_namespace
from tests.vm import guest_main, run_in_vm

from tunnelbroker.tunnelserver.kernel import detect_features

#: Upper bound for the whole VM run (booting under TCG takes most of it).
VM_TIMEOUT = 300


def test_sixxs_heartbeat_through_sit_in_vm(tmp_path: Path) -> None:
    run_in_vm(Path(__file__), tmp_path, VM_TIMEOUT)


def guest_scenario(log: list[str]) -> None:
    """Inside the VM: the heartbeat scenario through a sit device, in a throwaway namespace."""
    t0 = time.monotonic()
    features = detect_features()
    log.append(f"detect_features: {features}")
    assert features.sit, features.missing()
    in_namespace(lambda: heartbeat_scenario(fast=False, backend="kernel"))
    log.append(f"{time.monotonic() - t0:6.1f}s heartbeat through sit: MTU 1480, /64, echo: ok")


if __name__ == "__main__":
    sys.exit(guest_main(guest_scenario))
