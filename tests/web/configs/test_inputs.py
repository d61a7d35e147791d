"""TunnelConfigInput: every bad value is refused with the field and the reason, and nothing
a user typed reaches a command line."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.web.configs.sample import make_input

from tunnelbroker.web.configs import PLATFORMS, ConfigError, TunnelKind, render


def test_defaults_follow_the_link() -> None:
    p = make_input()
    assert p.kind is TunnelKind.STATIC
    assert str(p.server_ipv6) == "2001:db8:8000:c::1"
    assert str(p.client_ipv6) == "2001:db8:8000:c::2"
    assert p.interface == "tb12"
    assert str(p.lan_address) == "2001:db8:c000:12::1/64"
    assert p.broker == "broker.example.net"
    assert make_input(broker_port=3874).broker == "broker.example.net:3874"
    assert make_input(broker_host="2001:db8::53", broker_port=3653).broker == "[2001:db8::53]:3653"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"tunnel_id": 0}, "tunnel id: 0 is not a number"),
        ({"tunnel_id": 2**31}, "tunnel id"),
        ({"tunnel_id": True}, "tunnel id"),
        ({"kind": "gre"}, "tunnel type: unknown type 'gre'"),
        ({"server_ipv4": "192.0.2.1; reboot"}, "server IPv4: Only decimal digits"),
        ({"server_ipv4": "2001:db8::1"}, "server IPv4"),
        ({"server_ipv4": "0.0.0.0"}, "server IPv4: 0.0.0.0 cannot be a tunnel endpoint"),
        ({"server_ipv4": "224.0.0.1"}, "cannot be a tunnel endpoint"),
        ({"client_ipv4": "127.0.0.1"}, "client IPv4: 127.0.0.1 cannot be a tunnel endpoint"),
        ({"client_ipv4": "192.0.2.1"}, "client IPv4: the same as the server's"),
        ({"client_ipv4": None}, "a static 6in4 tunnel needs the client's IPv4"),
        ({"link_prefix": "2001:db8::/48"}, "link prefix: 2001:db8::/48 is not an IPv6 /64"),
        ({"link_prefix": "2001:db8::1/64"}, "link prefix: .*has host bits set"),
        ({"client_ipv6": "2001:db8:9::2"}, "client IPv6: 2001:db8:9::2 is not in the link"),
        ({"server_ipv6": "2001:db8:8000:c::"}, "server IPv6: .* is the first or last"),
        ({"client_ipv6": "2001:db8:8000:c::1"}, "client IPv6: the same as the server's"),
        ({"routed_prefix": "2001:db8:c000::/56"}, "routed prefix: .* is not an IPv6 /64"),
        ({"routed_prefix": "2001:db8:8000:c::/64"}, "routed prefix: .* overlaps the link"),
        ({"delegated_prefix": "2001::/16"}, "delegated prefix: .* from /32 to /64"),
        ({"delegated_prefix": "2001:db8:8000::/48"}, "delegated prefix: .* overlaps the link"),
        ({"mtu": 1500}, "MTU: 1500 is outside 1280-1480"),
        ({"mtu": 1279}, "MTU: 1279 is outside"),
        ({"broker_host": "evil.example;reboot"}, "broker host: 'evil.example;reboot' is neither"),
        ({"broker_host": "-oProxyCommand=x"}, "broker host"),
        ({"broker_host": "$(reboot)"}, "broker host"),
        ({"broker_port": 0}, "broker port: 0 is not a port number"),
        ({"broker_port": 65536}, "broker port"),
        ({"username": "alice\nrm -rf /"}, "user name: .* is not 1-64 of"),
        ({"username": "a" * 65}, "user name"),
        ({"username": ""}, "user name"),
        ({"interface": "tb0; rm -rf /"}, "interface: 'tb0; rm -rf /' is not a letter"),
        ({"interface": "tb0\nreboot"}, "interface"),
        ({"interface": "-tb0"}, "interface"),
        ({"interface": "a23456789012345x"}, "interface"),
        ({"interface": "tb-0"}, "interface"),
        ({"description": "home; rm -rf /"}, "description: 'home; rm -rf /' may hold only"),
        ({"description": "home\nreboot"}, "description"),
        ({"description": "it's $HOME"}, "description"),
        ({"description": "`reboot`"}, "description"),
        ({"description": 'say "hi"'}, "description"),
        ({"description": "x" * 65}, "description"),
        ({"update_url": "https://x.example/`reboot`"}, "update URL: .* is not a plain"),
        ({"update_url": "https://u:p@x.example/nic/update"}, "update URL"),
        ({"update_url": "ftp://x.example/"}, "update URL"),
        ({"update_url": "https://x.example/nic/update?a=1&b=2"}, "update URL"),
        ({"update_key": "short"}, "update key: not 8-128"),
        ({"update_key": "abcdefgh$(reboot)"}, "update key"),
    ],
)
def test_bad_input_is_refused_with_the_reason(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        make_input(**changes)


def test_direct_construction_is_checked_too() -> None:
    p = make_input()
    with pytest.raises(ConfigError, match="MTU"):
        dataclasses.replace(p, mtu=9000)
    with pytest.raises(ConfigError, match="tunnel type"):
        dataclasses.replace(p, kind="static")  # a str, not the enum
    with pytest.raises(ConfigError, match="server IPv4"):
        dataclasses.replace(p, server_ipv4="192.0.2.1")  # not parsed
    with pytest.raises(ConfigError, match="link prefix"):
        dataclasses.replace(p, link=ipaddress.IPv6Network("2001:db8::/63"))
    with pytest.raises(ConfigError, match="interface"):
        p.replace(interface="eth0 up; reboot")
    for field, value in (("username", 5), ("description", b"x"), ("broker_host", 1.5)):
        with pytest.raises(
            ConfigError, match=field.replace("_", " ").replace("username", "user name")
        ):
            dataclasses.replace(p, **{field: value})  # type: ignore[arg-type]
    assert p.replace(mtu=1280).mtu == 1280


def test_learnt_endpoints_need_no_client_address() -> None:
    for kind in ("heartbeat", "ayiya", "tsp"):
        assert make_input(kind).client_ipv4 is None


# ------------------------------------------------------------------- properties

_DESCRIPTION_OK = re.compile(r"[\w .,:()/+-]{0,64}")


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith(("#", "rem ", "!"))


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=80))
def test_any_description_is_refused_or_stays_in_comments(text: str) -> None:
    """Whatever the user typed: refused, or found only on comment lines of every file."""
    # A prefix that no template writes, so that every line holding it is about the name.
    text = "Zq" + text
    try:
        p = make_input(description=text)
    except ConfigError as e:
        assert str(e).startswith("description:")
        assert not _DESCRIPTION_OK.fullmatch(text)
        return
    assert _DESCRIPTION_OK.fullmatch(text)
    assert "\n" not in text and "\r" not in text
    seen = 0
    for platform in PLATFORMS.values():
        tunnel = (
            p
            if TunnelKind.STATIC in platform.kinds
            else p.replace(kind=TunnelKind.TSP, client_ipv4=None)
        )
        for line in render(platform.id, tunnel).text.splitlines():
            if "Zq" in line:
                assert _is_comment(line), (platform.id, line)
                seen += 1
    assert seen >= len(PLATFORMS)  # at least in each header


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(["interface", "username", "broker_host", "update_key", "update_url"]),
    text=st.text(max_size=40),
)
def test_identifiers_with_shell_characters_are_refused(field: str, text: str) -> None:
    try:
        make_input(**{field: text})
    except ConfigError:
        return
    # Accepted values hold nothing a shell, YAML or a router CLI would read specially.
    assert not re.search(r"[\s;&|$`'\"\\<>(){}*?!#~%=]", text), (field, text)


@settings(max_examples=60, deadline=None)
@given(
    tunnel_id=st.integers(1, 2**31 - 1),
    server=st.ip_addresses(v=4).filter(lambda a: a.is_global and not a.is_multicast),
    client=st.ip_addresses(v=4).filter(lambda a: a.is_global and not a.is_multicast),
    link=st.integers(0, 2**32 - 1),
    mtu=st.integers(1280, 1480),
)
def test_every_valid_tunnel_renders_everywhere(
    tunnel_id: int,
    server: ipaddress.IPv4Address,
    client: ipaddress.IPv4Address,
    link: int,
    mtu: int,
) -> None:
    if server == client:
        return
    link_net = ipaddress.IPv6Network((ipaddress.IPv6Address("2001:db8::") + (link << 64), 64))
    p = make_input(
        tunnel_id=tunnel_id,
        server_ipv4=str(server),
        client_ipv4=str(client),
        link_prefix=str(link_net),
        routed_prefix="2001:db9:1::/64",
        delegated_prefix="2001:db9:2::/48",
        mtu=mtu,
        interface="tb0",
    )
    for platform in PLATFORMS.values():
        if TunnelKind.STATIC not in platform.kinds:
            continue
        out = render(platform.id, p)
        assert str(tunnel_id) in out.filename or "{id}" not in platform.filename
        # The values the tunnel needs are all there, in the platform's own notation.
        text = out.text
        if platform.id not in ("tunnelbroker-client", "aiccu"):
            assert str(server) in text and str(client) in text, platform.id
            assert str(link_net.network_address + 2) in text, platform.id
            assert str(mtu) in text, platform.id
        assert f"T{tunnel_id}" in text, platform.id
