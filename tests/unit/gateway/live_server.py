"""A real /live in process, without Kafka: gateway.main.setup_live on an aiohttp test server, and
official python-socketio clients for it. The push side is driven by calling `publish` directly."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth import Tokens
from gateway.channels import NAMESPACE, ChannelStore
from gateway.keys import MANAGER, METRICS, SETTINGS, STORE
from gateway.main import setup_live
from gateway.manager import LiveManager
from gateway.metrics import Metrics
from gateway.sockets import LiveNamespace
from infra.settings import Settings

__all__ = ["Client", "Live", "push", "running"]


def push(channel: str, seq: int, *, priority: int = 3, ttl_ms: int = 60_000, type: str = "driver.location",
         **data: Any) -> dict[str, Any]:
    """A decoded PushMessage, as the bridge hands it to `publish`."""
    now = int(time.time() * 1000)
    return {"channel": channel, "seq": seq, "type": type, "priority": priority, "ttl_ms": ttl_ms, "sent_ts": now,
            "event_ts": now, "data": json.dumps({"n": seq, **data})}


class Client:
    """An official python-socketio client on /live that keeps every update it gets, in order."""

    def __init__(self, url: str, auth: Any, transports: list[str]) -> None:
        self.url, self.auth, self.transports = url, auth, transports
        self.sio = socketio.AsyncClient(reconnection=False)
        self.updates: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self.sio.on("update", self._on_update, namespace=NAMESPACE)

    def _on_update(self, update: dict[str, Any]) -> None:
        self.updates.append(update)
        self._arrived.set()

    async def connect(self) -> None:
        await self.sio.connect(self.url, namespaces=[NAMESPACE], transports=self.transports, auth=self.auth,
                               wait_timeout=10)

    async def close(self) -> None:
        if self.transports == ["polling"]:
            # A graceful close waits for the long-poll GET in flight, 30 s here: nothing to test in that.
            await self.sio.eio.disconnect(abort=True)
        else:
            await self.sio.disconnect()

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=NAMESPACE, timeout=10)

    async def subscribe(self, channel: str, **extra: Any) -> dict[str, Any]:
        ack: dict[str, Any] = await self.call("subscribe", {"channel": channel, **extra})
        return ack

    async def wait_for(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        """The updates once at least `count` have arrived."""
        async with asyncio.timeout(timeout_s):
            while len(self.updates) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.updates

    def seqs(self, channel: str) -> list[int]:
        return [u["seq"] for u in self.updates if u["channel"] == channel]


@dataclass
class Live:
    """The running namespace, its manager and metrics, and a way to make clients."""

    settings: Settings
    namespace: LiveNamespace
    manager: LiveManager
    metrics: Metrics
    url: str
    tokens: Tokens
    clients: list[Client]

    async def client(self, role: str = "ops", sub: str = "t-ops", *, token: str | None = None,
                     transports: tuple[str, ...] = ("websocket",), connect: bool = True) -> Client:
        auth = {"token": token if token is not None else self.tokens.mint(role, sub)}
        client = Client(self.url, auth, list(transports))
        self.clients.append(client)
        if connect:
            await client.connect()
        return client

    def counter(self, metric: str, /, **labels: str) -> float:
        """A counter's (or gauge's) value now; 0 when it has no such series yet."""
        suffix = "" if metric.endswith("_missing") else "_total"
        return self.metrics.registry.get_sample_value(metric + suffix, labels) or 0.0

    def frames(self) -> dict[str, float]:
        return {path: self.counter("livetrack_push_frames", path=path) for path in ("direct", "queued", "fallback")}


@contextlib.asynccontextmanager
async def running(state_dir: Path, **settings: Any) -> AsyncIterator[Live]:
    """/live on a test server at 127.0.0.1, ready (no history to replay), until the block ends."""
    config = Settings(state_dir=state_dir, **settings)
    app = web.Application()
    app[SETTINGS] = config
    app[METRICS] = Metrics()
    app[STORE] = ChannelStore(max_len=config.push_history_max, max_age_ms=config.push_history_age_ms)
    tokens = Tokens(config)
    namespace = setup_live(app, tokens)
    namespace.ready.set()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    live = Live(config, namespace, app[MANAGER], app[METRICS], str(server.make_url("")).rstrip("/"), tokens, [])
    ticker = asyncio.create_task(namespace.run_ticker(config.push_tick_ms / 1000))
    try:
        yield live
    finally:
        ticker.cancel()
        for client in live.clients:
            await client.close()
        await server.close()
