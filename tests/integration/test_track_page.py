"""The customer's tracking page in a real browser (Debian's Chromium driven by Playwright) on the real
pipeline: the badge follows each status event within a second of its POST, the courier's pin moves,
the timeline and the ETA render, a dropped connection resumes, another customer's link is refused."""
from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright

from tests.integration.fixtures import Pipeline
from tests.integration.test_page import CHROMIUM, FLAGS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium; run it through make"),
]

PICKUP = {"lat": 37.7749, "lng": -122.4194}
DROPOFF = {"lat": 37.7929, "lng": -122.4194}  # 2 km north
SCREENSHOT = Path(".livetrack/screenshots/track.png")
BADGE_WITHIN_MS = 1000
# Every change of the badge, with the page's clock (epoch ms, the same machine's as this process's).
WATCH_BADGE = """() => {
    window.badgeTimes = [];
    const badge = document.getElementById("status");
    new MutationObserver(() => window.badgeTimes.push([badge.dataset.status, Date.now()]))
        .observe(badge, {attributes: true, attributeFilter: ["data-status"]});
}"""


class Order:
    """One order of this test, driven through the HTTP API with a `system` token."""

    def __init__(self, pipeline: Pipeline, http: aiohttp.ClientSession) -> None:
        self.pipeline, self.http = pipeline, http
        self.id, self.customer, self.courier = (f"trk-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("o", "c", "k"))
        self.seq = 0
        self.fixes_from_ms = int(time.time() * 1000) - 600_000

    async def create(self) -> None:
        body = {"order_id": self.id, "customer_id": self.customer, "pickup": PICKUP, "dropoff": DROPOFF}
        await self._post("/v1/orders", body)

    async def event(self, status: str, **extra: Any) -> tuple[float, float]:
        """POST a status event; when (epoch ms) it was sent and when its answer (accepted: 2xx) was read.
        The gateway answers once its view of the order has the event, so the push may come first."""
        sent = time.time() * 1000
        await self._post(f"/v1/orders/{self.id}/events", {"status": status, "event_id": f"{self.id}:{status}", **extra})
        return sent, time.time() * 1000

    async def ping(self, lat: float, lng: float) -> None:
        """The courier's phone reports a position (its own driver token). Fixes are stamped 30 s apart,
        from 10 min ago: posted in quick succession, no move is an impossible jump."""
        self.seq += 1
        body = {"driver_id": self.courier, "seq": self.seq, "lat": lat, "lng": lng,
                "ts": self.fixes_from_ms + self.seq * 30_000, "speed": 8.0}
        async with self.http.post(f"{self.pipeline.url}/v1/locations", json=body,
                                  headers=self.pipeline.headers("driver", self.courier)) as resp:
            assert resp.status == 202, await resp.text()

    def page_url(self, customer: str | None = None) -> str:
        return f"{self.pipeline.url}/track/{self.id}#token={self.pipeline.token('customer', customer or self.customer)}"

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        async with self.http.post(f"{self.pipeline.url}{path}", json=body,
                                  headers=self.pipeline.headers("system", "it-shop")) as resp:
            assert 200 <= resp.status < 300, await resp.text()


@asynccontextmanager
async def _tracking(pipeline: Pipeline, viewport: dict[str, int],
                    customer: str | None = None) -> AsyncIterator[tuple[Order, Page]]:
    """A new order, and its tracking page open in Chromium (with `customer`'s token: by default its own)."""
    async with aiohttp.ClientSession() as http, async_playwright() as pw:
        order = Order(pipeline, http)
        await order.create()
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport=viewport)
            await page.goto(order.page_url(customer))
            yield order, page
        finally:
            await browser.close()


async def _badge_latency_ms(page: Page, status: str, posted: tuple[float, float]) -> tuple[float, float]:
    """How long after the POST was sent, and after it was accepted, the badge first showed `status`."""
    await page.wait_for_function("(s) => window.badgeTimes.some(([x]) => x === s)", arg=status, timeout=10_000)
    shown = float(await page.evaluate("(s) => window.badgeTimes.find(([x]) => x === s)[1]", status))
    return round(shown - posted[0], 1), round(shown - posted[1], 1)


async def _courier_at(page: Page, lat: float, lng: float) -> None:
    """Wait until the courier's pin is (heading) at lat, lng."""
    await page.wait_for_function(
        """([lat, lng]) => { const c = window.livetrack.courier();
                             return c && Math.abs(c.lat - lat) < 1e-6 && Math.abs(c.lng - lng) < 1e-6; }""",
        arg=[lat, lng], timeout=10_000)


async def test_tracking_page_follows_the_order(pipeline: Pipeline) -> None:
    latencies: dict[str, tuple[float, float]] = {}
    async with _tracking(pipeline, {"width": 1000, "height": 700}) as (order, page):
        await page.wait_for_selector("#status[data-status=CREATED]", timeout=20_000)  # first paint
        await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
        await page.evaluate(WATCH_BADGE)
        latencies["CONFIRMED"] = await _badge_latency_ms(page, "CONFIRMED", await order.event("CONFIRMED"))
        await order.ping(PICKUP["lat"], PICKUP["lng"])
        accepted = await order.event("COURIER_ASSIGNED", courier_id=order.courier)
        latencies["COURIER_ASSIGNED"] = await _badge_latency_ms(page, "COURIER_ASSIGNED", accepted)
        for status in ("PICKED_UP", "OUT_FOR_DELIVERY"):
            latencies[status] = await _badge_latency_ms(page, status, await order.event(status))
        for k in (1, 2, 3):  # driving north, 200 m a ping
            lat = PICKUP["lat"] + k * 200 / 111_195
            await order.ping(lat, PICKUP["lng"])
            await _courier_at(page, lat, PICKUP["lng"])
        await page.wait_for_function(
            "/^Arriving in (\\d+ min|less than a minute)$/.test(document.getElementById('eta').textContent)",
            timeout=10_000)
        timeline = await page.locator("#timeline li").evaluate_all("(items) => items.map((li) => li.dataset.status)")
        assert timeline == ["CREATED", "CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY"]
        assert await page.locator(".pin-courier").count() == 1
        assert await page.locator(".pin-dropoff").count() == 1 and await page.locator(".pin-pickup").count() == 1
        await page.wait_for_timeout(1200)  # the pin's glide ends
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
        print(f"tracking page screenshot: {SCREENSHOT.resolve()}")
        await order.ping(DROPOFF["lat"], DROPOFF["lng"])  # at the door: the pipeline sets ARRIVING
        await page.wait_for_selector("#status[data-status=ARRIVING]", timeout=10_000)
        latencies["DELIVERED"] = await _badge_latency_ms(page, "DELIVERED", await order.event("DELIVERED"))
        assert (await page.text_content("#eta") or "").startswith("Delivered at")
        assert await page.locator(".pin-courier").count() == 0  # a final order shows no courier
    print(f"badge changed after the POST was (sent, accepted), ms: {latencies}")
    assert all(sent < BADGE_WITHIN_MS and accepted < BADGE_WITHIN_MS for sent, accepted in latencies.values()), latencies


async def test_tracking_page_resumes_after_a_drop(pipeline: Pipeline) -> None:
    """A status posted while the page's connection is down shows once it reconnects (subscribe with since)."""
    async with _tracking(pipeline, {"width": 390, "height": 844}) as (order, page):  # a phone
        await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
        await page.evaluate("window.livetrack.socket.io.engine.close()")  # the network drops
        await order.event("CONFIRMED")
        await page.wait_for_selector("#status[data-status=CONFIRMED]", timeout=20_000)
        stats = await page.evaluate("window.livetrack.live.stats")
    assert stats["resumes"] >= 1 and stats["gaps"] == 0 and stats["resets"] == 0, stats


async def test_another_customers_link_is_refused(pipeline: Pipeline) -> None:
    async with _tracking(pipeline, {"width": 1000, "height": 700}, f"trk-c-other-{uuid.uuid4().hex[:8]}") as (_, page):
        await page.wait_for_selector("#notice:not([hidden])", timeout=20_000)
        notice = await page.text_content("#notice")
        badge = await page.get_attribute("#status", "data-status")
        timeline = await page.locator("#timeline li").count()
    assert notice is not None and "This tracking link is for another order." in notice, notice
    assert badge == "UNAVAILABLE" and timeline == 0
