"""/live of a gateway in process on the session broker, with official python-socketio clients over
websocket: connect refusals, subscribe / resume / ack, subscription refusals; the bridge (a record
produced to `push` reaches a client, a malformed one is skipped and counted, the batch goes on);
and the fast path taken with the pinned versions (direct frames grow, no fallback)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import Tokens
from gateway.keys import PRODUCER
from gateway.main import create_app
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH
from tests.integration.fixtures import Subscriber

pytestmark = pytest.mark.integration


class Gateway:
    def __init__(self, server: TestServer, settings: Settings) -> None:
        self.server = server
        self.url = str(server.make_url("")).rstrip("/")
        self.tokens = Tokens(settings)

    def token(self, role: str = "ops", sub: str = "gl-ops") -> str:
        return self.tokens.mint(role, sub)

    async def produce(self, *values: bytes | dict[str, Any]) -> None:
        """Records on `push` as an agent would send them (dicts are Avro-encoded), keyed alike: one partition."""
        producer = self.server.app[PRODUCER]
        codec = codec_for(PushMessage)
        group = producer.group()
        for value in values:
            producer.send(group, PUSH.name, value if isinstance(value, bytes) else codec.dumps(value), key=b"same")
        await group.wait()


@pytest.fixture(scope="module")
async def gateway(kafka_settings: Settings) -> AsyncIterator[Gateway]:
    server = TestServer(create_app(kafka_settings), host="127.0.0.1")
    await server.start_server()
    yield Gateway(server, kafka_settings)
    await server.close()


def _push(channel: str, seq: int, *, priority: int = 3, ttl_ms: int = 60_000, **data: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"channel": channel, "seq": seq, "type": "ride.status", "priority": priority, "ttl_ms": ttl_ms,
            "sent_ts": now, "event_ts": now, "data": json.dumps({"n": seq, **data})}


async def _scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("auth, reason", [(None, "missing token"), ({"token": "garbage"}, "malformed token")])
async def test_a_connection_without_a_valid_token_is_refused_with_the_reason(
    gateway: Gateway, auth: Any, reason: str
) -> None:
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append, namespace="/live")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gateway.url, namespaces=["/live"], transports=["websocket"], auth=auth)
    await client.disconnect()
    assert refusals == [{"message": reason}]


async def test_subscribe_resume_and_ack(gateway: Gateway) -> None:
    channel = f"ride:gl-{uuid.uuid4().hex[:8]}"
    async with Subscriber(gateway.url, gateway.token()) as live:
        ack = await live.subscribe(channel)
        assert ack == {"ok": True, "channel": channel, "seq": 0, "snapshot": None}
        await gateway.produce(_push(channel, 1), _push(channel, 2, priority=7, state="OFFERED"), _push(channel, 3))
        got = [await live.next() for _ in range(3)]
        assert [(u["seq"], u.get("ack", False)) for u in got] == [(1, False), (2, True), (3, False)]
        await live.sio.emit("ack", {"channel": channel, "seq": 2}, namespace="/live")
    async with Subscriber(gateway.url, gateway.token()) as late:
        resumed = await late.subscribe(channel, since=1)
        assert (resumed["recovered"], resumed["seq"], [u["seq"] for u in resumed["updates"]]) == (True, 3, [2, 3])
        fresh = await late.subscribe(channel)
        assert fresh["snapshot"]["seq"] == 3


async def test_subscriptions_are_refused_with_the_reason(gateway: Gateway) -> None:
    async with Subscriber(gateway.url, gateway.token("driver", "gl-me")) as live:
        assert await live.subscribe("driver:gl-other") == {"ok": False, "error": "not allowed: driver:gl-other"}
        assert await live.subscribe("fleet") == {"ok": False, "error": "not allowed: fleet"}
        assert (await live.subscribe("cell:zzzz"))["error"].startswith("'zzzz' is not an H3 cell index")
        assert await live.subscribe("driver:gl-me", since=-1) == {
            "ok": False, "error": "since must be a seq (integer >= 0)"}
        assert (await live.subscribe("driver:gl-me"))["ok"]


async def test_the_bridge_skips_and_counts_malformed_records_and_the_batch_goes_on(gateway: Gateway) -> None:
    channel = f"ride:gl-{uuid.uuid4().hex[:8]}"
    before = await _scrape(gateway)
    async with Subscriber(gateway.url, gateway.token()) as live:
        assert (await live.subscribe(channel))["ok"]
        await gateway.produce(_push(channel, 1), b"\x00not avro at all", {**_push(channel, 2), "data": "[1, 2]"},
                              _push(channel, 3))
        got = [await live.next(), await live.next()]
        assert [u["seq"] for u in got] == [1, 3]
        await gateway.produce(_push(channel, 4))
        assert (await live.next())["seq"] == 4
    after = await _scrape(gateway)
    for name in ("livetrack_push_undecodable_total", "livetrack_push_bad_total"):
        assert _value(after, name) - _value(before, name) == 1, name


async def test_with_the_pinned_versions_frames_take_the_fast_path(gateway: Gateway) -> None:
    """Real clients that keep up: the direct-frame counter grows and nothing falls back."""
    channel = f"ride:gl-{uuid.uuid4().hex[:8]}"
    before = await _scrape(gateway)
    clients = [Subscriber(gateway.url, gateway.token()) for _ in range(20)]
    for client in clients:
        await client.__aenter__()
        assert (await client.subscribe(channel))["ok"]
    try:
        for seq in range(1, 11):
            await gateway.produce(_push(channel, seq))
            for client in clients:
                assert (await client.next())["seq"] == seq
    finally:
        for client in clients:
            await client.__aexit__()
    after = await _scrape(gateway)
    grew = {path: _value(after, "livetrack_push_frames_total", path=path)
            - _value(before, "livetrack_push_frames_total", path=path) for path in ("direct", "queued", "fallback")}
    assert grew["fallback"] == 0 and _value(after, "livetrack_push_frames_total", path="fallback") == 0
    assert grew["direct"] + grew["queued"] == 200 and grew["direct"] >= 150, grew
    assert _value(after, "livetrack_push_direct_emits_total") - _value(before, "livetrack_push_direct_emits_total") \
        == grew["direct"]
    assert not [k for k in after if k[0] == "livetrack_push_internals_missing"]
