"""Boot Debian's own kernel with virtme-ng and run a test's guest scenario inside it.

The development and CI machines run a kernel without sit, ip6tnl and fou, so the tests that
need them boot ``/boot/vmlinuz-*`` with virtme-ng: the guest sees the host's root filesystem
read-only (this tree and the venv included) and one writable directory for its result.

A test module that uses it runs as a script in the guest (``python FILE --guest DIR``, with
this tree on ``PYTHONPATH``), and ends with ``guest_main(its_scenario)``. The scenario gets
a list to append progress lines to; its exception, if any, fails the test on the host with
the guest's traceback and log.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

#: The tree's root: the guest needs it on its path to import ``tests.*``.
ROOT = Path(__file__).resolve().parent.parent


def _is_static_elf(path: str) -> bool:
    """Whether ``path`` is an ELF64 executable without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:5] != b"\x7fELF\x02":
                return False
            phoff = int.from_bytes(head[0x20:0x28], "little")
            phentsize = int.from_bytes(head[0x36:0x38], "little")
            phnum = int.from_bytes(head[0x38:0x3A], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    types = [int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), phentsize)]
    return 3 not in types


def guest_kernel() -> str | None:
    """The newest /boot/vmlinuz-* whose modules are installed (so modprobe works inside)."""
    found = []
    for image in glob.glob("/boot/vmlinuz-*"):
        release = image.removeprefix("/boot/vmlinuz-")
        if os.path.exists(f"/lib/modules/{release}/modules.dep") and os.access(image, os.R_OK):
            key = [int(p) if p.isdigit() else 0 for p in re.split(r"[.-]", release)]
            found.append((key, image))
    return max(found)[1] if found else None


def vm_command() -> tuple[list[str], str]:
    """The vng command line up to ``--exec``, and which accelerator it uses.

    Skips the test, saying what to install, when something is missing.
    """
    if platform.machine() != "x86_64":
        pytest.skip("the VM test boots an x86_64 Debian kernel")
    if os.geteuid() != 0:
        pytest.skip("needs root: Debian's /boot/vmlinuz-* is readable by root only")
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    vng = shutil.which("vng", path=search)
    if vng is None:
        pytest.skip("virtme-ng is not installed (pip install virtme-ng)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (apt-get install qemu-system-x86)")
    busybox = [shutil.which(n) for n in ("busybox-static", "busybox.static", "busybox")]
    if not any(b and _is_static_elf(b) for b in busybox):
        pytest.skip("virtme-ng needs a static busybox (apt-get install busybox-static)")
    kernel = guest_kernel()
    if kernel is None:
        pytest.skip("no /boot/vmlinuz-* with its /lib/modules (apt-get install linux-image-amd64)")
    cmd = [vng, "--run", kernel, "--memory", "1G", "--cpus", "2"]
    # KVM needs hardware virtualisation passed through. /dev/kvm can exist without it: on
    # a PVM host (kvm_pvm) only PVM-enabled guest kernels boot, and Debian's hangs. TCG
    # (software emulation) boots it in seconds and is fast enough for these tests.
    with open("/proc/cpuinfo") as f:
        hw_virt = bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", f.read(), re.M))
    if hw_virt and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return cmd, "kvm"
    return [*cmd, "--disable-kvm"], "tcg"


def run_in_vm(script: Path, tmp_path: Path, timeout: float) -> None:
    """Boot the guest, run ``script --guest DIR`` in it, and fail unless it succeeded.

    Prints the guest's progress lines. QEMU and everything vng started are killed after
    ``timeout`` seconds.
    """
    cmd, accel = vm_command()
    out = tmp_path / "guest"
    out.mkdir()
    guest = f"PYTHONPATH={ROOT} {sys.executable} {script.resolve()} --guest {out}"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    # Its own process group: if it hangs, QEMU and anything vng started go down with it.
    vm = subprocess.Popen(
        [*cmd, "--rwdir", str(out), "--exec", guest],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = vm.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(vm.pid, signal.SIGKILL)
        stdout, stderr = vm.communicate()
        pytest.fail(f"the VM ({accel}) did not finish within {timeout} s:\n{stderr[-3000:]}")
    elapsed = time.monotonic() - started
    result_file = out / "result.json"
    if not result_file.exists():
        pytest.fail(
            f"the guest wrote no result ({accel}, exit {vm.returncode}, {elapsed:.0f} s):\n"
            f"{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    result = json.loads(result_file.read_text())
    report = "\n".join(result["log"])
    print(f"VM run ({accel}): {elapsed:.1f} s, guest kernel {result['release']}\n{report}")
    assert result["error"] is None, f"{result['error']}\n{report}"
    assert vm.returncode == 0, report


def guest_main(scenario: Callable[[list[str]], None]) -> int:
    """The guest side: run ``scenario`` and write its result for :func:`run_in_vm`.

    Returns the exit status (0: it passed); a wrong command line exits with usage.
    """
    if len(sys.argv) != 3 or sys.argv[1] != "--guest":
        sys.exit(f"usage: {Path(sys.argv[0]).name} --guest OUTPUT_DIR (inside the VM)")
    out = Path(sys.argv[2])
    log: list[str] = []
    error: str | None = None
    try:
        scenario(log)
    except BaseException:
        error = traceback.format_exc()
    result = {"release": os.uname().release, "log": log, "error": error}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0 if error is None else 1
