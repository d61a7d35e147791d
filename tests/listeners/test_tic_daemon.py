"""The daemon's TIC listener with STARTTLS: the configured certificate, TLS 1.2/1.3 without
session tickets, and a certificate that cannot be used failing the start, not the first
``starttls``."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tests.broker.test_service import NOW
from tests.listeners.test_tic import Line, make_certificate

from tunnelbroker.broker.model import ManagedRequest
from tunnelbroker.broker.users import UserService
from tunnelbroker.client.tic import fetch
from tunnelbroker.config import Config, load_config
from tunnelbroker.daemon import running
from tunnelbroker.listeners.tic import TlsSetupError
from tunnelbroker.protocols.tic.codec import challenge_response, password_md5

pytestmark = pytest.mark.timeout(60)


def sixxs_overrides(tmp_path: Path, **sixxs: object) -> dict[str, object]:
    """TIC on 127.0.0.1 (a free port), no TSP, web or data plane, plus ``sixxs`` options."""
    return {
        "data_dir": str(tmp_path / "data"),
        "tsp": {"enabled": False},
        "tunnelserver": {"backend": "none"},
        "web": {"enabled": False},
        "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0, **sixxs},
    }


def sixxs_config(tmp_path: Path, **sixxs: object) -> Config:
    return load_config(None, sixxs_overrides(tmp_path, **sixxs))


async def login(c: Line, username: str, password: str) -> str:
    assert (await c.ask(f"username {username}")).startswith("200 ")
    challenge = (await c.ask("challenge md5"))[4:]
    return await c.ask(f"authenticate md5 {challenge_response(challenge, password_md5(password))}")


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_the_daemon_serves_starttls_with_the_configured_certificate(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    cert, key = make_certificate(tmp_path)
    cfg = sixxs_config(tmp_path, tls_certificate=cert, tls_key=key)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None and d.tic is not None
        alice = UserService(d.store, cfg.broker.realm).add("alice", "secretpass")
        t = d.broker.create_tunnel(alice.id, ManagedRequest("ayiya"), NOW)
        c = await Line.open(d.tic_port)
        assert (await c.read()).startswith("200 ")
        assert (await c.ask("get unixtime")).startswith("200 ")
        assert await c.ask("starttls") == "200 Starting TLS"
        # Verified against the throw-away certificate, and only it (no system CAs).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=cert)
        ctx.minimum_version = ctx.maximum_version = version
        await c.writer.start_tls(ctx, server_hostname="localhost")
        ssl_object = c.writer.get_extra_info("ssl_object")
        assert (
            ssl_object.version()
            == {
                ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                ssl.TLSVersion.TLSv1_3: "TLSv1.3",
            }[version]
        )
        served = ssl_object.getpeercert(binary_form=True)
        assert served == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
        # The whole login and a tunnel inside TLS.
        assert (await login(c, "alice", "secretpass")).startswith("200 Succesfully logged in")
        show = await c.block(f"tunnel show T{t.id}")
        assert show[-1] == "202 Done" and f"Password: {t.secret}" in show
        # A ticket (a TLS 1.3 NewSessionTicket after the handshake, or a TLS 1.2 one in it)
        # would have arrived before the replies read above. AICCU+GnuTLS breaks on it.
        session = ssl_object.session
        assert session is None or not session.has_ticket
        await c.close()
        assert d.tic.tls_sessions == 1 and d.tic.tls_failures == 0


async def test_our_client_requires_and_verifies_the_daemons_tls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    cfg = sixxs_config(tmp_path, tls_certificate=cert, tls_key=key)
    async with running(cfg) as d:
        assert d.broker is not None and d.store is not None and d.tic is not None
        alice = UserService(d.store, cfg.broker.realm).add("alice", "secretpass")
        t = d.broker.create_tunnel(alice.id, ManagedRequest("heartbeat"), NOW)
        result = await fetch(
            "127.0.0.1", "alice", "secretpass", port=d.tic_port, require_tls=True, cafile=cert,
            timeout=10,
        )  # fmt: skip
        assert result.tunnel is not None and result.tunnel.password == t.secret
        assert d.tic.tls_sessions == 1


async def test_the_certificate_and_key_may_be_one_file(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    both = tmp_path / "both.pem"
    both.write_text(Path(cert).read_text() + Path(key).read_text())
    async with running(sixxs_config(tmp_path, tls_certificate=str(both))) as d:
        c = await Line.open(d.tic_port)
        await c.read()
        assert await c.ask("starttls") == "200 Starting TLS"
        await c.close()


def encrypted_key(tmp_path: Path) -> tuple[str, str]:
    cert, key = make_certificate(tmp_path)
    out = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:secret", "-out", str(out)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, str(out)


def problem_files(tmp_path: Path, problem: str) -> tuple[tuple[str, str], str]:
    """A certificate and key with ``problem``, and what the error must say."""
    cert, key = make_certificate(tmp_path)
    if problem == "missing certificate":
        missing = str(tmp_path / "missing.crt")
        return (missing, key), f"cannot read [sixxs] tls_certificate {missing!r}: No such file"
    if problem == "missing key":
        missing = str(tmp_path / "missing.key")
        return (cert, missing), f"cannot read [sixxs] tls_key {missing!r}: No such file"
    if problem == "directory":
        return (str(tmp_path), key), f"tls_certificate {str(tmp_path)!r}: Is a directory"
    if problem == "not PEM":
        junk = tmp_path / "junk.pem"
        junk.write_text("this is not a certificate\n")
        return (str(junk), key), f"tls_certificate {str(junk)!r} holds no PEM certificate"
    if problem == "key for the certificate":
        return (key, cert), f"tls_certificate {key!r} holds no PEM certificate"
    if problem == "another key":
        other = tmp_path / "other"
        other.mkdir()
        _, other_key = make_certificate(other)
        return (cert, other_key), "the key does not belong to the certificate"
    assert problem == "encrypted key"
    return encrypted_key(tmp_path), "the private key is encrypted"


PROBLEMS = [
    "missing certificate", "missing key", "directory", "not PEM", "key for the certificate",
    "another key", "encrypted key",
]  # fmt: skip


@pytest.mark.parametrize("problem", PROBLEMS)
async def test_an_unusable_certificate_fails_the_start(tmp_path: Path, problem: str) -> None:
    (cert, key), message = problem_files(tmp_path, problem)
    cfg = sixxs_config(tmp_path, tls_certificate=cert, tls_key=key)
    with pytest.raises(TlsSetupError) as e:
        async with running(cfg):
            pytest.fail("the daemon started")
    assert message in str(e.value) and str(e.value).startswith("TIC STARTTLS: ")
    # The failed start let go of everything: the same store serves with TLS off.
    async with running(sixxs_config(tmp_path)) as d:
        assert d.tic_port


def test_serve_reports_an_unusable_certificate_and_exits(tmp_path: Path) -> None:
    """The real ``tunnelbroker serve``: one clear line and exit 1, no traceback."""
    (cert, key), message = problem_files(tmp_path, "missing certificate")
    path = tmp_path / "tunnelbroker.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        '[tsp]\nenabled = false\n[tunnelserver]\nbackend = "none"\n[web]\nenabled = false\n'
        f'[sixxs]\nlisten = ["127.0.0.1"]\ntic_port = 0\nheartbeat_port = 0\n'
        f'tls_certificate = "{cert}"\ntls_key = "{key}"\n'
    )
    exe = str(Path(sys.executable).with_name("tunnelbroker"))
    proc = subprocess.run(
        [exe, "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"Error: cannot start: TIC STARTTLS: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_without_a_certificate_starttls_is_refused(tmp_path: Path) -> None:
    async with running(sixxs_config(tmp_path)) as d:
        c = await Line.open(d.tic_port)
        await c.read()
        assert await c.ask("starttls") == "400 This service is not SSL enabled (yet)"
        await c.close()
