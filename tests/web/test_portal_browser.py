"""The portal driven end to end in a real headless Chromium (Debian's, through Playwright).

Sign up, create each tunnel type, read the details, update the endpoint, delete; on a
phone-sized screen, and with JavaScript switched off (the portal needs none).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tunnelbroker.config import load_config
from tunnelbroker.daemon import Daemon, running

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install adds it)"
)
PASSWORD = "correct horse battery"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "tsp": {"listen": ["127.0.0.1"], "port": 0},
            "tunnelserver": {"backend": "none"},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
            "web": {"listen": ["127.0.0.1"], "port": 0, "signup": "open", "secure_cookies": False},
            "limits": {"static_endpoint_networks": ["198.51.100.0/24"]},
        },
    )
    async with running(config) as d:
        yield d


@pytest.fixture
async def page(daemon: Daemon) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert daemon.web is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(
                java_script_enabled=False,
                viewport={"width": 390, "height": 844},  # a phone
                base_url=f"http://127.0.0.1:{daemon.web.port}",
            )
            context.set_default_timeout(10_000)
            yield await context.new_page()
        finally:
            await browser.close()


async def fits_the_screen(page: Any) -> bool:
    return bool(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


async def test_a_user_signs_up_and_manages_tunnels(page: Any, daemon: Daemon) -> None:
    await page.goto("/")
    await page.click("text=Sign up")
    await page.fill("input[name=username]", "kim")
    await page.fill("input[name=password]", PASSWORD)
    await page.fill("input[name=password2]", PASSWORD)
    await page.click("button:has-text('Sign up')")
    await page.wait_for_url("**/tunnels")
    assert "Welcome, kim" in await page.content()

    # A private endpoint is refused with a reason, and the form keeps what was typed.
    await page.select_option("select[name=type]", "static")
    await page.fill("input[name=client_ipv4]", "192.168.1.5")
    await page.click("button:has-text('Create tunnel')")
    assert "private (RFC 1918)" in await page.inner_text("[role=alert]")
    assert await page.input_value("input[name=client_ipv4]") == "192.168.1.5"

    made = []
    for kind, endpoint in (("static", "198.51.100.50"), ("heartbeat", ""), ("ayiya", "")):
        await page.goto("/tunnels")
        await page.select_option("select[name=type]", kind)
        await page.fill("input[name=client_ipv4]", endpoint)
        if kind == "static":
            await page.check("input[name=want48]")
        await page.click("button:has-text('Create tunnel')")
        await page.wait_for_url("**/tunnels/*")
        details = await page.inner_text("#details")
        assert "Client IPv6" in details and "::2/64" in details
        made.append(int(page.url.rsplit("/", 1)[1]))
        assert await fits_the_screen(page)
    await page.goto(f"/tunnels/{made[0]}")
    details = await page.inner_text("#details")
    assert "6in4-static" in details and "198.51.100.50" in details and "/48" in details
    await page.goto(f"/tunnels/{made[2]}")
    assert "Tunnel password" in await page.inner_text("#details")

    # Download the Linux script for the static tunnel, values filled in.
    await page.goto(f"/tunnels/{made[0]}")
    async with page.expect_download() as info:
        await page.select_option("select[name=platform]", "linux")
        await page.click("button:has-text('Download script')")
    download = await info.value
    script = Path(await download.path()).read_text()
    assert download.suggested_filename == f"tb{made[0]}-linux.sh"
    assert "ip tunnel add" in script and "remote 198.51.100.1" not in script
    assert "local 198.51.100.50" in script

    # Update the static tunnel's endpoint; the broker (and so the data plane) follows.
    await page.goto(f"/tunnels/{made[0]}")
    await page.fill("input[name=client_ipv4]", "198.51.100.51")
    await page.click("button:has-text('Update')")
    await page.wait_for_url(f"**/tunnels/{made[0]}")
    assert "198.51.100.51" in await page.inner_text("#details")
    assert daemon.broker is not None
    assert daemon.broker.tunnels[made[0]].client_ipv4 == "198.51.100.51"

    # TSP is set up by the client: the portal shows how, with the account filled in.
    await page.goto("/tunnels")
    await page.select_option("select[name=type]", "tsp")
    await page.click("button:has-text('Create tunnel')")
    assert "--user kim" in await page.inner_text("#tsp-command")
    assert "userid=kim" in await page.inner_text("#gogoc-config")

    # The list shows all three; delete one.
    await page.goto("/tunnels")
    listing = await page.inner_text("table")
    assert all(f"T{t}" in listing for t in made)
    await page.goto(f"/tunnels/{made[1]}")
    await page.click("button:has-text('Delete tunnel')")
    await page.wait_for_url("**/tunnels")
    assert f"T{made[1]}" not in await page.inner_text("table")
    assert made[1] not in daemon.broker.tunnels
    assert await fits_the_screen(page)
