"""A simulated shop: it takes orders from simulated customers and has its own couriers deliver them.

At `sim_order_rate_hz` (Poisson) a customer orders: the shop creates the order with
`POST /v1/orders` (a `system` token, as a shop's backend holds), confirms it, names
a free courier (COURIER_ASSIGNED; an order waits for one when all are out), and the
courier drives to the pickup, loads (PICKED_UP, OUT_FOR_DELIVERY), drives to the
drop-off and hands the order over (DELIVERED). ARRIVING is not the shop's: the
pipeline sets it when the courier nears the drop-off. Every status goes through
`POST /v1/orders/{id}/events` with an event id and an `Idempotency-Key`, so a retry
is the same event. The couriers are a fleet of their own (`sim.fleet.run_fleet`
with this shop as its `dispatch` hook): they ping `POST /v1/locations` like any
driver, and `steer` points each courier on a delivery at its next stop.

The pure parts (`order_request`, `event_body`, `steer_couriers`, the ids) are
tested without a network; `ShopSim` is the wiring.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable

import aiohttp

from infra import clock
from infra.settings import Settings
from sim.dispatch import ride_request
from sim.fleet import ARRIVE_M, RETRY_ATTEMPTS, RETRY_STATUSES, City, Driver, backoff_s, request_headers, run_fleet

__all__ = [
    "LIFECYCLE", "FirstOrder", "ShopSim", "courier_id", "customer_id", "event_body", "order_id", "order_request",
    "run_shop", "steer_couriers",
]

log = logging.getLogger(__name__)

LIFECYCLE = ("CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "DELIVERED")  # what the shop posts
CUSTOMERS = 200  # distinct simulated customers
CONFIRM_S = (1.0, 4.0)  # the shop confirms an order this long after it came in
LOADING_S = (2.0, 6.0)  # at the pickup, before PICKED_UP
LEAVING_S = (0.5, 2.0)  # PICKED_UP to OUT_FOR_DELIVERY
HANDOVER_S = (2.0, 5.0)  # at the door, before DELIVERED
SHOP = "sim-shop"  # the shop's `system` token subject
Mint = Callable[[str, str], str]  # (role, sub) -> token
XY = tuple[float, float]  # metres east, north of the city centre


@dataclass(frozen=True)
class FirstOrder:
    """The order the shop places first, with ids chosen by the caller (the demo prints its page)."""

    order_id: str
    customer_id: str


def courier_id(i: int) -> str:
    """Id of the shop's i-th (0-based) courier, a driver of its own: shop-courier-001, ..."""
    return f"shop-courier-{i + 1:03d}"


def customer_id(i: int) -> str:
    """Id of the i-th (0-based) simulated customer."""
    return f"sim-customer-{i + 1:04d}"


def order_id(run: int, n: int) -> str:
    """The n-th order of the shop run started at epoch ms `run` (a restarted shop never reuses an id)."""
    return f"shop-{run:x}-{n:05d}"


def order_request(city: City, rng: random.Random, customer: str, order: str) -> dict[str, Any]:
    """A new order's body: a random pickup in the city and a drop-off at least MIN_TRIP_M away."""
    trip = ride_request(city, rng)
    return {"order_id": order, "customer_id": customer, "pickup": trip["pickup"], "dropoff": trip["destination"]}


def event_body(order: str, status: str, ts: int, courier: str | None = None) -> dict[str, Any]:
    """A status event of `order`; its event id names the order and status, so a retry is the same event."""
    body: dict[str, Any] = {"status": status, "event_id": f"{order}:{status}", "ts": ts}
    if status == "COURIER_ASSIGNED":
        if courier is None:
            raise ValueError("COURIER_ASSIGNED names its courier")
        body["courier_id"] = courier
    return body


def steer_couriers(couriers: Sequence[Driver], targets: dict[str, XY]) -> tuple[list[Driver], set[str]]:
    """Couriers with a target drive to it; the fleet, and the couriers within ARRIVE_M of their target."""
    out: list[Driver] = []
    arrived: set[str] = set()
    for d in couriers:
        target = targets.get(d.driver_id)
        if target is not None:
            if math.hypot(target[0] - d.x_m, target[1] - d.y_m) <= ARRIVE_M:
                arrived.add(d.driver_id)
            d = replace(d, wx_m=target[0], wy_m=target[1])
        out.append(d)
    return out, arrived


def _xy(city: City, point: dict[str, float]) -> XY:
    return city.from_latlng(point["lat"], point["lng"])


class ShopSim:
    """The shop's orders and its couriers' deliveries, as the `dispatch` hook of the couriers' fleet."""

    def __init__(self, settings: Settings, mint: Mint, *, seed: int = 13, first: FirstOrder | None = None) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.first = first
        self.stats: Counter[str] = Counter()
        self.headers = {**request_headers(mint("system", SHOP)), "Content-Type": "application/json"}
        self.targets: dict[str, XY] = {}  # courier -> where it drives now
        self.arrivals: dict[str, asyncio.Future[None]] = {}  # courier -> resolved when it reaches its target
        self.free: asyncio.Queue[str] = asyncio.Queue()
        self.run = clock.now_ms()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.http: aiohttp.ClientSession | None = None
        self.city: City | None = None

    async def start(self, http: aiohttp.ClientSession, city: City) -> None:
        """Couriers start free; orders start coming in."""
        self.http, self.city = http, city
        for i in range(self.settings.sim_couriers):
            self.free.put_nowait(courier_id(i))
        self._spawn(self._orders())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def steer(self, drivers: Sequence[Driver]) -> list[Driver]:
        """The fleet's tick: couriers on a delivery head for their next stop; arrivals wake their order."""
        couriers, arrived = steer_couriers(drivers, self.targets)
        for courier in arrived:
            del self.targets[courier]
            future = self.arrivals.pop(courier, None)
            if future is not None and not future.done():
                future.set_result(None)
        return couriers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _orders(self) -> None:
        """The first order at once (if given), then one every 1/rate s on average."""
        assert self.city is not None
        if self.first is not None:
            self._spawn(self._deliver(order_request(self.city, self.rng, self.first.customer_id, self.first.order_id)))
        rate, n = self.settings.sim_order_rate_hz, 0
        while rate > 0:
            await asyncio.sleep(self.rng.expovariate(rate))
            n += 1
            customer = customer_id(self.rng.randrange(CUSTOMERS))
            self._spawn(self._deliver(order_request(self.city, self.rng, customer, order_id(self.run, n))))

    async def _deliver(self, order: dict[str, Any]) -> None:
        """One order's life, from creation to DELIVERED; given up (logged) when the gateway refuses a step."""
        assert self.city is not None
        oid = order["order_id"]
        try:
            await self._post("/v1/orders", {**order, "ts": clock.now_ms()}, f"{oid}:CREATED")
            await asyncio.sleep(self.rng.uniform(*CONFIRM_S))
            await self._event(oid, "CONFIRMED")
            courier = await self.free.get()
            try:
                await self._event(oid, "COURIER_ASSIGNED", courier)
                await self._drive(courier, _xy(self.city, order["pickup"]))
                await asyncio.sleep(self.rng.uniform(*LOADING_S))
                await self._event(oid, "PICKED_UP")
                await asyncio.sleep(self.rng.uniform(*LEAVING_S))
                await self._event(oid, "OUT_FOR_DELIVERY")
                await self._drive(courier, _xy(self.city, order["dropoff"]))  # the pipeline sets ARRIVING
                await asyncio.sleep(self.rng.uniform(*HANDOVER_S))
                await self._event(oid, "DELIVERED")
            finally:
                self.targets.pop(courier, None)
                self.arrivals.pop(courier, None)
                self.free.put_nowait(courier)
            self.stats["delivered"] += 1
        except _Refused as exc:
            self.stats["abandoned"] += 1
            log.warning("order %s abandoned: %s", oid, exc)

    async def _drive(self, courier: str, target: XY) -> None:
        """Send `courier` to `target`; returns once the fleet's tick finds it there."""
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.targets[courier], self.arrivals[courier] = target, arrived
        await arrived

    async def _event(self, oid: str, status: str, courier: str | None = None) -> None:
        await self._post(f"/v1/orders/{oid}/events", event_body(oid, status, clock.now_ms(), courier), f"{oid}:{status}")

    async def _post(self, path: str, body: dict[str, Any], key: str) -> Any:
        """POST with an Idempotency-Key, retrying what nothing was accepted for; the answer's body."""
        assert self.http is not None
        headers = {**self.headers, "Idempotency-Key": key}
        outcome = ""
        for attempt in range(RETRY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(backoff_s(attempt, self.rng))
            status, reply = await self._request(path, body, headers)
            self.stats[f"{body.get('status', 'CREATED')} {status}"] += 1
            if 200 <= status < 300:  # 201/200 with the order once applied, 202 when that took too long
                return reply
            outcome = f"HTTP {status} {reply}" if status else str(reply)
            if status and status not in RETRY_STATUSES:
                break  # 400, 403, 409: retrying cannot help
        raise _Refused(f"{path} {body.get('status', 'create')}: {outcome}")

    async def _request(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        assert self.http is not None
        try:
            async with self.http.post(f"{self.settings.gateway_url}{path}", json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"


class _Refused(Exception):
    """A step of an order the gateway would not take."""


async def run_shop(
    settings: Settings, mint: Mint, *, duration_s: float | None = None, first: FirstOrder | None = None,
) -> Counter[str]:
    """The shop and its couriers against the gateway for duration_s, or until cancelled. The couriers'
    pings go with one ops token, as the fleet's do (a fleet integration); the orders with the shop's."""
    shop = ShopSim(settings, mint, first=first)
    await run_fleet(settings, duration_s=duration_s, token=mint("ops", SHOP), seed=17, dispatch=shop,
                    drivers=settings.sim_couriers, name=courier_id)
    return shop.stats
