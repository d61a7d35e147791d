"""The warning about kernel tunnel modules, and the nftables rules it suggests, for real."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from tests.tunnelserver.netns import needs_netns

from tunnelbroker.tunnelserver.hostcheck import tunnel_module_warnings
from tunnelbroker.tunnelserver.kernel import in_throwaway_netns


def test_no_warning_without_the_modules(tmp_path: Path) -> None:
    (tmp_path / "tun").mkdir()
    assert tunnel_module_warnings(tmp_path) == []


def test_one_warning_per_loaded_module_with_its_rule(tmp_path: Path) -> None:
    (tmp_path / "ip6_tunnel").mkdir()
    (warning,) = tunnel_module_warnings(tmp_path)
    assert "ip6_tunnel" in warning and "4in6" in warning and "nft add rule ip6" in warning
    (tmp_path / "sit").mkdir()
    assert [w.split()[3] for w in tunnel_module_warnings(tmp_path)] == ["ip6_tunnel", "sit"]


def _rule(tmp_path: Path, module: str) -> str:
    (tmp_path / module).mkdir()
    (warning,) = tunnel_module_warnings(tmp_path)
    return warning.split("To drop them: ", 1)[1]


def _icmp_error(v6: bool, inner_protocol: int) -> bytes:
    """A port unreachable quoting a packet of ``inner_protocol``, as the kernel would send."""
    if v6:
        quoted = bytes([0x60, 0, 0, 0, 0, 8, inner_protocol, 64]) + bytes(32) + bytes(8)
        return bytes([1, 4, 0, 0, 0, 0, 0, 0]) + quoted  # the kernel fills the checksum
    quoted = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, inner_protocol, 0, 0]) + bytes(16)
    body = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted
    total = sum(int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF).to_bytes(2, "big")
    return body[:2] + checksum + body[4:]


def _sent(v6: bool, inner_protocol: int) -> bool:
    """Whether the output hook let the error out (a dropped raw send fails with EPERM)."""
    family, proto, dest = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, "::1")
        if v6
        else (socket.AF_INET, socket.IPPROTO_ICMP, "127.0.0.1")
    )
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        if v6:
            s.setsockopt(socket.IPPROTO_RAW, 7, 2)  # IPV6_CHECKSUM at offset 2
        try:
            s.sendto(_icmp_error(v6, inner_protocol), (dest, 0))
        except PermissionError:
            return False
    return True


@needs_netns
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
@pytest.mark.parametrize(
    ("module", "v6", "tunnelled"), [("ip6_tunnel", True, 4), ("sit", False, 41)]
)
def test_the_suggested_rule_drops_exactly_those_errors(
    tmp_path: Path, module: str, v6: bool, tunnelled: int
) -> None:
    rule = _rule(tmp_path, module)

    def scenario() -> tuple[bool, bool, bool]:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        before = _sent(v6, tunnelled)
        subprocess.run(["sh", "-c", rule], check=True, capture_output=True)
        # The tunnel's errors go; an error about UDP (17) is still sent.
        return before, _sent(v6, tunnelled), _sent(v6, 17)

    assert in_throwaway_netns(scenario) == (True, False, True)
