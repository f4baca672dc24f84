"""Abuse limits: the API's rate per token (429 with Retry-After), and per /live caller its event rate,
its subscriptions per connection and its connections per token (ops and system are not limited); a
browser's Origin checked against the allow-list."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth import Principal, Tokens, auth_middleware
from gateway.keys import METRICS, SETTINGS
from gateway.limits import Buckets, caller_of
from gateway.metrics import Metrics
from gateway.middlewares import error_middleware, rate_limit_middleware
from infra.settings import Settings
from tests.unit.gateway.live_server import running


def test_each_caller_has_a_token_bucket() -> None:
    t = [0.0]
    b = Buckets(5.0, clock=lambda: t[0])
    assert all([b.take("a") is None for _ in range(10)])  # a burst of twice the rate
    assert b.take("a") == pytest.approx(0.2)
    assert b.take("b") is None  # another caller is not held back
    t[0] += 0.2
    assert b.take("a") is None


def test_ops_is_not_limited_and_others_count_by_role_and_subject() -> None:
    assert caller_of(Principal("ops", "map")) is None
    assert caller_of(Principal("system", "shop")) is None
    assert caller_of(Principal("driver", "d-1")) == "driver:d-1"
    assert caller_of(Principal("rider", "d-1")) == "rider:d-1"


async def _api(tmp_path: Path, rate: float) -> tuple[TestServer, Tokens]:
    settings = Settings(state_dir=tmp_path)
    tokens = Tokens(settings)

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware, auth_middleware(tokens), rate_limit_middleware(rate)])
    app[SETTINGS], app[METRICS] = settings, Metrics()
    app.router.add_get("/v1/hello", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, tokens


async def test_the_api_answers_429_with_retry_after_past_a_tokens_rate(tmp_path: Path) -> None:
    server, tokens = await _api(tmp_path, rate=2.0)
    url = str(server.make_url("/v1/hello"))
    try:
        async with aiohttp.ClientSession() as http:
            async def get(role: str, sub: str) -> tuple[int, dict[str, object], str | None]:
                headers = {"Authorization": f"Bearer {tokens.mint(role, sub)}"}
                async with http.get(url, headers=headers) as resp:
                    return resp.status, await resp.json(), resp.headers.get("Retry-After")

            assert [(await get("driver", "d-1"))[0] for _ in range(4)] == [200] * 4  # the burst
            status, body, retry_after = await get("driver", "d-1")
            assert status == 429 and retry_after == "1"
            assert body["error"] == "over 2 requests a second for this token" and 0 < body["retry_after_s"] <= 0.5
            assert (await get("driver", "d-2"))[0] == 200  # another token is not held back
            assert all([(await get("ops", "map"))[0] == 200 for _ in range(10)])
            async with http.get(url) as resp:
                assert resp.status == 401  # no token: refused before any bucket
        assert server.app[METRICS].registry.get_sample_value(
            "livetrack_ingest_rejected_requests_total", {"status": "429"}) == 1
    finally:
        await server.close()


async def test_a_connection_over_its_event_rate_gets_an_error_ack_and_others_go_on(tmp_path: Path) -> None:
    async with running(tmp_path, live_event_rate_per_s=5.0) as live:
        flooding, other, ops = await live.client("driver", "d-1"), await live.client("driver", "d-2"), await live.client()
        answers = [await flooding.subscribe("driver:d-1") for _ in range(11)]
        assert all(a["ok"] for a in answers[:10])
        assert answers[10]["ok"] is False and answers[10]["error"] == "over 5 events a second on this connection"
        assert 0 < answers[10]["retry_after_s"] <= 0.2
        assert (await other.subscribe("driver:d-2"))["ok"]
        assert all([(await ops.subscribe("fleet"))["ok"] for _ in range(20)])
        assert live.counter("livetrack_live_refused", what="rate") == 1
        acks = [await other.call("ack", {"channel": "driver:d-2", "seq": n}) for n in range(30)]
        assert acks == [None] * 30  # acks answer the server's sends: not counted


async def test_a_connection_holds_a_capped_number_of_channels(tmp_path: Path) -> None:
    async with running(tmp_path, live_max_subscriptions=2) as live:
        client = await live.client("driver", "d-1")
        assert (await client.subscribe("driver:d-1"))["ok"] and (await client.subscribe("user:d-1"))["ok"]
        assert (await client.subscribe("driver:d-1"))["ok"]  # one it holds already
        resumed = await client.call("subscribe", {"channel": "driver:d-1", "since": 0})
        assert resumed["ok"]  # resuming a held channel is not a new one
        ops = await live.client()
        assert all([(await ops.subscribe(f"driver:d-{i}"))["ok"] for i in range(5)])
        await client.call("unsubscribe", {"channel": "user:d-1"})
        assert live.manager.connection(client.sio.get_sid("/live") or "").channels == {"driver:d-1"}  # type: ignore[union-attr]
    async with running(tmp_path, live_max_subscriptions=1) as live:
        client = await live.client("driver", "d-1")
        assert (await client.subscribe("driver:d-1"))["ok"]
        over = await client.subscribe("user:d-1")
        assert over == {"ok": False, "error": "a connection holds 1 channels at most: unsubscribe from one first"}
        assert live.counter("livetrack_live_refused", what="subscriptions") == 1


async def test_a_token_holds_a_capped_number_of_connections(tmp_path: Path) -> None:
    async with running(tmp_path, live_max_connections_per_token=2) as live:
        token = live.tokens.mint("driver", "d-1")
        first, second = await live.client(token=token), await live.client(token=token)
        third = await live.client(token=token, connect=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await third.connect()
        assert live.counter("livetrack_live_refused", what="connections") == 1
        assert (await live.client("driver", "d-2")).sio.connected  # another subject is not held back
        assert all([(await live.client()).sio.connected for _ in range(3)])  # nor ops
        await second.close()
        for _ in range(50):  # the server forgets a closed connection a moment later
            if live.manager.connections_of("driver:d-1") == 1:
                break
            await asyncio.sleep(0.05)
        fourth = await live.client(token=token)
        assert first.sio.connected and fourth.sio.connected


async def _connects(live_url: str, token: str, origin: str | None) -> bool:
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(live_url, namespaces=["/live"], transports=["websocket"], auth={"token": token},
                             headers={"Origin": origin} if origin else {}, wait_timeout=5)
        return True
    except socketio.exceptions.ConnectionError:
        return False
    finally:
        await client.disconnect()


async def test_a_browser_from_an_origin_not_allowed_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, cors_origins="https://ops.example") as live:
        token = live.tokens.mint("driver", "d-1")
        assert await _connects(live.url, token, "https://ops.example")
        assert not await _connects(live.url, token, "https://evil.example")
        assert await _connects(live.url, token, None)  # not a browser: no Origin, the token decides
    async with running(tmp_path) as live:  # no list: the gateway's own origin only
        token = live.tokens.mint("driver", "d-1")
        assert await _connects(live.url, token, live.url)
        assert not await _connects(live.url, token, "https://evil.example")
