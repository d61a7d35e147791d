"""Whether this host can run the tunnel server's namespace tests (root, TUN, namespaces)."""

from __future__ import annotations

import os

import pytest

from tunnelbroker.tunnelserver.kernel import in_throwaway_netns


def netns_unavailable() -> str | None:
    """Why TUN devices in a throwaway network namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root: TUN devices and raw sockets in a network namespace"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (kernel without CONFIG_TUN?)"
    try:
        in_throwaway_netns(lambda: None)
    except OSError as e:
        return f"cannot create a network namespace: {e}"
    return None


_SKIP = netns_unavailable()
#: Marks a test that needs :func:`in_throwaway_netns` with a TUN device.
needs_netns = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
