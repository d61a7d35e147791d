"""The kernel data plane: one sit or ip6tnl interface per tunnel, made with pyroute2.

Where the kernel has the tunnel drivers, it can carry the tunnels itself and no packet
passes through Python:

* v6v4 (IPv6 in IPv4, protocol 41): a ``sit`` link from ``broker.server_ipv4`` to the
  client's IPv4 address;
* v4v6 (IPv4 in IPv6, DSTM): an ``ip6tnl`` link in ``ipip6`` mode (inner protocol 4), from
  ``broker.server_ipv6`` to the client's IPv6 address, without the encapsulation-limit
  option, so the packets look like the userspace plane's;
* v6udpv4 (IPv6 in UDP in IPv4): a ``sit`` link with FOU encapsulation. Receiving needs a
  FOU socket (``ip fou add port P ipproto 41``) on a UDP port of its own: the TSP listener
  already holds the TSP port, and the kernel cannot share it. Standard clients send their
  tunnelled packets to the TSP port, so this works only where that traffic is steered to
  ``fou_port`` by other means; without ``fou_port`` the type is refused outright.

Whether the kernel can do each of these is found out by trying (:func:`detect_features`), in
a network namespace of its own that vanishes afterwards, and every failure is explained from
the kernel configuration, the module tree and modprobe's own words. docs/kernel-backend.md
has the whole story.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.generic import GenericNetlinkSocket  # type: ignore[import-untyped]

from tunnelbroker.tunnelserver.tun import (
    TunDevice,
    bring_up_link,
    iproute_call,
    off_event_loop,
)

__all__ = [
    "KernelBackend",
    "KernelBackendError",
    "KernelBackendUnavailable",
    "KernelFeatures",
    "LinkStats",
    "TunnelKind",
    "detect_features",
    "in_throwaway_netns",
    "link_name",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The tunnel types this backend can carry (``v6anyv4`` resolves to v6v4 or v6udpv4).
TunnelKind = Literal["v6v4", "v4v6", "v6udpv4"]

#: Prefix of every interface this backend creates; a tunnel's is ``tb-t<id>``.
LINK_PREFIX = "tb-t"

_CLONE_NEWNET = 0x40000000
_IPPROTO_IPIP = 4
_IPPROTO_IPV6 = 41
# <linux/if_tunnel.h>
_TUNNEL_ENCAP_FOU = 1
_TUNNEL_ENCAP_FLAG_CSUM = 1
# <linux/ip6_tunnel.h>: don't insert the tunnel encapsulation limit destination option.
_IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
#: Hop limit / TTL of the outer header (0 would copy the inner one, which may be 1).
_OUTER_TTL = 64
_MODPROBE_TIMEOUT = 15.0


# ---------------------------------------------------------------------- features


@dataclass(frozen=True, slots=True)
class _Feature:
    module: str
    config: str
    needed_for: str


_FEATURES: dict[str, _Feature] = {
    "sit": _Feature("sit", "CONFIG_IPV6_SIT", "v6v4 and v6udpv4 tunnels"),
    "ip6tnl": _Feature("ip6_tunnel", "CONFIG_IPV6_TUNNEL", "v4v6 tunnels, as ip6tnl mode ipip6"),
    "fou": _Feature("fou", "CONFIG_NET_FOU", "v6udpv4 tunnels, for the UDP encapsulation"),
    "tun": _Feature("tun", "CONFIG_TUN", "the userspace data plane"),
}

#: What each configurable tunnel type needs from the kernel.
_REQUIRES: dict[str, tuple[str, ...]] = {
    "v6v4": ("sit",),
    "v4v6": ("ip6tnl",),
    "v6udpv4": ("sit", "fou"),
    # The broker picks v6udpv4 for clients behind NAT, so v6anyv4 needs both.
    "v6anyv4": ("sit", "fou"),
}

#: Which configured tunnel types let add_tunnel() make a tunnel of each kind.
_ENABLED_BY: dict[str, set[str]] = {
    "v6v4": {"v6v4", "v6anyv4"},
    "v4v6": {"v4v6"},
    "v6udpv4": {"v6udpv4", "v6anyv4"},
}


@dataclass(frozen=True, slots=True)
class KernelFeatures:
    """What the running kernel offers for the data plane.

    ``reasons`` explains each feature that is False (keyed by its name).
    """

    sit: bool
    ip6tnl: bool
    fou: bool
    tun: bool
    reasons: Mapping[str, str] = field(default_factory=dict)

    def missing(self, only: Iterable[str] | None = None) -> list[str]:
        """One human-readable line per missing feature (of ``only``, if given), in order.

        For example ``sit: not available (needed for v6v4 and v6udpv4 tunnels); kernel
        config: CONFIG_IPV6_SIT is not set; modprobe sit failed: …``.
        """
        wanted = set(_FEATURES if only is None else only)
        out = []
        for name, feature in _FEATURES.items():
            if name in wanted and not getattr(self, name):
                why = self.reasons.get(name, "reason unknown")
                out.append(f"{name}: not available (needed for {feature.needed_for}); {why}")
        return out


def in_throwaway_netns(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on a new thread inside a new, unnamed network namespace.

    A network namespace belongs to a thread, not to the whole process, so only the helper
    thread moves. Nothing is mounted under /run/netns: the namespace disappears with the
    thread and the last socket or file ``fn`` opened in it, even if the process is killed.

    Raises:
        OSError: The namespace cannot be created (needs CAP_SYS_ADMIN).
        Whatever ``fn`` raises.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            if libc.unshare(_CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")
            result.append(fn())
        except BaseException as e:  # handed back to the caller's thread below
            error.append(e)

    thread = threading.Thread(target=run, name="tb-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


_LINKS = ("sit", "ip6tnl")


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None) if isinstance(e, NetlinkError) else getattr(e, "errno", None)
    if isinstance(code, int) and code > 0:
        return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return str(e) or type(e).__name__


def _probe_links(ipr: Any, names: Iterable[str]) -> dict[str, str | None]:
    """Try to create each tunnel kind in ``names``; None on success, else why not."""
    specs: dict[str, dict[str, Any]] = {
        "sit": {"kind": "sit", "sit_local": "192.0.2.1", "sit_remote": "192.0.2.2"},
        "ip6tnl": {
            "kind": "ip6tnl",
            "ip6tnl_local": "2001:db8::1",
            "ip6tnl_remote": "2001:db8::2",
            "ip6tnl_proto": _IPPROTO_IPIP,
        },
    }
    out: dict[str, str | None] = {}
    for name in names:
        ifname = f"tbprobe-{name}"
        try:
            ipr.link("add", ifname=ifname, **specs[name])
        except NetlinkError as e:
            out[name] = f"creating a link of kind {name} failed: {_describe(e)}"
            continue
        out[name] = None
        try:
            ipr.link("del", ifname=ifname)
        except NetlinkError:
            pass  # the namespace goes away with it anyway
    return out


def _probe_fou() -> str | None:
    sock = GenericNetlinkSocket()
    try:
        sock.bind("fou", _FouMsg)
    except NetlinkError as e:
        return f"the generic netlink family 'fou' is unknown: {_describe(e)}"
    finally:
        sock.close()
    return None


def _probe_tun() -> str | None:
    try:
        TunDevice.open("tbprobe%d").close()
    except OSError as e:
        return f"creating a TUN device failed: {_describe(e)}"
    return None


def _probe(names: Sequence[str]) -> dict[str, str | None]:
    def run() -> dict[str, str | None]:
        out = iproute_call(lambda ipr: _probe_links(ipr, [n for n in names if n in _LINKS]))
        if "fou" in names:
            out["fou"] = _probe_fou()
        if "tun" in names:
            out["tun"] = _probe_tun()
        return out

    return in_throwaway_netns(run)


def _kernel_config() -> dict[str, str]:
    """The running kernel's build options (``y``, ``m`` or ``n``), or {} when not published."""
    release = os.uname().release
    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        try:
            with open(f"/boot/config-{release}", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            return {}
    options: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            options[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-11]] = "n"
    return options


def _modprobe(module: str) -> str | None:
    """Load ``module``; None on success, else modprobe's complaint."""
    binary = shutil.which("modprobe") or next(
        (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        return "modprobe not found"
    try:
        proc = subprocess.run(
            [binary, module],
            capture_output=True,
            text=True,
            timeout=_MODPROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if proc.returncode == 0:
        return None
    return " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"


def _explain(name: str, failure: str, modprobe: str | None, config: Mapping[str, str]) -> str:
    feature = _FEATURES[name]
    parts = [failure]
    built = config.get(feature.config)
    if built == "n":
        parts.append(f"kernel config: {feature.config} is not set")
    elif built == "m":
        parts.append(f"kernel config: {feature.config}=m (a loadable module)")
    elif built == "y":
        parts.append(f"kernel config: {feature.config}=y (built in)")
    if not os.path.exists("/proc/modules"):
        parts.append("the kernel has no loadable module support (no /proc/modules)")
    elif os.path.isdir(f"/sys/module/{feature.module}"):
        parts.append(f"module {feature.module} is loaded")
    elif not os.path.isdir(f"/lib/modules/{os.uname().release}"):
        parts.append(f"no /lib/modules/{os.uname().release} to load modules from")
    if modprobe is not None:
        parts.append(f"modprobe {feature.module} failed: {modprobe}")
    return "; ".join(parts)


def detect_features(*, load_modules: bool = True) -> KernelFeatures:
    """Find out what the kernel offers by trying it, in a throwaway network namespace.

    sit and ip6tnl (ipip6) links are created, the ``fou`` generic netlink family is looked
    up and a TUN device is opened, all inside a namespace that disappears afterwards, so
    nothing is left in this host's namespaces whatever happens. The kernel loads the modules
    it needs on its own where it can; for each probe that still fails, ``modprobe`` is run
    once (unless ``load_modules`` is False) and the probe repeated if it loaded something.

    Never raises for a missing feature: the answer says what is missing and why.
    """
    names = list(_FEATURES)
    try:
        failures = _probe(names)
    except OSError as e:
        # No namespace, no probe; the reason is the same for all of them.
        why = f"cannot make a network namespace to probe in: {_describe(e)} (needs root)"
        return KernelFeatures(False, False, False, False, {n: why for n in names})
    modprobe: dict[str, str | None] = {}
    if load_modules:
        for name, failure in failures.items():
            module = _FEATURES[name].module
            if failure is not None and not os.path.isdir(f"/sys/module/{module}"):
                modprobe[name] = _modprobe(module)
        loaded = [n for n, complaint in modprobe.items() if complaint is None]
        if loaded:
            failures.update(_probe(loaded))
    config = _kernel_config()
    reasons = {
        name: _explain(name, failure, modprobe.get(name), config)
        for name, failure in failures.items()
        if failure is not None
    }
    ok = {name: failures[name] is None for name in names}
    return KernelFeatures(ok["sit"], ok["ip6tnl"], ok["fou"], ok["tun"], reasons)


# ---------------------------------------------------------------------- FOU receive port


class _FouMsg(genlmsg):  # type: ignore[misc]
    """A message of the ``fou`` generic netlink family (<linux/fou.h>)."""

    prefix = "FOU_ATTR_"
    nla_map = (
        ("FOU_ATTR_UNSPEC", "none"),
        ("FOU_ATTR_PORT", "be16"),
        ("FOU_ATTR_AF", "uint8"),
        ("FOU_ATTR_IPPROTO", "uint8"),
        ("FOU_ATTR_TYPE", "uint8"),
    )


_FOU_CMD_ADD = 1
_FOU_CMD_DEL = 2
_FOU_ENCAP_DIRECT = 1


def _fou_port(command: int, port: int) -> None:
    """``ip fou add|del port P ipproto 41`` in this thread's network namespace."""

    def run() -> None:
        sock = GenericNetlinkSocket()
        try:
            sock.bind("fou", _FouMsg)
            msg = _FouMsg()
            msg["cmd"] = command
            msg["version"] = 1
            msg["attrs"] = [("FOU_ATTR_PORT", port), ("FOU_ATTR_AF", socket.AF_INET)]
            if command == _FOU_CMD_ADD:
                msg["attrs"] += [
                    ("FOU_ATTR_IPPROTO", _IPPROTO_IPV6),
                    ("FOU_ATTR_TYPE", _FOU_ENCAP_DIRECT),
                ]
            tuple(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        finally:
            sock.close()

    off_event_loop(run)


# ---------------------------------------------------------------------- the backend


class KernelBackendError(Exception):
    """A request the kernel backend cannot carry out (the message says why)."""


class KernelBackendUnavailable(KernelBackendError):
    """The kernel lacks what the configured tunnel types need.

    Attributes:
        missing: One human-readable line per missing piece.
    """

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            "the kernel data plane is unavailable:\n" + "\n".join(f"  {m}" for m in missing)
        )


@dataclass(frozen=True, slots=True)
class LinkStats:
    """A tunnel interface's counters (IFLA_STATS64). rx: from the client, tx: to it."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int


@dataclass(slots=True)
class _Tunnel:
    kind: TunnelKind
    ifname: str
    index: int
    local: str
    remote: str
    remote_port: int | None


def link_name(tunnel_id: int) -> str:
    """The interface name of tunnel ``tunnel_id``: ``tb-t<id>``."""
    name = f"{LINK_PREFIX}{tunnel_id}"
    if tunnel_id < 0 or len(name) > 15:
        raise ValueError(f"tunnel id {tunnel_id} does not fit an interface name")
    return name


class KernelBackend:
    """Carries tunnels as kernel interfaces in this process's network namespace.

    Args:
        tunnel_types: The configured TSP tunnel types (``tsp.tunnel_types``); start() checks
            that the kernel has what they need.
        fou_port: UDP port for the kernel's FOU receive socket, needed for v6udpv4. It
            must differ from the TSP UDP port; None: v6udpv4 is not offered.
        tsp_port: The TSP UDP port, to refuse a clashing ``fou_port``.
    """

    def __init__(
        self,
        tunnel_types: Iterable[str] = ("v6v4", "v4v6"),
        *,
        fou_port: int | None = None,
        tsp_port: int | None = 3653,
    ) -> None:
        self.tunnel_types = tuple(tunnel_types)
        for t in self.tunnel_types:
            if t not in _REQUIRES:
                raise ValueError(f"unknown tunnel type {t!r}")
        self.fou_port = fou_port
        self.tsp_port = tsp_port
        self.features: KernelFeatures | None = None
        self._tunnels: dict[int, _Tunnel] = {}
        self._fou_added = False
        self._started = False

    @property
    def _wants_udp(self) -> bool:
        return any(t in ("v6udpv4", "v6anyv4") for t in self.tunnel_types)

    def _port_problems(self) -> list[str]:
        if not self._wants_udp:
            return []
        if self.fou_port is None:
            return [
                "v6udpv4: not offered by the kernel backend without a FOU receive port of its "
                "own (the TSP listener holds the TSP UDP port); configure one, or drop "
                "v6udpv4 and v6anyv4 from tsp.tunnel_types"
            ]
        if self.fou_port == self.tsp_port:
            return [
                f"v6udpv4: the FOU receive port {self.fou_port} is the TSP UDP port; the "
                "kernel cannot share it with the TSP listener"
            ]
        return []

    # ------------------------------------------------------------------ lifecycle

    def start(self, features: KernelFeatures | None = None) -> KernelFeatures:
        """Check the kernel (``detect_features()`` unless given) and get ready.

        Removes ``tb-t*`` interfaces a previous run left behind, and opens the FOU receive
        port if v6udpv4 is configured.

        Raises:
            KernelBackendUnavailable: With every missing piece, not just the first.
        """
        if self._started:
            raise KernelBackendError("start() called twice")
        found = features if features is not None else detect_features()
        needed: list[str] = []
        for t in self.tunnel_types:
            needed += [n for n in _REQUIRES[t] if n not in needed]
        missing = found.missing(needed) + self._port_problems()
        if missing:
            raise KernelBackendUnavailable(missing)
        self.features = found
        self._remove_leftovers()
        if self._wants_udp and self.fou_port is not None:
            try:
                _fou_port(_FOU_CMD_ADD, self.fou_port)
                self._fou_added = True
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise KernelBackendError(
                        f"ip fou add port {self.fou_port} ipproto 41 failed: {_describe(e)}"
                    ) from e
                # Like the links: most likely left by an earlier run that did not stop.
                log.warning("FOU port %d exists already; taking it over", self.fou_port)
                self._fou_added = True
        self._started = True
        return found

    def stop(self) -> None:
        """Remove every interface this backend created, and its FOU port. Idempotent."""
        for tunnel_id in list(self._tunnels):
            try:
                self.remove_tunnel(tunnel_id)
            except (OSError, KernelBackendError) as e:
                log.error("removing tunnel %d: %s", tunnel_id, e)
                self._tunnels.pop(tunnel_id, None)
        if self._fou_added and self.fou_port is not None:
            try:
                _fou_port(_FOU_CMD_DEL, self.fou_port)
            except NetlinkError as e:
                log.error("ip fou del port %d failed: %s", self.fou_port, _describe(e))
            self._fou_added = False
        self._started = False

    def _remove_leftovers(self) -> None:
        def run(ipr: Any) -> list[str]:
            gone = []
            for msg in ipr.link("dump"):
                name = msg.get("ifname") or ""
                kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                if name.startswith(LINK_PREFIX) and kind in ("sit", "ip6tnl"):
                    ipr.link("del", index=msg["index"])
                    gone.append(name)
            return gone

        try:
            gone = iproute_call(run)
        except NetlinkError as e:
            raise KernelBackendError(f"removing leftover tunnel links: {_describe(e)}") from e
        if gone:
            log.warning("removed tunnel interfaces left by an earlier run: %s", " ".join(gone))

    # ------------------------------------------------------------------ tunnels

    def add_tunnel(
        self,
        tunnel_id: int,
        kind: TunnelKind,
        local: str,
        remote: str,
        remote_port: int | None,
        inner_routes: Sequence[str],
        mtu: int,
        *,
        inner_addresses: Sequence[str] = (),
    ) -> str:
        """Create tunnel ``tunnel_id`` as interface ``tb-t<id>``, up, and route into it.

        Args:
            kind: ``v6v4`` (sit), ``v4v6`` (ip6tnl ipip6) or ``v6udpv4`` (sit + FOU).
            local: This server's outer address (IPv4, or IPv6 for v4v6).
            remote: The client's outer address.
            remote_port: The client's UDP port (v6udpv4 only; else None).
            inner_routes: Prefixes (CIDR) routed into the tunnel: the link and delegated
                prefixes, or the client's IPv4 /30 for v4v6.
            mtu: The interface MTU.
            inner_addresses: This server's own addresses on the tunnel (CIDR), if any.

        Returns:
            The interface name.

        Raises:
            KernelBackendError: Not started, a type this backend does not offer, a
                duplicate id, or the kernel refused (the interface is removed again).
            ValueError: Malformed addresses or prefixes.
        """
        if not self._started:
            raise KernelBackendError("add_tunnel before start()")
        if kind not in get_args(TunnelKind):
            raise ValueError(f"unknown tunnel kind {kind!r}")
        if not _ENABLED_BY[kind] & set(self.tunnel_types):
            if kind == "v6udpv4":
                raise KernelBackendError(
                    "v6udpv4 is not offered by this kernel backend: configure it, with a FOU "
                    "receive port separate from the TSP port (see docs/kernel-backend.md)"
                )
            raise KernelBackendError(f"{kind} is not among the configured tunnel types")
        if tunnel_id in self._tunnels:
            raise KernelBackendError(f"tunnel {tunnel_id} already exists")
        ifname = link_name(tunnel_id)
        tunnel = _Tunnel(kind, ifname, 0, local, remote, remote_port)
        data = self._link_data(tunnel)
        routes = [ipaddress.ip_network(p) for p in inner_routes]
        addresses = [ipaddress.ip_interface(a) for a in inner_addresses]

        def run(ipr: Any) -> int:
            ipr.link("add", ifname=ifname, mtu=mtu, **data)
            (index,) = ipr.link_lookup(ifname=ifname)
            bring_up_link(ipr, index, addresses, [str(net) for net in routes])
            return int(index)

        try:
            tunnel.index = iproute_call(run)
        except (NetlinkError, OSError) as e:
            raise KernelBackendError(f"creating {ifname} ({kind}): {_describe(e)}") from e
        self._tunnels[tunnel_id] = tunnel
        return ifname

    def update_endpoint(self, tunnel_id: int, remote: str, remote_port: int | None = None) -> None:
        """Point tunnel ``tunnel_id`` at a new client address (and UDP port, for v6udpv4).

        Raises:
            KeyError: No such tunnel.
            KernelBackendError: The kernel refused.
        """
        tunnel = self._tunnels[tunnel_id]
        changed = _Tunnel(
            tunnel.kind, tunnel.ifname, tunnel.index, tunnel.local, remote, remote_port
        )
        # The drivers' changelink starts from zeroed parameters, so everything is sent again.
        data = self._link_data(changed)

        def run(ipr: Any) -> None:
            ipr.link("set", index=tunnel.index, **data)

        try:
            iproute_call(run)
        except NetlinkError as e:
            raise KernelBackendError(f"updating {tunnel.ifname}: {_describe(e)}") from e
        self._tunnels[tunnel_id] = changed

    def remove_tunnel(self, tunnel_id: int) -> bool:
        """Remove tunnel ``tunnel_id``'s interface (and so its routes); False if unknown."""
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            return False

        def run(ipr: Any) -> None:
            try:
                ipr.link("del", index=tunnel.index)
            except NetlinkError as e:
                if e.code != errno.ENODEV:  # already gone is what we want
                    raise

        try:
            iproute_call(run)
        except NetlinkError as e:
            raise KernelBackendError(f"removing {tunnel.ifname}: {_describe(e)}") from e
        del self._tunnels[tunnel_id]
        return True

    def stats(self, tunnel_id: int) -> LinkStats:
        """Counters of tunnel ``tunnel_id``'s interface.

        Raises:
            KeyError: No such tunnel.
            KernelBackendError: The interface is gone.
        """
        tunnel = self._tunnels[tunnel_id]

        def run(ipr: Any) -> Any:
            return ipr.link("get", index=tunnel.index)[0].get("stats64")

        try:
            s = iproute_call(run)
        except NetlinkError as e:
            raise KernelBackendError(f"reading {tunnel.ifname}: {_describe(e)}") from e
        return LinkStats(
            **{name: int(s[name]) for name in LinkStats.__dataclass_fields__},
        )

    @property
    def tunnels(self) -> dict[int, str]:
        """Tunnel id → interface name, for every tunnel this backend holds."""
        return {i: t.ifname for i, t in self._tunnels.items()}

    def _link_data(self, t: _Tunnel) -> dict[str, Any]:
        """The rtnetlink link attributes of tunnel ``t``."""
        if t.kind == "v4v6":
            ipaddress.IPv6Address(t.local)
            ipaddress.IPv6Address(t.remote)
            return {
                "kind": "ip6tnl",
                "ip6tnl_local": t.local,
                "ip6tnl_remote": t.remote,
                "ip6tnl_proto": _IPPROTO_IPIP,
                "ip6tnl_ttl": _OUTER_TTL,
                "ip6tnl_flags": _IP6_TNL_F_IGN_ENCAP_LIMIT,
            }
        ipaddress.IPv4Address(t.local)
        ipaddress.IPv4Address(t.remote)
        data: dict[str, Any] = {
            "kind": "sit",
            "sit_local": t.local,
            "sit_remote": t.remote,
            "sit_ttl": _OUTER_TTL,
        }
        if t.kind == "v6udpv4":
            if t.remote_port is None or not 0 < t.remote_port < 65536:
                raise ValueError(f"v6udpv4 needs the client's UDP port, not {t.remote_port}")
            data |= {
                "sit_encap_type": _TUNNEL_ENCAP_FOU,
                "sit_encap_flags": _TUNNEL_ENCAP_FLAG_CSUM,
                "sit_encap_sport": self.fou_port,
                "sit_encap_dport": t.remote_port,
            }
        return data
