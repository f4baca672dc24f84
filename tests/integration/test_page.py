"""The live map in a real browser (Debian's Chromium driven by Playwright): pins appear and move."""
from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import aiohttp
import pytest
from playwright.async_api import Locator, async_playwright

from tests.integration.fixtures import Pipeline, ping

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
# As root, on a machine with no internet: no sandbox, no background fetches.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium; run it through make")
async def test_map_shows_pins_moving(pipeline: Pipeline) -> None:
    drivers = [f"page-{uuid.uuid4().hex[:8]}" for _ in range(3)]  # pings near the map's default centre
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            await page.goto(f"{pipeline.url}/#token={pipeline.token()}")
            await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
            async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
                await http.post(f"{pipeline.url}/v1/locations", json=[ping(d, 1) for d in drivers])
                await page.wait_for_function(f"Number(document.getElementById('drivers').textContent) >= {len(drivers)}",
                                             timeout=20_000)
                pins = page.locator("canvas.leaflet-zoom-animated").first  # Leaflet draws the pins here
                before = await pins.screenshot()
                await http.post(f"{pipeline.url}/v1/locations", json=[ping(d, 2, step_m=400) for d in drivers])
                assert await _changes(pins, before), "pins did not move"
            await page.screenshot(path=str(pipeline.settings.state_dir / "page.png"))
        finally:
            await browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium; run it through make")
async def test_page_client_resumes_after_a_drop_with_no_gap(pipeline: Pipeline) -> None:
    """The browser's LiveClient over the unmodified socket.io-client: updates posted while its
    connection is down arrive after the reconnection, in order, once; a seq jump is repaired."""
    d = f"page-{uuid.uuid4().hex[:8]}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{pipeline.url}/#token={pipeline.token()}")
            await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
            await page.evaluate("""(channel) => {
                window.got = [];
                window.livetrack.live.subscribe(channel, {onUpdate: (m) => window.got.push([m.seq, m.skipped || 0])});
            }""", f"driver:{d}")
            async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
                await http.post(f"{pipeline.url}/v1/locations", json=ping(d, 1))
                await page.wait_for_function("window.got.length === 1", timeout=20_000)
                await page.evaluate("window.livetrack.live.socket.io.engine.close()")  # the network drops
                for seq in range(2, 7):  # while it is down (it reconnects after 0.5-1.5 s)
                    await http.post(f"{pipeline.url}/v1/locations", json=ping(d, seq))
                await page.wait_for_function("window.got.length >= 6", timeout=20_000)
                await page.evaluate(f"window.livetrack.live.last.set('driver:{d}', 4)")  # as if 5 and 6 were lost
                await http.post(f"{pipeline.url}/v1/locations", json=ping(d, 7))
                await page.wait_for_function("window.got.length >= 9", timeout=20_000)
            got = await page.evaluate("window.got")
            stats = await page.evaluate("window.livetrack.live.stats")
        finally:
            await browser.close()
    # 5 and 6 come again: the client rewound on purpose, and the gap repair fetched them with 7.
    assert got == [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [5, 0], [6, 0], [7, 0]]
    assert stats["resumes"] >= 2 and stats["gaps"] == 1 and stats["resets"] == 0


async def _changes(pins: Locator, before: bytes, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pins.screenshot() != before:
            return True
        await asyncio.sleep(0.25)
    return False
