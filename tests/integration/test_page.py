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


async def _changes(pins: Locator, before: bytes, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pins.screenshot() != before:
            return True
        await asyncio.sleep(0.25)
    return False
