"""The shop simulator's pure parts: ids, order bodies, status events, steering couriers to their stops."""
from __future__ import annotations

import asyncio
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infra.settings import Settings
from sim import shop
from sim.dispatch import MIN_TRIP_M
from sim.fleet import ARRIVE_M, City, make_fleet
from sim.shop import (
    LIFECYCLE, FirstOrder, ShopSim, courier_id, customer_id, event_body, order_id, order_request, steer_couriers,
)

SF = City(37.7749, -122.4194, 4000.0)


def test_ids() -> None:
    assert [courier_id(i) for i in (0, 9)] == ["shop-courier-001", "shop-courier-010"]
    assert customer_id(0) == "sim-customer-0001"
    assert order_id(0x19a, 7) == "shop-19a-00007"
    assert order_id(1, 1) != order_id(2, 1)  # a restarted shop's orders are new orders


def test_lifecycle_is_the_shops_part() -> None:
    """The shop posts every status but ARRIVING (the pipeline's) and the final alternatives."""
    assert LIFECYCLE == ("CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "DELIVERED")


def test_order_request_inside_the_city_and_a_trip_apart() -> None:
    rng = random.Random(3)
    for n in range(200):
        body = order_request(SF, rng, customer_id(n), order_id(1, n))
        assert set(body) == {"order_id", "customer_id", "pickup", "dropoff"}
        assert body["customer_id"] == customer_id(n) and body["order_id"] == order_id(1, n)
        (px, py), (dx, dy) = (SF.from_latlng(p["lat"], p["lng"]) for p in (body["pickup"], body["dropoff"]))
        assert math.hypot(px, py) <= SF.radius_m and math.hypot(dx, dy) <= SF.radius_m
        assert math.hypot(dx - px, dy - py) >= MIN_TRIP_M - 1  # coordinates are rounded to 6 places


def test_event_body() -> None:
    assert event_body("o-1", "CONFIRMED", 5) == {"status": "CONFIRMED", "event_id": "o-1:CONFIRMED", "ts": 5}
    assert event_body("o-1", "COURIER_ASSIGNED", 6, "k-1")["courier_id"] == "k-1"
    assert "courier_id" not in event_body("o-1", "PICKED_UP", 7, "k-1")  # named once, with the assignment
    assert event_body("o-1", "DELIVERED", 8) == event_body("o-1", "DELIVERED", 8)  # a retry is the same event
    with pytest.raises(ValueError):
        event_body("o-1", "COURIER_ASSIGNED", 6)


def test_steer_couriers_points_the_busy_ones_at_their_stop() -> None:
    couriers = make_fleet(3, SF, random.Random(1), now_s=0.0, period_s=1.0, name=courier_id)
    busy = couriers[1]
    target = (busy.x_m + 500.0, busy.y_m)
    out, arrived = steer_couriers(couriers, {busy.driver_id: target})
    assert (out[1].wx_m, out[1].wy_m) == target and arrived == set()
    assert out[0] == couriers[0] and out[2] == couriers[2]  # idle couriers roam as fleet drivers do


def test_steer_couriers_sees_arrivals() -> None:
    [c] = make_fleet(1, SF, random.Random(2), now_s=0.0, period_s=1.0, name=courier_id)
    near, far = (c.x_m + ARRIVE_M * 0.9, c.y_m), (c.x_m, c.y_m + ARRIVE_M * 1.1)
    assert steer_couriers([c], {c.driver_id: near})[1] == {c.driver_id}
    assert steer_couriers([c], {c.driver_id: far})[1] == set()
    assert steer_couriers([replace(c, x_m=far[0], y_m=far[1])], {c.driver_id: far})[1] == {c.driver_id}


async def test_shop_takes_an_order_from_creation_to_delivered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ShopSim against a stub gateway, its courier moved onto each stop by hand: every step is posted
    once, in order, with the shop's token, an Idempotency-Key per step and the courier named once."""
    for pause in ("CONFIRM_S", "LOADING_S", "LEAVING_S", "HANDOVER_S"):
        monkeypatch.setattr(shop, pause, (0.0, 0.0))
    posts: list[tuple[str, str, str, dict[str, Any]]] = []

    async def accept(request: web.Request) -> web.Response:
        posts.append((request.path, request.headers["Authorization"], request.headers["Idempotency-Key"],
                      await request.json()))
        return web.json_response({"order_id": request.match_info.get("order_id", "o-1")}, status=202)

    app = web.Application()
    app.router.add_post("/v1/orders", accept)
    app.router.add_post("/v1/orders/{order_id}/events", accept)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        settings = Settings(gateway_port=server.port, sim_order_rate_hz=0, sim_couriers=1, state_dir=tmp_path)
        sim = ShopSim(settings, lambda role, sub: f"{role}-{sub}", first=FirstOrder("o-1", "c-1"))
        await sim.start(http, SF)
        couriers = make_fleet(1, SF, random.Random(4), now_s=0.0, period_s=1.0, name=courier_id)
        for _ in range(500):
            if (target := sim.targets.get(courier_id(0))) is not None:
                couriers = [replace(couriers[0], x_m=target[0], y_m=target[1])]
            couriers = sim.steer(couriers)
            if sim.stats["delivered"]:
                break
            await asyncio.sleep(0.01)
        await sim.stop()
    assert [p[3].get("status", "CREATED") for p in posts] == ["CREATED", *LIFECYCLE]
    assert [p[0] for p in posts] == ["/v1/orders"] + ["/v1/orders/o-1/events"] * len(LIFECYCLE)
    assert {p[1] for p in posts} == {"Bearer system-sim-shop"}
    assert len({p[2] for p in posts}) == len(posts)
    assert posts[0][3]["customer_id"] == "c-1" and posts[0][3]["order_id"] == "o-1"
    assert [p[3].get("courier_id") for p in posts] == [None, None, courier_id(0), None, None, None]
    assert sim.free.qsize() == 1  # the courier is free again
