"""Which DNS records a tunnel should have (sans-IO: no sockets, no clock).

* ``AAAA``: ``<user>.<client_domain>`` for an account's TSP tunnel (the name TSP tells the
  client), ``t<id>.<client_domain>`` for a managed tunnel, pointing at the client's address
  on the link (``::2``).
* ``PTR``: that address back to the name.
* ``NS``: the reverse zone of each routed prefix, delegated to the nameservers the user gave
  (up to five). Only nibble-aligned prefixes (/48, /56, /64...) have a zone of their own, and
  only host names can be NS targets: an address given as a nameserver is skipped, and the
  reason is reported.

Every record is put in the configured zone that is its closest enclosing zone; a record no
configured zone encloses is skipped (the operator has not delegated that space to us).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tunnelbroker.store.records import TunnelRecord


@dataclass(frozen=True, slots=True)
class RRSet:
    """One record set; ``name`` and ``zone`` are absolute, lowercase, with the final dot."""

    zone: str
    name: str
    rdtype: str
    values: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    """A tunnel's records, and what could not be published and why."""

    rrsets: list[RRSet] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def absolute(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def reverse_name(network: ipaddress.IPv6Network | ipaddress.IPv6Address) -> str:
    """The ip6.arpa name of a nibble-aligned prefix, or of one address."""
    if isinstance(network, ipaddress.IPv6Address):
        return network.reverse_pointer + "."
    if network.prefixlen % 4:
        raise ValueError(f"{network} is not on a nibble boundary")
    nibbles = network.network_address.exploded.replace(":", "")[: network.prefixlen // 4]
    return ".".join(reversed(nibbles)) + ".ip6.arpa."


def zone_for(name: str, zones: list[str]) -> str | None:
    """The longest configured zone that contains ``name``."""
    best = None
    for z in zones:
        if (name == z or name.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def client_name(record: TunnelRecord, user_name: str | None, domain: str) -> str | None:
    if not domain:
        return None
    if record.kind == "tsp":
        return absolute(f"{user_name}.{domain}") if user_name else None
    return absolute(f"t{record.id}.{domain}")


def plan(record: TunnelRecord, user_name: str | None, domain: str, zones: list[str]) -> Plan:
    """The records a live tunnel should have."""
    out = Plan()
    zones = [absolute(z) for z in zones]
    if record.state != "active":
        return out

    def add(name: str, rdtype: str, values: tuple[str, ...]) -> None:
        zone = zone_for(name, zones)
        if zone is None:
            out.problems.append(f"no configured zone holds {name}")
            return
        out.rrsets.append(RRSet(zone, name, rdtype, values))

    link = ipaddress.ip_network(record.link_prefix)
    name = client_name(record, user_name, domain)
    if name is not None and isinstance(link, ipaddress.IPv6Network):
        address = link.network_address + 2
        add(name, "AAAA", (str(address),))
        add(reverse_name(address), "PTR", (name,))
    servers = tuple(absolute(s) for s in record.dns_servers if not _is_address(s))
    skipped = [s for s in record.dns_servers if _is_address(s)]
    if skipped:
        out.problems.append(
            "nameservers given as addresses cannot be delegated to: " + ", ".join(skipped)
        )
    if servers:
        for routed in (record.routed_prefix, record.delegated_prefix):
            if not routed:
                continue
            net = ipaddress.IPv6Network(routed)
            if net.prefixlen % 4:
                out.problems.append(f"{net} is not on a nibble boundary: no reverse zone")
                continue
            add(reverse_name(net), "NS", servers)
    return out


def _is_address(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True
