"""Dispatch end to end on the real broker: request, offer, accept, live trip, refusals."""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import aiohttp
import pytest

from tests.integration.fixtures import Pipeline, Subscriber

pytestmark = pytest.mark.integration

_areas = itertools.count(1)


def area() -> tuple[float, float]:
    """A place of its own for one test: no other test's drivers are near it."""
    n = next(_areas)
    return 10.0 + n * 0.5, 20.0 + n * 0.5


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Fleet:
    """Drivers that ping at real time around a point, so they are fresh candidates."""

    def __init__(self, pipeline: Pipeline, centre: tuple[float, float], n: int) -> None:
        self.p = pipeline
        self.centre = centre
        self.drivers = [uid("dd") for _ in range(n)]
        self.seq = 0

    def at(self, i: int, north_m: float = 0.0, east_m: float = 0.0) -> dict[str, Any]:
        lat, lng = self.centre
        return {"driver_id": self.drivers[i], "seq": self.seq, "lat": lat + (north_m + 30 * i) / 111_195,
                "lng": lng + east_m / 111_195, "ts": int(time.time() * 1000), "speed": 5.0}

    async def ping(self, offsets: dict[int, float] | None = None) -> None:
        """Every driver once; driver i `offsets[i]` metres north of its spot."""
        self.seq += 1
        body = [self.at(i, (offsets or {}).get(i, 0.0)) for i in range(len(self.drivers))]
        status, out = await post(self.p, "/v1/locations", body)
        assert status == 202, out


async def post(pipeline: Pipeline, path: str, body: Any = None, *, role: str = "ops", sub: str = "it-ops",
               headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pipeline.url}{path}", json=body,
                             headers={**pipeline.headers(role, sub), **(headers or {})}) as resp:
            return resp.status, await resp.json()


async def get(pipeline: Pipeline, path: str, *, role: str = "ops", sub: str = "it-ops") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{pipeline.url}{path}", headers=pipeline.headers(role, sub)) as resp:
            return resp.status, await resp.json()


def ride_body(centre: tuple[float, float], **extra: Any) -> dict[str, Any]:
    lat, lng = centre
    return {"pickup": {"lat": lat, "lng": lng}, "destination": {"lat": lat + 0.02, "lng": lng + 0.01},
            "product": "standard", **extra}


async def all_of(sub: Subscriber, timeout_s: float = 15, **wanted: Any) -> dict[str, dict[str, Any]]:
    """The first update matching each of `wanted`'s predicates, in whatever order they come."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, Any]] = {}
    while len(found) < len(wanted):
        update = await sub.next(max(0.1, deadline - time.monotonic()))
        for name, matches in wanted.items():
            if name not in found and matches(update):
                found[name] = update
    return found


async def test_a_whole_trip(pipeline: Pipeline) -> None:
    centre = area()
    fleet = Fleet(pipeline, centre, 3)
    await fleet.ping()
    await asyncio.sleep(1.0)  # memberships reach cell_to_drivers and the worker's replica
    rider = uid("rider")
    async with Subscriber(pipeline.url, pipeline.token("ops", "it-ops")) as driver_app:  # the drivers' phones
        for d in fleet.drivers:
            assert (await driver_app.subscribe(f"driver:{d}"))["ok"]
        status, ride = await post(pipeline, "/v1/rides", ride_body(centre, fare_estimate=0.01), role="rider",
                                  sub=rider)
        assert status == 201, ride
        ride_id = ride["ride_id"]
        assert ride["fare_estimate"] > 6 and ride["fare_estimate"] != 0.01  # server's price, not the client's
        assert ride["pickup_eta_s"] is not None and ride["rider_id"] == rider
        offer = await driver_app.next_of("offer", ride_id=ride_id)
        assert offer["data"]["ttl_ms"] == pipeline.settings.offer_ttl_ms and offer["data"]["pickup"]["lat"] == centre[0]
        nearest = offer["data"]["driver_id"]
        moving = fleet.drivers.index(nearest)
        async with Subscriber(pipeline.url, pipeline.token("rider", rider)) as rider_app:
            ack = await rider_app.subscribe(f"ride:{ride_id}")
            assert ack["ok"], ack
            assert (await post(pipeline, f"/v1/rides/{ride_id}/accept", role="rider", sub=rider))[0] == 403
            status, accepted = await post(pipeline, f"/v1/rides/{ride_id}/accept", role="driver", sub=nearest)
            assert (status, accepted["state"], accepted["driver_id"]) == (200, "ACCEPTED", nearest)
            update = await rider_app.next_of("ride.state", state="ACCEPTED")
            assert update["data"]["driver"]["driver_id"] == nearest and update["data"]["driver"]["eta_s"] is not None
            assert (await driver_app.next_of("ride.assigned", ride_id=ride_id))["data"]["status"] == "EN_ROUTE"

            await fleet.ping({moving: 200.0})  # the driver moves: the rider sees it, with a new ETA
            moved = await rider_app.next_of("ride.driver")
            assert moved["data"]["driver_id"] == nearest and moved["data"]["eta_to"] == "pickup"
            assert moved["data"]["lat"] == pytest.approx(centre[0] + (200 + 30 * moving) / 111_195)

            other = next(d for d in fleet.drivers if d != nearest)
            assert (await post(pipeline, f"/v1/rides/{ride_id}/start", role="driver", sub=other))[0] == 403
            assert (await post(pipeline, f"/v1/rides/{ride_id}/complete", role="driver", sub=nearest))[0] == 409
            status, started = await post(pipeline, f"/v1/rides/{ride_id}/start", role="driver", sub=nearest)
            assert (status, started["state"]) == (200, "ONGOING")
            status, done = await post(pipeline, f"/v1/rides/{ride_id}/complete", role="driver", sub=nearest)
            assert (status, done["state"]) == (200, "COMPLETED")
            assert (await rider_app.next_of("ride.state", state="COMPLETED"))["data"]["event"] == "COMPLETED"
        assert (await driver_app.next_of("ride.ended", ride_id=ride_id))["data"]["status"] == "AVAILABLE"
    status, got = await get(pipeline, f"/v1/rides/{ride_id}", role="rider", sub=rider)
    assert status == 200
    assert [(e["version"], e["event"]) for e in got["events"]] == [
        (1, "REQUESTED"), (2, "OFFERED"), (3, "ACCEPTED"), (4, "STARTED"), (5, "COMPLETED")]
    assert (await get(pipeline, f"/v1/rides/{ride_id}", role="rider", sub=uid("rider")))[0] == 403
    assert (await post(pipeline, f"/v1/rides/{ride_id}/cancel", role="rider", sub=rider))[0] == 409


async def test_decline_and_silence_pass_the_ride_on_and_cancel_releases_the_driver(pipeline: Pipeline) -> None:
    centre = area()
    fleet = Fleet(pipeline, centre, 3)
    await fleet.ping()
    await asyncio.sleep(1.0)
    rider = uid("rider")
    async with Subscriber(pipeline.url, pipeline.token("ops", "it-ops")) as ops:
        for d in fleet.drivers:
            assert (await ops.subscribe(f"driver:{d}"))["ok"]
        status, ride = await post(pipeline, "/v1/rides", ride_body(centre), role="rider", sub=rider)
        ride_id = ride["ride_id"]
        first = (await ops.next_of("offer", ride_id=ride_id))["data"]["driver_id"]
        status, declined = await post(pipeline, f"/v1/rides/{ride_id}/decline", role="driver", sub=first)
        assert status == 200 and [e["event"] for e in declined["events"]][-1] in ("DECLINED", "OFFERED")
        second = (await ops.next_of("offer", ride_id=ride_id))["data"]["driver_id"]
        assert second != first
        # The second driver never answers: after the TTL the offer is revoked and the third is asked
        # (the two are on different channels, so they may come in either order).
        got = await all_of(ops, revoked=lambda u: u["type"] == "offer.revoked" and u["data"]["ride_id"] == ride_id
                           and u["channel"] == f"driver:{second}",
                           offered=lambda u: u["type"] == "offer" and u["data"]["ride_id"] == ride_id)
        assert got["revoked"]["channel"] == f"driver:{second}" and got["revoked"]["data"]["reason"] == "expired"
        third = got["offered"]["data"]["driver_id"]
        assert third not in (first, second)
        # A late accept of the expired offer is refused; the rider cancels the open one.
        assert (await post(pipeline, f"/v1/rides/{ride_id}/accept", role="driver", sub=second))[0] == 409
        late = await ops.next_of("offer.revoked", ride_id=ride_id, reason="no open offer for this ride")
        assert late["channel"] == f"driver:{second}"
        status, cancelled = await post(pipeline, f"/v1/rides/{ride_id}/cancel", {"reason": "changed my mind"},
                                       role="rider", sub=rider)
        assert (status, cancelled["state"]) == (200, "CANCELLED")
        revoked = await ops.next_of("offer.revoked", ride_id=ride_id, reason="ride cancelled")
        assert revoked["channel"] == f"driver:{third}"
    status, got = await get(pipeline, f"/v1/rides/{ride_id}")
    events = [(e["event"], e["driver_id"]) for e in got["events"]]
    assert events == [("REQUESTED", None), ("OFFERED", first), ("DECLINED", first), ("OFFERED", second),
                      ("EXPIRED", second), ("OFFERED", third), ("CANCELLED", None)]
    assert got["reason"] == "changed my mind"


async def test_drivers_answer_offers_over_socketio(pipeline: Pipeline) -> None:
    centre = area()
    fleet = Fleet(pipeline, centre, 1)
    (me,) = fleet.drivers
    await fleet.ping()
    await asyncio.sleep(1.0)
    rider = uid("rider")
    async with Subscriber(pipeline.url, pipeline.token("driver", me)) as phone, \
            Subscriber(pipeline.url, pipeline.token("rider", rider)) as rider_app:
        assert (await phone.subscribe(f"driver:{me}"))["ok"]
        status, ride = await post(pipeline, "/v1/rides", ride_body(centre), role="rider", sub=rider)
        ride_id = ride["ride_id"]
        assert (await rider_app.subscribe(f"ride:{ride_id}"))["ok"]
        offer = await phone.next_of("offer", ride_id=ride_id)
        refused = await rider_app.sio.call("accept", {"ride_id": ride_id}, namespace="/live", timeout=10)
        assert refused["ok"] is False  # a rider's connection cannot answer offers
        ack = await phone.sio.call("accept", {"ride_id": offer["data"]["ride_id"]}, namespace="/live", timeout=10)
        assert ack == {"ok": True, "ride_id": ride_id, "submitted": "accept"}
        assert (await phone.next_of("ride.assigned", ride_id=ride_id))["data"]["status"] == "EN_ROUTE"
        accepted = await rider_app.next_of("ride.state", state="ACCEPTED")
        assert accepted["data"]["driver"]["driver_id"] == me
