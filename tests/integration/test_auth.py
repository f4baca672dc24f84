"""Unauthorised publish, read and subscribe attempts against the running gateway are refused."""
from __future__ import annotations

import time
import uuid

import aiohttp
import jwt
import pytest
import socketio

from infra.settings import Settings
from tests.integration.fixtures import Pipeline, Subscriber, end_offsets, ping
from schemas.topics import LOCATIONS


def _forged(settings: Settings, **claims: object) -> str:
    now = int(time.time())
    base = {"sub": "d-1", "role": "ops", "iss": settings.jwt_issuer, "iat": now, "exp": now + 60}
    return jwt.encode({**base, **claims}, "not-the-gateway-key-0123456789abcdef", "HS256")


async def _post(pipeline: Pipeline, body: object, auth: str | None) -> tuple[int, dict]:
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pipeline.url}/v1/locations", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_ingest_refusals_name_the_reason_and_produce_nothing(pipeline: Pipeline) -> None:
    me, other = f"au-{uuid.uuid4().hex[:8]}", f"au-{uuid.uuid4().hex[:8]}"
    before = end_offsets(pipeline.settings, LOCATIONS.name)
    expired = pipeline.tokens.mint("driver", me, ttl_s=-60)
    cases = [
        (None, 401, "missing token"),
        ("Basic dXNlcjpwdw==", 401, "missing token"),
        (f"Bearer {expired}", 401, "token expired"),
        (f"Bearer {_forged(pipeline.settings)}", 401, "bad signature"),
        (f"Bearer {pipeline.token('rider', me)}", 403, None),
    ]
    for auth, status, reason in cases:
        got, body = await _post(pipeline, ping(me, 1), auth)
        assert got == status, (auth, body)
        if reason:
            assert body["error"] == reason
    got, body = await _post(pipeline, [ping(me, 1), ping(other, 1)], f"Bearer {pipeline.token('driver', me)}")
    assert got == 403 and body["problems"] == [
        {"index": 1, "field": "driver_id", "reason": "a driver token may not publish for this driver"}]
    assert end_offsets(pipeline.settings, LOCATIONS.name) == before  # nothing refused reached Kafka
    got, body = await _post(pipeline, ping(me, 1), f"Bearer {pipeline.token('driver', me)}")
    assert (got, body) == (202, {"accepted": 1})


async def test_get_driver_needs_a_token_allowed_to_see_that_driver(pipeline: Pipeline) -> None:
    d = f"au-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{pipeline.url}/v1/drivers/{d}") as resp:
            assert resp.status == 401
        async with http.get(f"{pipeline.url}/v1/drivers/{d}", headers=pipeline.headers("driver", "someone")) as resp:
            assert resp.status == 403
        async with http.get(f"{pipeline.url}/v1/drivers/{d}", headers=pipeline.headers("driver", d)) as resp:
            assert resp.status == 404  # allowed, just unknown


@pytest.mark.parametrize("auth, reason", [
    (None, "missing token"),
    ({"token": "garbage"}, "malformed token"),
    ("expired", "token expired"),
    ("forged", "bad signature"),
])
async def test_live_refuses_connections_without_a_valid_token(pipeline: Pipeline, auth: object, reason: str) -> None:
    if auth == "expired":
        auth = {"token": pipeline.tokens.mint("ops", "x", ttl_s=-60)}
    elif auth == "forged":
        auth = {"token": _forged(pipeline.settings)}
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[object] = []
    client.on("connect_error", refusals.append, namespace="/live")  # the server's reason arrives here
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(pipeline.url, namespaces=["/live"], transports=["websocket"], auth=auth)
    await client.disconnect()
    assert refusals == [{"message": reason}]


@pytest.mark.parametrize("role, sub, channel, allowed", [
    ("driver", "d-own", "driver:d-own", True),
    ("driver", "d-own", "driver:d-other", False),
    ("driver", "d-own", "fleet", False),
    ("rider", "u-1", "fleet", False),
    ("rider", "u-1", "driver:d-own", False),
    ("rider", "u-1", "ride:not-theirs", False),
    ("ops", "o-1", "fleet", True),
])
async def test_subscriptions_are_authorised_per_channel(
    pipeline: Pipeline, role: str, sub: str, channel: str, allowed: bool
) -> None:
    async with Subscriber(pipeline.url, pipeline.token(role, sub)) as client:
        ack = await client.subscribe(channel)
    assert ack["ok"] is allowed
    if not allowed:
        assert ack["error"] == f"not allowed: {channel}"
