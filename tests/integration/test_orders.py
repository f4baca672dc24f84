"""Orders end to end on the real broker: the systems' API, the customer's channel, the courier's
moves and ARRIVING, idempotency, authorisation, refusals, the polling API and drivers' own status."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Mapping

import aiohttp
import pytest
from confluent_kafka import Producer

from schemas.avro import codec_for
from schemas.records import DeadLetter, OrderEvent
from schemas.topics import ORDER_EVENTS, ORDERS_DLQ
from tests.integration.fixtures import Pipeline, Subscriber, end_offsets, read_topic

pytestmark = pytest.mark.integration

PICKUP = {"lat": 60.1699, "lng": 24.9384}
DROPOFF = {"lat": 60.1790, "lng": 24.9384}  # ~1 km north


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def call(p: Pipeline, method: str, path: str, body: Any = None, *, role: str = "system", sub: str = "shop-1",
               headers: dict[str, str] | None = None) -> tuple[int, Any, Mapping[str, str]]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{p.url}{path}", json=body,
                                headers={**p.headers(role, sub), **(headers or {})}) as resp:
            data = await resp.json() if resp.status != 304 else None
            return resp.status, data, resp.headers.copy()


async def create(p: Pipeline, customer: str, **extra: Any) -> str:
    status, body, _ = await call(p, "POST", "/v1/orders",
                                 {"customer_id": customer, "pickup": PICKUP, "dropoff": DROPOFF, **extra})
    assert status == 201, body
    assert body["order"]["status"] == "CREATED"
    return str(body["order_id"])


async def event(p: Pipeline, order_id: str, status: str, **extra: Any) -> tuple[int, Any]:
    code, body, _ = await call(p, "POST", f"/v1/orders/{order_id}/events", {"status": status, **extra})
    return code, body


async def statuses(sub: Subscriber, until: str, timeout_s: float = 20) -> list[str]:
    """The `order.status` pushes' statuses, in order, up to `until`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not seen or seen[-1] != until:
        update = await sub.next(max(0.1, deadline - time.monotonic()))
        if update["type"] == "order.status":
            seen.append(update["data"]["status"])
    return seen


def ping(driver: str, seq: int, lat: float, lng: float) -> dict[str, Any]:
    return {"driver_id": driver, "seq": seq, "lat": lat, "lng": lng, "ts": int(time.time() * 1000), "speed": 8.0}


async def test_an_orders_whole_life_reaches_its_customer_in_order(pipeline: Pipeline) -> None:
    customer, courier = uid("c"), uid("courier")
    order_id = await create(pipeline, customer)
    async with Subscriber(pipeline.url, pipeline.token("customer", customer)) as sub:
        ack = await sub.subscribe(f"order:{order_id}")
        assert ack["ok"], ack
        assert ack["snapshot"]["data"]["status"] == "CREATED"
        for status, extra in (("CONFIRMED", {}), ("COURIER_ASSIGNED", {"courier_id": courier}), ("PICKED_UP", {}),
                              ("OUT_FOR_DELIVERY", {})):
            code, body = await event(pipeline, order_id, status, **extra)
            assert code == 200, body
            assert body["order"]["status"] == status
        # The courier drives to the drop-off; its moves reach the order, and the pipeline says ARRIVING.
        for seq in range(1, 12):
            frac = seq / 11
            lat = PICKUP["lat"] + (DROPOFF["lat"] - PICKUP["lat"]) * frac
            code, body, _ = await call(pipeline, "POST", "/v1/locations", ping(courier, seq, lat, PICKUP["lng"]),
                                       role="driver", sub=courier)
            assert code == 202, body
            await asyncio.sleep(0.05)
        seen = await statuses(sub, "ARRIVING")
        assert seen == ["CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING"]
        code, body = await event(pipeline, order_id, "DELIVERED")
        assert code == 200, body
        assert await statuses(sub, "DELIVERED") == ["DELIVERED"]
    code, order, headers = await call(pipeline, "GET", f"/v1/orders/{order_id}", role="customer", sub=customer)
    assert code == 200
    assert order["status"] == "DELIVERED" and order["courier_id"] == courier
    assert order["courier_position"]["lat"] > PICKUP["lat"] and order["eta_s"] is not None
    assert [s["status"] for s in order["timeline"]] == [
        "CREATED", "CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING", "DELIVERED"]
    assert [s["source"] for s in order["timeline"]][5] == "livetrack"
    # The polling API: an unchanged order costs a 304 and no body.
    code, _, again = await call(pipeline, "GET", f"/v1/orders/{order_id}", role="customer", sub=customer,
                                headers={"If-None-Match": headers["ETag"]})
    assert code == 304 and again["ETag"] == headers["ETag"]


async def test_a_retried_idempotency_key_produces_once(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    order_id = await create(pipeline, uid("c"))
    before = end_offsets(settings, ORDER_EVENTS.name)
    key = {"Idempotency-Key": uid("k")}
    answers = [await call(pipeline, "POST", f"/v1/orders/{order_id}/events", {"status": "CONFIRMED"}, headers=key)
               for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][1] == answers[1][1] == answers[2][1]
    await asyncio.sleep(0.5)
    produced = [m for m in read_topic(settings, ORDER_EVENTS.name, since=before) if m.key() == order_id.encode()]
    assert len(produced) == 1
    # The same key with another body is a client's mistake, not a retry.
    code, body, _ = await call(pipeline, "POST", f"/v1/orders/{order_id}/events", {"status": "CANCELLED"},
                               headers=key)
    assert code == 409, body


async def test_a_customer_may_follow_only_its_own_orders(pipeline: Pipeline) -> None:
    mine, theirs = uid("c"), uid("c")
    order_id = await create(pipeline, theirs)
    async with Subscriber(pipeline.url, pipeline.token("customer", mine)) as sub:
        ack = await sub.subscribe(f"order:{order_id}")
        assert not ack["ok"] and "not allowed" in ack["error"]
    code, body, _ = await call(pipeline, "GET", f"/v1/orders/{order_id}", role="customer", sub=mine)
    assert code == 403, body
    code, body, _ = await call(pipeline, "POST", "/v1/orders", {"customer_id": mine}, role="customer", sub=mine)
    assert code == 403, body


async def test_bad_input_is_refused_with_field_and_reason_and_nothing_produced(pipeline: Pipeline) -> None:
    before = end_offsets(pipeline.settings, ORDER_EVENTS.name)
    code, body, _ = await call(pipeline, "POST", "/v1/orders",
                               {"customer_id": "c 1", "pickup": {"lat": 95, "lng": 0}, "colour": "red"})
    assert code == 400
    assert {p["field"] for p in body["problems"]} == {"customer_id", "pickup.lat", "dropoff", "colour"}
    code, body = await event(pipeline, "o-nope", "TELEPORTED")
    assert code == 400 and body["problems"][0]["field"] == "status"
    assert end_offsets(pipeline.settings, ORDER_EVENTS.name) == before


async def test_an_illegal_transition_is_dead_lettered_and_the_agent_goes_on(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    order_id = await create(pipeline, uid("c"))
    # Over HTTP: refused with the agent's reason.
    code, body = await event(pipeline, order_id, "DELIVERED")
    assert code == 409 and "illegal transition CREATED -> DELIVERED" in body["error"], body
    # Straight onto the topic, as any Kafka producer may: dead-lettered, and the next event applies.
    dlq_before = end_offsets(settings, ORDERS_DLQ.name)
    codec = codec_for(OrderEvent)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "partitioner": "murmur2_random"})  # Java's
    bad = {"order_id": order_id, "event_id": uid("e"), "source": "wms", "type": "PICKED_UP", "ts": int(time.time() * 1000)}
    producer.produce(ORDER_EVENTS.name, codec.dumps(bad), key=order_id.encode())
    producer.flush(10)
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not letters and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        letters = [codec_for(DeadLetter).loads(m.value())
                   for m in read_topic(settings, ORDERS_DLQ.name, since=dlq_before) if m.key() == order_id.encode()]
    assert letters and "illegal transition CREATED -> PICKED_UP" in letters[0]["reason"]
    code, body = await event(pipeline, order_id, "CONFIRMED")
    assert code == 200 and body["order"]["status"] == "CONFIRMED", body


async def test_a_late_event_joins_the_timeline_without_moving_the_status_back(pipeline: Pipeline) -> None:
    t = int(time.time() * 1000)
    order_id = await create(pipeline, uid("c"), ts=t - 10_000)
    assert (await event(pipeline, order_id, "CONFIRMED", ts=t - 5000))[0] == 200
    assert (await event(pipeline, order_id, "CANCELLED", ts=t, reason="customer asked"))[0] == 200
    code, body = await event(pipeline, order_id, "CONFIRMED", ts=t - 6000, event_id=uid("dup"))
    assert code == 200 and body["outcome"] == "late", body
    assert body["order"]["status"] == "CANCELLED"
    assert [s["late"] for s in body["order"]["timeline"]] == [False, True, False, False]


async def test_a_driver_goes_on_a_break_and_back_from_its_app(pipeline: Pipeline) -> None:
    driver = uid("d")
    async with Subscriber(pipeline.url, pipeline.token("driver", driver)) as sub:
        code, body, _ = await call(pipeline, "POST", "/v1/locations", ping(driver, 1, 61.0, 25.0),
                                   role="driver", sub=driver)
        assert code == 202, body
        assert (await sub.subscribe(f"driver:{driver}"))["ok"]
        code, body, _ = await call(pipeline, "POST", f"/v1/drivers/{driver}/status", {"status": "break"},
                                   role="driver", sub=driver)
        assert code == 202, body
        while (update := await sub.next())["type"] != "driver.status":
            pass
        assert update["data"]["status"] == "ON_BREAK"
        ack = await sub.sio.call("status", {"status": "online"}, namespace="/live", timeout=10)
        assert ack["ok"], ack
        while (update := await sub.next())["type"] != "driver.status":
            pass
        assert update["data"]["status"] == "AVAILABLE"
    code, body, _ = await call(pipeline, "POST", f"/v1/drivers/{driver}/status", {"status": "break"},
                               role="driver", sub=uid("d"))
    assert code == 403, body


async def test_livetracks_dispatch_finds_the_courier_when_the_order_asks(pipeline: Pipeline) -> None:
    """The same candidates, offers and reservations as rides: the courier is offered a delivery trip,
    accepts it, and the order follows the trip (courier assigned, picked up, delivered, driver freed)."""
    centre = (62.0, 26.0)  # nobody else's drivers are here
    courier, customer = uid("d"), uid("c")
    pickup = {"lat": centre[0], "lng": centre[1]}
    async with Subscriber(pipeline.url, pipeline.token("driver", courier)) as phone:
        code, body, _ = await call(pipeline, "POST", "/v1/locations", ping(courier, 1, centre[0], centre[1] + 0.001),
                                   role="driver", sub=courier)
        assert code == 202, body
        assert (await phone.subscribe(f"driver:{courier}"))["ok"]
        await asyncio.sleep(1.0)  # the membership reaches the worker's candidate replica
        status, created, _ = await call(pipeline, "POST", "/v1/orders", {
            "customer_id": customer, "pickup": pickup, "dropoff": {"lat": centre[0] + 0.01, "lng": centre[1]},
            "dispatch": True})
        assert status == 201, created
        order_id = created["order_id"]
        assert (await event(pipeline, order_id, "CONFIRMED"))[0] == 200
        offer = await phone.next_of("offer", 20)
        trip = offer["data"]["ride_id"]
        code, accepted, _ = await call(pipeline, "POST", f"/v1/rides/{trip}/accept", role="driver", sub=courier)
        assert code == 200, accepted
        async with Subscriber(pipeline.url, pipeline.token("customer", customer)) as sub:
            ack = await sub.subscribe(f"order:{order_id}")
            if ack["snapshot"]["data"]["status"] != "COURIER_ASSIGNED":
                await sub.next_of("order.status", 20, status="COURIER_ASSIGNED")
        # GET reads the gateway's view of `orders`, which may trail its `push` by a moment.
        deadline = time.monotonic() + 5
        while (order := (await call(pipeline, "GET", f"/v1/orders/{order_id}", role="customer",
                                    sub=customer))[1])["status"] != "COURIER_ASSIGNED":
            assert time.monotonic() < deadline, order
            await asyncio.sleep(0.1)
        assert order["courier_id"] == courier
        assert order["timeline"][-1]["source"] == "livetrack"
        assert (await event(pipeline, order_id, "PICKED_UP"))[0] == 200
        assert (await phone.next_of("ride.started", 20, ride_id=trip))["data"]["status"] == "ON_TRIP"
        assert (await event(pipeline, order_id, "OUT_FOR_DELIVERY"))[0] == 200
        assert (await event(pipeline, order_id, "DELIVERED"))[0] == 200
        assert (await phone.next_of("ride.ended", 20, ride_id=trip))["data"]["status"] == "AVAILABLE"
    # The gateway's ride view follows `rides`, which may trail the driver's push by a moment.
    deadline = time.monotonic() + 5
    while (ride := (await call(pipeline, "GET", f"/v1/rides/{trip}", role="ops", sub="it-ops"))[1])["state"] != "COMPLETED":
        assert time.monotonic() < deadline, ride
        await asyncio.sleep(0.1)
    assert ride["driver_id"] == courier
