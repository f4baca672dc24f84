"""The gateway in process on the session broker, through aiohttp's test client: the app factory
(routes, the Kafka parts started and stopped with the app), the views' statuses with field and
reason, and domain errors mapped to HTTP in the middleware."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import Tokens
from gateway.keys import BATCHER, BRIDGE, LIVE, MANAGER, ORDERS, PRODUCER, RIDES, SIO
from gateway.main import create_app
from infra.producer import ProduceError
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH
from tests.integration.fixtures import ping

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def http(kafka_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(kafka_settings), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


def _bearer(settings: Settings, role: str, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {Tokens(settings).mint(role, sub)}"}


def _driver() -> str:
    return f"ga-{uuid.uuid4().hex[:8]}"


async def test_the_factory_routes_and_its_kafka_parts_live_as_long_as_the_app(kafka_settings: Settings) -> None:
    app = create_app(kafka_settings)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert {("POST", "/v1/locations"), ("GET", "/v1/drivers/{driver_id}"), ("POST", "/v1/rides"),
            ("GET", "/v1/rides/{ride_id}"), ("POST", "/v1/rides/{ride_id}/{action}"), ("GET", "/healthz"),
            ("GET", "/metrics"), ("GET", "/"), ("GET", "/socket.io/"), ("POST", "/socket.io/"), ("POST", "/v1/orders"),
            ("GET", "/v1/orders/{order_id}"), ("POST", "/v1/orders/{order_id}/events"),
            ("POST", "/v1/drivers/{driver_id}/status"), ("GET", "/track/{order_id}")} <= routes
    assert app[SIO].manager is app[MANAGER] and app[LIVE].manager is app[MANAGER]  # the fan-out is the manager
    assert BRIDGE not in app and PRODUCER not in app  # nothing of Kafka before startup
    tails = {t for t in threading.enumerate() if t.name.endswith("-tail")}
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert app[LIVE].ready is app[BRIDGE].ready
        # Startup does not wait for the catch-up (/healthz says 503 meanwhile): the bridge replays
        # the `push` history, the rides view the `rides` log, both left there by earlier tests.
        for _ in range(400):
            if app[BRIDGE].ready.is_set() and app[RIDES].ready and app[ORDERS].ready:
                break
            await asyncio.sleep(0.05)
        assert app[BRIDGE].ready.is_set() and app[RIDES].ready and app[ORDERS].ready
        assert app[BATCHER] is not None
        started = {t for t in threading.enumerate() if t.name.endswith("-tail")} - tails
        assert {t.name for t in started} == {"push-tail", "rides-tail", "orders-tail", "orders-dlq-tail"}
        async with client.get("/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"ready": True})
    finally:
        await client.close()
    assert not any(t.is_alive() for t in started)  # the bridge and the views' tails stopped with the app


async def test_post_locations_is_202_once_kafka_has_the_pings(http: TestClient[Any, Any],
                                                              kafka_settings: Settings) -> None:
    d = _driver()
    async with http.post("/v1/locations", json=[ping(d, 1), ping(d, 2)],
                         headers=_bearer(kafka_settings, "driver", d)) as resp:
        assert (resp.status, await resp.json()) == (202, {"accepted": 2})


@pytest.mark.parametrize("body, problems", [
    ({"driver_id": "d", "seq": 1, "lat": 91, "lng": 0, "ts": 1}, [(0, "lat")]),
    ([ping("d", 1), {**ping("d", 2), "seq": "two"}, {**ping("d", 3), "lng": None}], [(1, "seq"), (2, "lng")]),
    ({**ping("d", 1), "driver_id": "d 1"}, [(0, "driver_id")]),
    ([], [(None, "")]),
])
async def test_invalid_pings_are_400_naming_index_field_and_reason(
    http: TestClient[Any, Any], kafka_settings: Settings, body: Any, problems: list[tuple[int | None, str]]
) -> None:
    async with http.post("/v1/locations", json=body, headers=_bearer(kafka_settings, "ops", "o")) as resp:
        got = await resp.json()
    assert resp.status == 400
    assert [(p["index"], p["field"]) for p in got["problems"]] == problems
    assert all(isinstance(p["reason"], str) and p["reason"] for p in got["problems"])


async def test_a_body_that_is_not_json_is_400(http: TestClient[Any, Any], kafka_settings: Settings) -> None:
    async with http.post("/v1/locations", data=b"{nope", headers=_bearer(kafka_settings, "ops", "o")) as resp:
        got = await resp.json()
    assert resp.status == 400 and got["error"] == "body is not JSON"
    assert got["problems"][0]["field"] == "" and got["problems"][0]["reason"]


@pytest.mark.parametrize("headers, reason", [
    ({}, "missing token"),
    ({"Authorization": "Basic dXNlcjpwdw=="}, "missing token"),
    ({"Authorization": "Bearer garbage"}, "malformed token"),
])
async def test_no_valid_token_is_401_with_the_reason(http: TestClient[Any, Any], headers: dict[str, str],
                                                     reason: str) -> None:
    for method, path in (("POST", "/v1/locations"), ("GET", "/v1/drivers/x"), ("GET", "/v1/rides/r")):
        async with http.request(method, path, json=ping("x", 1), headers=headers) as resp:
            assert (resp.status, await resp.json()) == (401, {"error": reason})


async def test_publishing_for_another_driver_is_403_naming_the_field(http: TestClient[Any, Any],
                                                                     kafka_settings: Settings) -> None:
    me, other = _driver(), _driver()
    async with http.post("/v1/locations", json=[ping(me, 1), ping(other, 1)],
                         headers=_bearer(kafka_settings, "driver", me)) as resp:
        got = await resp.json()
    assert resp.status == 403 and got["problems"] == [
        {"index": 1, "field": "driver_id", "reason": "a driver token may not publish for this driver"}]
    async with http.post("/v1/locations", json=ping(me, 1), headers=_bearer(kafka_settings, "rider", me)) as resp:
        assert resp.status == 403
    async with http.get(f"/v1/drivers/{me}", headers=_bearer(kafka_settings, "driver", other)) as resp:
        assert (resp.status, await resp.json()) == (403, {"error": f"this token may not read driver {me!r}"})


async def test_an_unknown_driver_is_404_and_a_pushed_one_is_read(http: TestClient[Any, Any],
                                                                 kafka_settings: Settings) -> None:
    d = _driver()
    headers = _bearer(kafka_settings, "driver", d)
    async with http.get(f"/v1/drivers/{d}", headers=headers) as resp:
        assert (resp.status, await resp.json()) == (404, {"error": f"unknown driver {d!r}"})
    async with http.post(f"/v1/rides/r-1/teleport", headers=headers) as resp:
        assert resp.status == 404 and "no action 'teleport'" in (await resp.json())["error"]
    producer = http.app[PRODUCER]
    group = producer.group()
    now = int(time.time() * 1000)
    msg = {"channel": f"driver:{d}", "seq": 4, "type": "driver.location", "priority": 3, "ttl_ms": 0,
           "sent_ts": now, "event_ts": now, "data": json.dumps({"lat": 1.5, "lng": 2.5})}
    producer.send(group, PUSH.name, codec_for(PushMessage).dumps(msg), key=msg["channel"].encode())
    await group.wait()
    for _ in range(100):  # the bridge reads it
        async with http.get(f"/v1/drivers/{d}", headers=headers) as resp:
            if resp.status == 200:
                assert await resp.json() == {"lat": 1.5, "lng": 2.5, "channel_seq": 4}
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the pushed driver never became readable")


async def test_too_large_is_413_for_bytes_and_for_items(http: TestClient[Any, Any], kafka_settings: Settings) -> None:
    headers = _bearer(kafka_settings, "ops", "o")
    big = b"[" + b" " * kafka_settings.ingest_max_body_bytes + b"]"
    async with http.post("/v1/locations", data=big, headers=headers) as resp:
        assert (resp.status, await resp.json()) == (
            413, {"error": f"body larger than {kafka_settings.ingest_max_body_bytes} bytes"})
    many = [ping("d", seq) for seq in range(1, kafka_settings.ingest_max_items + 2)]
    async with http.post("/v1/locations", json=many, headers=headers) as resp:
        assert (resp.status, await resp.json()) == (
            413, {"error": f"at most {kafka_settings.ingest_max_items} locations per request, got {len(many)}"})


async def test_the_middleware_maps_an_unacked_produce_to_503_and_counts_refusals(
    http: TestClient[Any, Any], kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(events: Any) -> None:
        raise ProduceError("broker gone")

    monkeypatch.setattr(http.app[BATCHER], "submit", unavailable)
    d = _driver()
    async with http.post("/v1/locations", json=ping(d, 1), headers=_bearer(kafka_settings, "driver", d)) as resp:
        assert (resp.status, await resp.json()) == (503, {"error": "event log unavailable, retry", "retry": True})
    async with http.post("/v1/locations", json=ping(d, 1)) as resp:
        assert resp.status == 401
    async with http.get("/metrics") as resp:
        text = await resp.text()
    for status in ("401", "503"):  # every refusal is counted where it is mapped
        assert f'livetrack_ingest_rejected_requests_total{{status="{status}"}}' in text, status
