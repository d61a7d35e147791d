"""What the host's kernel does to tunnel packets behind the userspace data plane's back.

The userspace data plane reads 6in4 and 4in6 from raw sockets. A raw socket gets a copy of a
packet; the kernel still hands the packet to its own protocol handler, if one is loaded. With
no handler it stays quiet (a raw socket took the packet). With ``ip6_tunnel`` loaded, its
handler answers every 4in6 packet that no ip6tnl device claims with an ICMPv6 port
unreachable; an ip6tnl client takes that for "host unreachable" and its TCP connections give
up (seen in tests/client/test_kernel_client.py's VM). ``sit`` does the same with ICMP port
unreachables for 6in4; sit and our own client ignore them, other implementations may not.

Modules get loaded behind an operator's back (a probe, ``ip link add ... type sit``), so the
daemon checks at start and says what to do; it does not change the firewall itself.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SYS_MODULE", "tunnel_module_warnings"]

SYS_MODULE = Path("/sys/module")

#: Per module: what it does to our packets, and the nftables rule that stops it.
_MODULES = {
    "ip6_tunnel": (
        "4in6 (v4v6) packets",
        "ICMPv6 port unreachables",
        "nft add table ip6 tunnelbroker; nft add chain ip6 tunnelbroker out "
        "'{ type filter hook output priority 0; }'; nft add rule ip6 tunnelbroker out "
        "icmpv6 type destination-unreachable icmpv6 code port-unreachable @th,112,8 4 drop",
    ),
    "sit": (
        "6in4 (v6v4, heartbeat) packets",
        "ICMP port unreachables",
        "nft add table ip tunnelbroker; nft add chain ip tunnelbroker out "
        "'{ type filter hook output priority 0; }'; nft add rule ip tunnelbroker out "
        "icmp type destination-unreachable icmp code port-unreachable @th,136,8 41 drop",
    ),
}


def tunnel_module_warnings(sys_module: Path = SYS_MODULE) -> list[str]:
    """One warning per loaded kernel tunnel module that answers our tunnels' packets."""
    out = []
    for module, (packets, errors, rule) in _MODULES.items():
        if (sys_module / module).is_dir():
            out.append(
                f"the kernel module {module} is loaded: it answers {packets} that no kernel "
                f"device of its own claims with {errors}, although the userspace data plane "
                f"forwards them; some clients take those for an unreachable tunnel. To drop "
                f"them: {rule}"
            )
    return out
