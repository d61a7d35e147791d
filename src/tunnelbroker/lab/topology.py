"""The lab topology: an IPv4 internet with a broker, a NAT and two clients, and an IPv6 host.

Every host is a network namespace; links are veth pairs created directly between namespaces
(never in the root namespace) and the shared IPv4 segment is a bridge inside the ``sw4``
namespace. Only documentation and private ranges are used, and nothing routes out of the lab.
See ``docs/lab.md`` for the diagram.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from tunnelbroker.lab.netns import (
    delete_namespace,
    kill_pids,
    list_namespaces,
    namespace_pids,
    pid_alive,
    proc_start_time,
    run_cmd,
)

#: The hosts, in creation order. ``sw4`` is the switch of the IPv4 internet.
HOSTS: Final = ("sw4", "broker", "nat", "cpub", "cnat", "inet6")

#: One marker file per running lab: owner pid and start time, for :func:`cleanup_stale`.
MARKER_DIR: Final = Path("/run/tunnelbroker-lab")

_NAT_TABLE: Final = "tblab_nat"
_counter = itertools.count()
_live: set[Lab] = set()
_live_lock = threading.Lock()


class LabError(RuntimeError):
    """The lab could not be built or torn down completely."""


@dataclass(frozen=True)
class LabPlan:
    """The address plan. Addresses are bare strings; the ``*_net`` fields give their prefixes."""

    #: The IPv4 "internet" shared by broker, NAT WAN and the public client (bridge in ``sw4``).
    public4_net: str = "198.51.100.0/24"
    broker_v4: str = "198.51.100.1"
    nat_wan_v4: str = "198.51.100.2"
    cpub_v4: str = "198.51.100.10"
    #: The same segment also carries IPv6, so a v4v6 (4in6) client reaches the broker natively.
    client6_net: str = "2001:db8:1::/64"
    broker_client_v6: str = "2001:db8:1::1"
    cpub_v6: str = "2001:db8:1::10"
    #: The LAN behind the NAT.
    lan4_net: str = "192.168.1.0/24"
    nat_lan_v4: str = "192.168.1.1"
    cnat_v4: str = "192.168.1.10"
    #: The IPv6 core link between broker and the IPv6-only ``inet6`` host.
    core6_net: str = "2001:db8:ffff::/64"
    broker_v6: str = "2001:db8:ffff::1"
    inet6_v6: str = "2001:db8:ffff::100"
    #: Routed by ``inet6`` to the broker: covers the default link (2001:db8:8000::/40) and
    #: delegated (2001:db8:c000::/34) pools of ``[pools]`` in the broker configuration.
    tunnel_routes: tuple[str, ...] = ("2001:db8:8000::/33",)
    #: The NAT's masquerade source-port ranges; :meth:`Lab.change_nat_mapping` alternates them.
    nat_port_ranges: tuple[tuple[int, int], ...] = ((20000, 20999), (30000, 30999))

    def __post_init__(self) -> None:
        pairs = {
            "public4_net": ("broker_v4", "nat_wan_v4", "cpub_v4"),
            "client6_net": ("broker_client_v6", "cpub_v6"),
            "lan4_net": ("nat_lan_v4", "cnat_v4"),
            "core6_net": ("broker_v6", "inet6_v6"),
        }
        for net_field, addr_fields in pairs.items():
            net = ipaddress.ip_network(getattr(self, net_field))
            for f in addr_fields:
                if ipaddress.ip_address(getattr(self, f)) not in net:
                    raise ValueError(f"{f} {getattr(self, f)} is not in {net_field} {net}")
        for route in self.tunnel_routes:
            ipaddress.IPv6Network(route)
        if len(self.nat_port_ranges) < 2:
            raise ValueError("nat_port_ranges needs at least two ranges to switch between")
        for lo, hi in self.nat_port_ranges:
            if not 1024 <= lo <= hi <= 65535:
                raise ValueError(f"bad NAT port range {lo}-{hi}")

    def prefixlen(self, net_field: str) -> int:
        """Prefix length of one of the ``*_net`` fields."""
        return ipaddress.ip_network(getattr(self, net_field)).prefixlen


@dataclass(frozen=True)
class LabIfaces:
    """Interface names. Each lives in its own namespace, so short fixed names never clash."""

    broker_public: str = "pub0"  # broker -> sw4 (IPv4 internet + client IPv6 segment)
    broker_core: str = "core0"  # broker -> inet6
    inet6_core: str = "core0"
    nat_wan: str = "wan0"
    nat_lan: str = "lan0"
    cpub: str = "eth0"
    cnat: str = "eth0"
    switch_bridge: str = "br0"


@dataclass(frozen=True)
class NatMapping:
    """One TCP or UDP translation of the NAT: ``inside`` appears on the WAN as ``outside``."""

    proto: str
    inside: tuple[str, int]
    outside: tuple[str, int]
    remote: tuple[str, int]


# Runs in the nat namespace: pyroute2 speaks ctnetlink, so no conntrack binary is needed.
_CT_DUMP: Final = """\
import json
from pyroute2 import Conntrack
ct = Conntrack()
try:
    out = []
    for e in ct.dump_entries():
        o, r = e.tuple_orig, e.tuple_reply
        if o.proto in (6, 17):
            out.append([o.proto, o.saddr, o.sport, o.daddr, o.dport, r.daddr, r.dport])
finally:
    ct.close()
print(json.dumps(out))
"""
_CT_FLUSH: Final = """\
from pyroute2 import Conntrack
ct = Conntrack()
try:
    ct.flush()
finally:
    ct.close()
"""


class Lab:
    """A set of namespaces wired as in ``docs/lab.md``; use as a context manager.

    Namespaces are named ``{prefix}{pid}-{n}-{host}``; the pid lets :func:`cleanup_stale`
    recognise leftovers of dead runs, ``n`` keeps several labs of one process apart.
    """

    def __init__(self, plan: LabPlan | None = None, *, prefix: str = "tb") -> None:
        if not re.fullmatch(r"[a-z]{1,8}", prefix):
            # Letters only: a digit would run into the pid that cleanup_stale() parses.
            raise ValueError("prefix must be 1-8 lowercase letters")
        self.plan: Final = plan or LabPlan()
        #: The current addresses: the plan, updated by :meth:`change_client_ipv4`.
        self.addr: LabPlan = self.plan
        self.ifaces: Final = LabIfaces()
        self.name: Final = f"{prefix}{os.getpid()}-{next(_counter)}"
        self._namespaces: list[str] = []
        self._procs: list[tuple[subprocess.Popen[Any], bool]] = []
        self._nat_range = 0
        self._started = False
        self._closed = False
        self._marker = MARKER_DIR / f"{self.name}.json"
        self._owner_pid = os.getpid()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Build the topology. On any failure everything made so far is removed again."""
        if self._started or self._closed:
            raise LabError("a Lab can be started only once")
        self._started = True
        with _live_lock:
            _live.add(self)
        try:
            self._write_marker()
            self._create_namespaces()
            self._create_links()
            self._configure_addresses()
            self._setup_nat()
        except BaseException:
            try:
                self.close()
            except LabError:
                pass  # the original error matters more; cleanup_stale() gets the rest
            raise
        return self

    def close(self) -> None:
        """Stop processes and delete namespaces and marker. Idempotent; safe after failures."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        self._stop_procs()
        # Also namespaces created by a half-finished ``ip netns add`` we never recorded.
        try:
            mine = set(self._namespaces) | {
                ns for ns in list_namespaces() if ns.startswith(self.name + "-")
            }
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"listing namespaces: {exc}")
            mine = set(self._namespaces)
        for ns in sorted(mine):
            try:
                if not delete_namespace(ns):
                    problems.append(f"namespace {ns} is still there")
            except (OSError, subprocess.SubprocessError) as exc:
                problems.append(f"deleting {ns}: {exc}")
        self._marker.unlink(missing_ok=True)
        with _live_lock:
            _live.discard(self)
        if problems:
            raise LabError("lab cleanup incomplete: " + "; ".join(problems))

    # -- using the lab ---------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace name of ``host`` (one of :data:`HOSTS`)."""
        if host not in HOSTS:
            raise ValueError(f"unknown lab host {host!r}; hosts are {', '.join(HOSTS)}")
        return f"{self.name}-{host}"

    def run(
        self,
        host: str,
        *args: str,
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in ``host`` and wait for it (at most ``timeout`` seconds)."""
        return run_cmd(
            ["ip", "netns", "exec", self.ns(host), *args], check=check, timeout=timeout, input=input
        )

    def popen(self, host: str, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in ``host`` in the background; :meth:`close` stops it.

        Keyword arguments go to :class:`subprocess.Popen`. The process gets its own session
        (unless ``start_new_session=False``) so close() can signal its children too.
        """
        if not self._started or self._closed:
            raise LabError("the lab is not running")
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        # ``ip netns exec`` execs the command, so the pid is the command's own.
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *args], **kwargs
        )
        self._procs.append((proc, bool(kwargs["start_new_session"])))
        return proc

    def ping(self, host: str, dest: str, count: int = 1, timeout: float = 2.0) -> bool:
        """Whether ``host`` gets an echo reply from ``dest`` (IPv4 or IPv6) within ``timeout``."""
        interval = 0.2
        res = self.run(
            host,
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            str(max(1, round(timeout))),
            dest,
            check=False,
            timeout=timeout + count * interval + 5,
        )
        return res.returncode == 0

    def nat_mappings(self) -> list[NatMapping]:
        """The NAT's current TCP/UDP translations, read from its conntrack table."""
        out = self.run("nat", sys.executable, "-c", _CT_DUMP).stdout
        names = {6: "tcp", 17: "udp"}
        return [
            NatMapping(names[proto], (src, sport), (nat_dst, nat_dport), (dst, dport))
            for proto, src, sport, dst, dport, nat_dst, nat_dport in json.loads(out)
        ]

    def nat_port_range(self) -> tuple[int, int]:
        """The source-port range the NAT currently maps TCP and UDP to."""
        return self.addr.nat_port_ranges[self._nat_range]

    def change_nat_mapping(self) -> tuple[int, int]:
        """Make the NAT map every flow anew, to a port from the next range; returns that range.

        Flushing conntrack alone could hand out the same port again, hence the new range.
        """
        self._nat_range = (self._nat_range + 1) % len(self.addr.nat_port_ranges)
        self._load_nat_rules(replace=True)
        self.run("nat", sys.executable, "-c", _CT_FLUSH)
        return self.nat_port_range()

    def change_client_ipv4(self, host: str, new_addr: str) -> None:
        """Give client ``host`` (``cpub`` or ``cnat``) a new IPv4 address on its segment.

        The old address goes, so sockets bound to it stop working as on a real renumbering.
        """
        a = self.addr
        if host == "cpub":
            net, gw, dev = a.public4_net, a.broker_v4, self.ifaces.cpub
        elif host == "cnat":
            net, gw, dev = a.lan4_net, a.nat_lan_v4, self.ifaces.cnat
        else:
            raise ValueError("only the clients cpub and cnat can be renumbered")
        iface = ipaddress.IPv4Interface(new_addr if "/" in new_addr else f"{new_addr}/32")
        network = ipaddress.IPv4Network(net)
        if iface.ip not in network or iface.ip in (
            network.network_address,
            ipaddress.ip_address(gw),
        ):
            raise ValueError(f"{iface.ip} is not a free host address in {net}")
        # Every IPv4 address goes, not only the recorded one; IPv6 stays.
        run_cmd(["ip", "-n", self.ns(host), "-4", "addr", "flush", "dev", dev])
        self._ip_batch(
            host,
            [
                f"addr add {iface.ip}/{network.prefixlen} dev {dev}",
                # Flushing the address took the default route with it.
                f"route replace default via {gw} dev {dev}",
            ],
        )
        if host == "cpub":
            self.addr = dataclasses.replace(a, cpub_v4=str(iface.ip))
        else:
            self.addr = dataclasses.replace(a, cnat_v4=str(iface.ip))

    # -- building --------------------------------------------------------------------------

    def _write_marker(self) -> None:
        # Written before any namespace exists, so a crash at any later point leaves a record.
        MARKER_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "start_time": proc_start_time(os.getpid()),
            "namespaces": [self.ns(h) for h in HOSTS],
        }
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self._marker)

    def _ip_batch(self, host: str, commands: Sequence[str]) -> None:
        # One process per host and step instead of one per command keeps start() fast.
        run_cmd(["ip", "-n", self.ns(host), "-batch", "-"], input="\n".join(commands) + "\n")

    def _sysctl(self, host: str, *settings: str) -> None:
        self.run(host, "sysctl", "-q", "-w", *settings)

    def _create_namespaces(self) -> None:
        for host in HOSTS:
            ns = self.ns(host)
            self._namespaces.append(ns)  # recorded first: a failed add may still leave it
            run_cmd(["ip", "netns", "add", ns])
            # Before any link exists, so new links inherit it: addresses usable at once.
            settings = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if host == "sw4":
                # A switch has no addresses; keep it from sending its own ND/MLD chatter.
                settings += [
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]
            elif host == "broker":
                settings += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            elif host == "nat":
                settings += ["net.ipv4.ip_forward=1"]
            self._sysctl(host, *settings)
            self._ip_batch(host, ["link set lo up"])

    def _veth(self, host: str, dev: str, peer_host: str, peer_dev: str) -> None:
        # Created inside ``host`` with the peer placed straight into ``peer_host``: no end
        # ever appears in the root namespace.
        self._ip_batch(
            host, [f"link add name {dev} type veth peer name {peer_dev} netns {self.ns(peer_host)}"]
        )

    def _create_links(self) -> None:
        i = self.ifaces
        br = i.switch_bridge
        self._ip_batch(
            "sw4",
            [f"link add name {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"],
        )
        # Switch ports are named after the host they lead to.
        for host, dev in (("broker", i.broker_public), ("nat", i.nat_wan), ("cpub", i.cpub)):
            self._veth(host, dev, "sw4", host)
        self._ip_batch(
            "sw4",
            [f"link set {p} master {br} up" for p in ("broker", "nat", "cpub")]
            + [f"link set {br} up"],
        )
        self._veth("broker", i.broker_core, "inet6", i.inet6_core)
        self._veth("nat", i.nat_lan, "cnat", i.cnat)

    def _configure_addresses(self) -> None:
        a, i = self.addr, self.ifaces
        p4, pc6 = a.prefixlen("public4_net"), a.prefixlen("client6_net")
        plan: dict[str, list[str]] = {
            "broker": [
                f"addr add {a.broker_v4}/{p4} dev {i.broker_public}",
                f"addr add {a.broker_client_v6}/{pc6} dev {i.broker_public} nodad",
                f"addr add {a.broker_v6}/{a.prefixlen('core6_net')} dev {i.broker_core} nodad",
                f"link set {i.broker_public} up",
                f"link set {i.broker_core} up",
                # inet6 stands for the whole IPv6 internet.
                f"route add default via {a.inet6_v6} dev {i.broker_core}",
            ],
            "inet6": [
                f"addr add {a.inet6_v6}/{a.prefixlen('core6_net')} dev {i.inet6_core} nodad",
                f"link set {i.inet6_core} up",
            ]
            + [f"route add {r} via {a.broker_v6} dev {i.inet6_core}" for r in a.tunnel_routes],
            "nat": [
                f"addr add {a.nat_wan_v4}/{p4} dev {i.nat_wan}",
                f"addr add {a.nat_lan_v4}/{a.prefixlen('lan4_net')} dev {i.nat_lan}",
                f"link set {i.nat_wan} up",
                f"link set {i.nat_lan} up",
                f"route add default via {a.broker_v4} dev {i.nat_wan}",
            ],
            # No IPv6 default route: IPv6 beyond the segment must go through a tunnel.
            "cpub": [
                f"addr add {a.cpub_v4}/{p4} dev {i.cpub}",
                f"addr add {a.cpub_v6}/{pc6} dev {i.cpub} nodad",
                f"link set {i.cpub} up",
                f"route add default via {a.broker_v4} dev {i.cpub}",
            ],
            "cnat": [
                f"addr add {a.cnat_v4}/{a.prefixlen('lan4_net')} dev {i.cnat}",
                f"link set {i.cnat} up",
                f"route add default via {a.nat_lan_v4} dev {i.cnat}",
            ],
        }
        for host, commands in plan.items():
            self._ip_batch(host, commands)

    def _setup_nat(self) -> None:
        self._load_nat_rules(replace=False)

    def _load_nat_rules(self, *, replace: bool) -> None:
        lo, hi = self.nat_port_range()
        wan, lan = self.ifaces.nat_wan, self.ifaces.nat_lan
        # A home router: masquerade out of the WAN and drop unsolicited inbound forwarding.
        # The port range needs an l4proto match; ICMP gets a plain masquerade.
        rules = f"""
table ip {_NAT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" meta l4proto {{ tcp, udp }} masquerade to :{lo}-{hi}
        oifname "{wan}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
    }}
}}
"""
        # Deleting and re-adding in one nft transaction swaps the rules atomically.
        prefix = f"delete table ip {_NAT_TABLE}\n" if replace else ""
        self.run("nat", "nft", "-f", "-", input=prefix + rules)

    def _stop_procs(self) -> None:
        running = [(p, grp) for p, grp in self._procs if p.poll() is None]
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            for p, grp in running:
                try:
                    if grp:
                        os.killpg(p.pid, sig)
                    else:
                        p.send_signal(sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + wait
            for p, _ in running:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            running = [(p, g) for p, g in running if p.poll() is None]
            if not running:
                break
        for p, _ in self._procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        # Whatever else runs in our namespaces (started by other means) goes as well.
        for ns in self._namespaces:
            try:
                kill_pids(namespace_pids(ns))
            except (OSError, subprocess.SubprocessError):
                pass


def cleanup_stale(prefix: str = "tb") -> list[str]:
    """Delete namespaces (and markers) of labs whose creating process is gone.

    Labs of live processes, this one included, are left alone. Returns the deleted namespaces.
    """
    if not re.fullmatch(r"[a-z]{1,8}", prefix):
        raise ValueError("prefix must be 1-8 lowercase letters")
    markers: dict[str, dict[str, Any]] = {}
    if MARKER_DIR.is_dir():
        for path in MARKER_DIR.glob(f"{prefix}*.json"):
            try:
                markers[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    pattern = re.compile(rf"({re.escape(prefix)}(\d+)-\d+)-({'|'.join(HOSTS)})")

    def owner_alive(lab: str, pid: int) -> bool:
        start = markers.get(lab, {}).get("start_time")
        return pid_alive(pid, start if isinstance(start, int) else None)

    removed = []
    for ns in list_namespaces():
        m = pattern.fullmatch(ns)
        if m and not owner_alive(m.group(1), int(m.group(2))):
            if delete_namespace(ns):
                removed.append(ns)
    for lab, info in markers.items():
        pid = info.get("pid")
        if isinstance(pid, int) and not owner_alive(lab, pid):
            (MARKER_DIR / f"{lab}.json").unlink(missing_ok=True)
    return removed


@atexit.register
def _close_all() -> None:
    # Last resort for labs nobody closed; errors here can only be reported, not handled.
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        if lab._owner_pid != os.getpid():
            continue  # a forked child must not tear down its parent's lab
        try:
            lab.close()
        except Exception as exc:  # keep closing the others
            print(f"tunnelbroker lab: {exc}", file=sys.stderr)
