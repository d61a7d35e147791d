"""Prometheus metrics, read from the live state at scrape time (nothing counted twice).

A custom collector asks the daemon for its figures when Prometheus scrapes ``/metrics``, so
the hot paths keep their plain integer counters and pay nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class Figures:
    """What the daemon knows at one instant."""

    #: (kind, type) -> live tunnels.
    tunnels: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: pool name -> fraction used.
    pools: Mapping[str, float] = field(default_factory=dict)
    tsp_sessions_started: int = 0
    tsp_sessions_refused: int = 0
    tsp_tunnels_accepted: int = 0
    #: reason -> packets dropped by the data plane.
    drops: Mapping[str, int] = field(default_factory=dict)
    #: ICMP errors the data plane owed but did not send: over its rate limit.
    icmp_rate_limited: int = 0
    #: direction ("in", "out") -> packets and bytes forwarded.
    packets: Mapping[str, int] = field(default_factory=dict)
    bytes: Mapping[str, int] = field(default_factory=dict)
    dns_errors: int = 0


class BrokerCollector(Collector):
    """Turns :class:`Figures` into metric families."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        f = self.figures()
        tunnels = GaugeMetricFamily(
            "tunnelbroker_tunnels", "Live tunnels.", labels=["kind", "type"]
        )
        for (kind, type_), n in sorted(f.tunnels.items()):
            tunnels.add_metric([kind, type_], n)
        yield tunnels
        pools = GaugeMetricFamily(
            "tunnelbroker_pool_utilisation", "Fraction of an address pool in use.", labels=["pool"]
        )
        for name, used in sorted(f.pools.items()):
            pools.add_metric([name], used)
        yield pools
        for name, value, text in (
            ("tsp_sessions_started", f.tsp_sessions_started, "TSP sessions started."),
            ("tsp_sessions_refused", f.tsp_sessions_refused, "TSP sessions refused (530)."),
            ("tsp_tunnels_accepted", f.tsp_tunnels_accepted, "TSP tunnels accepted."),
            (
                "dataplane_icmp_rate_limited",
                f.icmp_rate_limited,
                "ICMP errors not sent: over the data plane's rate limit (RFC 4443 2.4(f)).",
            ),
        ):
            yield CounterMetricFamily(f"tunnelbroker_{name}", text, value=value)
        drops = CounterMetricFamily(
            "tunnelbroker_dataplane_drops", "Packets the data plane dropped.", labels=["reason"]
        )
        for reason, n in sorted(f.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        packets = CounterMetricFamily(
            "tunnelbroker_dataplane_packets",
            "Packets through live tunnels (in: from clients).",
            labels=["direction"],
        )
        octets = CounterMetricFamily(
            "tunnelbroker_dataplane_bytes",
            "Bytes through live tunnels (in: from clients).",
            labels=["direction"],
        )
        for direction in ("in", "out"):
            packets.add_metric([direction], f.packets.get(direction, 0))
            octets.add_metric([direction], f.bytes.get(direction, 0))
        yield packets
        yield octets
        yield GaugeMetricFamily(
            "tunnelbroker_dns_failing_tunnels",
            "Tunnels whose DNS records could not be published yet.",
            value=f.dns_errors,
        )
