"""A throw-away network namespace for the configuration tests that run real tools."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

from tunnelbroker.lab.netns import delete_namespace, run_cmd

_names = count()


@pytest.fixture
def scratch_ns(netns_ok: None) -> Iterator[str]:
    """A fresh namespace with lo up; deleted, with anything running in it, afterwards."""
    ns = f"tbcfg{os.getpid()}x{next(_names)}"
    run_cmd(["ip", "netns", "add", ns])
    try:
        run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield ns
    finally:
        delete_namespace(ns)
