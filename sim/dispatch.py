"""Simulated riders and the simulated drivers' side of dispatch, against the gateway.

Riders request rides at `sim_ride_rate_hz`. The fleet's drivers hear their offers on
`driver:{id}` (one ops connection watches them all, as a fleet integration would) and accept,
decline or ignore each with the configured probabilities, after a human pause. A driver who gets
the ride drives to the pickup, starts the trip, drives to the destination and completes it, each
step through the ride API with the driver's own token. `steer` is the hook the fleet's tick loop
calls: it points drivers on a trip at their next stop and notices arrivals.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import aiohttp

from gateway.client import LiveClient
from infra.settings import Settings
from sim.fleet import ARRIVE_M, City, Driver, driver_id

__all__ = ["DispatchSim", "Trip", "decide", "ride_request"]

log = logging.getLogger(__name__)

REACTION_S = (0.5, 3.0)  # a driver reads the offer before answering
MIN_TRIP_M = 800.0
RIDERS = 500  # distinct simulated riders
Mint = Callable[[str, str], str]  # (role, sub) -> token


def decide(rng: random.Random, accept_p: float, decline_p: float) -> str:
    """What a simulated driver does with an offer: accept, decline or ignore."""
    roll = rng.random()
    return "accept" if roll < accept_p else "decline" if roll < accept_p + decline_p else "ignore"


def ride_request(city: City, rng: random.Random) -> dict[str, Any]:
    """A rider's request: a random pickup in the city and a destination at least MIN_TRIP_M away."""
    px, py = city.random_point(rng)
    while True:
        dx, dy = city.random_point(rng)
        if math.hypot(dx - px, dy - py) >= MIN_TRIP_M:
            break
    (plat, plng), (dlat, dlng) = city.to_latlng(px, py), city.to_latlng(dx, dy)
    return {"pickup": {"lat": round(plat, 6), "lng": round(plng, 6)},
            "destination": {"lat": round(dlat, 6), "lng": round(dlng, 6)}, "product": "standard"}


@dataclass
class Trip:
    """A driver's ride: where it drives next and which leg that is."""

    ride_id: str
    target: tuple[float, float]  # x, y metres in the city plane
    destination: tuple[float, float]
    leg: str = "pickup"
    acting: bool = False  # a start/complete call is in flight


class DispatchSim:
    """Riders and drivers' decisions for a running fleet simulation."""

    def __init__(self, settings: Settings, mint: Mint, *, seed: int = 11) -> None:
        self.settings = settings
        self.mint = mint
        self.rng = random.Random(seed)
        self.trips: dict[str, Trip] = {}
        self.stats: Counter[str] = Counter()
        self._tokens: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.http: aiohttp.ClientSession | None = None
        self.city: City | None = None
        self.live: LiveClient | None = None  # the fleet's drivers' phones: resume, dedupe, acks

    def token(self, role: str, sub: str) -> str:
        key = (role, sub)
        if key not in self._tokens:
            self._tokens[key] = self.mint(role, sub)
        return self._tokens[key]

    async def start(self, http: aiohttp.ClientSession, city: City) -> None:
        """Watch the drivers' channels and start the riders."""
        self.http, self.city = http, city
        self.live = LiveClient(self.settings.gateway_url, self.token("ops", "simulator"), on_update=self.on_update)
        await self.live.connect()
        drivers = [driver_id(i) for i in range(self.settings.sim_drivers)]
        await asyncio.gather(*(self.live.subscribe(f"driver:{d}") for d in drivers))
        if self.settings.sim_ride_rate_hz > 0:
            self._spawn(self._riders())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.live is not None:
            await self.live.disconnect()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, path: str, role: str, sub: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        try:
            async with self.http.post(f"{self.settings.gateway_url}{path}", json=body,
                                      headers={"Authorization": f"Bearer {self.token(role, sub)}"}) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, str(exc)

    # --- riders ------------------------------------------------------------
    async def _riders(self) -> None:
        assert self.city is not None
        period = 1.0 / self.settings.sim_ride_rate_hz
        while True:
            await asyncio.sleep(self.rng.expovariate(1.0 / period))
            rider = f"sim-rider-{self.rng.randrange(RIDERS):04d}"
            status, body = await self._post("/v1/rides", "rider", rider, ride_request(self.city, self.rng))
            self.stats[f"request {status}"] += 1
            if status not in (201, 202):
                log.warning("ride request refused: %s %s", status, body)

    # --- drivers -----------------------------------------------------------
    def on_update(self, update: dict[str, Any]) -> None:
        data = update.get("data") or {}
        driver = data.get("driver_id")
        if update.get("type") == "offer" and driver and driver not in self.trips:
            action = decide(self.rng, self.settings.sim_accept_p, self.settings.sim_decline_p)
            self.stats[f"offer {action}"] += 1
            if action != "ignore":
                self._spawn(self._answer(driver, data, action))
        elif update.get("type") == "ride.ended" and driver in self.trips:
            if self.trips[driver].ride_id == data.get("ride_id"):
                del self.trips[driver]  # cancelled under it

    async def _answer(self, driver: str, offer: dict[str, Any], action: str) -> None:
        await asyncio.sleep(self.rng.uniform(*REACTION_S))
        status, ride = await self._post(f"/v1/rides/{offer['ride_id']}/{action}", "driver", driver)
        self.stats[f"{action} {status}"] += 1
        if action == "accept" and status == 200 and self.city is not None:
            pickup, dest = ride["pickup"], ride["destination"]
            self.trips[driver] = Trip(ride["ride_id"], self.city.from_latlng(pickup["lat"], pickup["lng"]),
                                      self.city.from_latlng(dest["lat"], dest["lng"]))

    def steer(self, drivers: Sequence[Driver]) -> list[Driver]:
        """Drivers on a trip head for their next stop; one that arrived starts or completes the trip."""
        out = []
        for d in drivers:
            trip = self.trips.get(d.driver_id)
            if trip is not None:
                if not trip.acting and math.hypot(trip.target[0] - d.x_m, trip.target[1] - d.y_m) <= ARRIVE_M:
                    trip.acting = True
                    self._spawn(self._arrived(d.driver_id, trip))
                d = replace(d, wx_m=trip.target[0], wy_m=trip.target[1])
            out.append(d)
        return out

    async def _arrived(self, driver: str, trip: Trip) -> None:
        action = "start" if trip.leg == "pickup" else "complete"
        status, _ = await self._post(f"/v1/rides/{trip.ride_id}/{action}", "driver", driver)
        self.stats[f"{action} {status}"] += 1
        if action == "start" and status in (200, 202):
            trip.leg, trip.target, trip.acting = "destination", trip.destination, False
        elif self.trips.get(driver) is trip:
            del self.trips[driver]  # done, or the ride is gone: free again
