"""Order events to the customer's screen, and the polling GETs that pushing them saves.

On embedded real servers (broker, worker, gateway; `bench.harness.pipeline_running`):
N orders are created first (N = rate x duration / 5), then order events are posted at
`--rate` for `--duration` s, each order going CONFIRMED, COURIER_ASSIGNED, PICKED_UP,
OUT_FOR_DELIVERY, DELIVERED (`POST /v1/orders/{id}/events`, a `system` token, one
event per order at a time). Every order has one watching client, its customer's screen:

- *migrated* clients (`--migrated`, default half of the orders): customers on /live
  (gateway.client.LiveClient, ORDERS_PER_CUSTOMER orders per connection, a `customer`
  token each), subscribed to `order:{id}` before the events start;
- *polling* clients (the rest): `GET /v1/orders/{id}` every POLL_EVERY_S s at a random
  phase, with `If-None-Match` (the last ETag), so an unchanged order costs a 304.

Figures (one JSON object, the last line):
- `order_event_to_screen_p50_ms` / `_p95_ms` / `_p99_ms`: from the moment the event's POST
  is answered (2xx: its accepted time in this process) to the moment a subscribed client
  gets the `order.status` update with that status (ingest, the worker and the gateway
  included; an update that arrives before this process has read the answer counts as 0).
  The gateway answers an event once its own view of the order has it (200 with the order;
  202 only when that takes over `order_reply_timeout_s`), which is about when it pushes it:
  so this is near 0, and `order_post_to_screen_*` times the same from the moment the POST
  was sent (the whole path: HTTP, Kafka, the orders agent, the push bridge, the socket).
  `order_events_lost`: accepted events of migrated orders no client saw.
- `poll_event_to_screen_p50_ms` / `_p95_ms`: the same for polling clients: accepted -> the
  first GET that shows the status (half the poll period on average, by construction);
  `poll_statuses_never_shown`: statuses a polling client never saw (superseded between polls).
- `poll_get_reduction_pct`, against a baseline where every client (migrated or not) polls
  every POLL_EVERY_S s and every GET carries the order: baseline GETs = clients x duration /
  POLL_EVERY_S; the reduction is 100 x (1 - GETs that carried data (200) / baseline GETs).
  `poll_request_reduction_pct` counts the 304s too: 100 x (1 - (200s + 304s) / baseline).
  The raw counts: `gets_200`, `gets_304`, `baseline_gets`, and `subscriptions` (subscribe
  calls, resumes included), which replace the migrated clients' GETs.
- `legacy_commit_to_screen_p50_ms` / `_p95_ms`, after the rest, on the same servers plus a local
  PostgreSQL and the Kafka Connect worker with Debezium (docs/legacy.md): the legacy platform's
  job (`legacy.jobs`, one transaction a step) moves orders through their lifecycle at
  `--legacy-rate` steps/s for `--legacy-duration` s, from a queue row's commit (the time the
  COMMIT returned) to the moment the order's customer, subscribed on /live, sees that status
  (WAL, Debezium, `legacy-order-events`, the legacy orders agent, `order-events`, the orders
  agent, the push). `legacy_events`, `legacy_lost`: committed steps, and those no client saw.
  null with `--no-legacy`, or when PostgreSQL or Connect cannot start here (the reason is printed).

    python -m bench.orders [--rate 200] [--duration 30] [--migrated 0.5] [--legacy-rate 20] [--no-legacy]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import psycopg

from bench.harness import CpuMeter, bench_settings, emit, percentiles, pipeline_running
from gateway.auth import Tokens
from gateway.client import LiveClient, SubscribeRefused
from infra.connect import ConnectError, connect_running
from infra.postgres import PostgresError, postgres_running
from infra.settings import Settings
from legacy.db import LegacyError, apply_schema
from legacy.jobs import LatLng, advance_order, create_order

STAGES = ("CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "DELIVERED")
POLL_EVERY_S = 10.0
ORDERS_PER_CUSTOMER = 10  # a migrated customer's connection watches this many orders
CONCURRENCY = 64  # HTTP requests in flight at most
SUBSCRIBE_TRIES = 50  # a new order's channel may be refused until the gateway has seen its CREATED
STRAGGLERS_S = 5.0
LEGACY_STEPS_PER_ORDER = 6  # CREATED, then about five steps to a final status
PROGRESS_EVERY_S = 5.0


def order_id(i: int) -> str:
    return f"bench-o-{i:05d}"


def customer_of(i: int) -> str:
    return f"bench-c-{i // ORDERS_PER_CUSTOMER:04d}"


def order_body(i: int, rng: random.Random) -> dict[str, Any]:
    """A new order in San Francisco (the default city), pickup and drop-off about 1-3 km apart."""
    lat, lng = 37.7749 + rng.uniform(-0.02, 0.02), -122.4194 + rng.uniform(-0.02, 0.02)
    return {"order_id": order_id(i), "customer_id": customer_of(i), "pickup": {"lat": lat, "lng": lng},
            "dropoff": {"lat": lat + rng.uniform(0.01, 0.02), "lng": lng + rng.uniform(-0.01, 0.01)}}


def event_body(i: int, stage: int) -> dict[str, Any]:
    status = STAGES[stage]
    body: dict[str, Any] = {"status": status, "event_id": f"{order_id(i)}:{status}", "ts": int(time.time() * 1000)}
    if status == "COURIER_ASSIGNED":
        body["courier_id"] = f"bench-k-{i % 100:03d}"
    return body


def reduction_pct(gets: int, baseline: float) -> float:
    return round(100.0 * (1.0 - gets / baseline), 1) if baseline > 0 else float("nan")


@dataclass
class Tally:
    """What the run saw: accepted and seen times (epoch s) by (order index, status), GETs by status."""

    sent: dict[tuple[int, str], float] = field(default_factory=dict)
    accepted: dict[tuple[int, str], float] = field(default_factory=dict)
    seen: dict[Any, float] = field(default_factory=dict)  # filled by Screens
    polled: dict[tuple[int, str], float] = field(default_factory=dict)
    http: Counter[str] = field(default_factory=Counter)
    polling: bool = False  # GETs are counted while the events run


class Screens:
    """Customers' screens: one /live connection a customer (a `customer` token), subscribed to its
    orders' channels; when each (key of the order, status) was first seen, into `seen`."""

    def __init__(self, url: str, tokens: Tokens, seen: dict[Any, float], key: Callable[[str], Any]) -> None:
        self.url, self.tokens, self.seen, self.key = url, tokens, seen, key
        self.clients: dict[str, LiveClient] = {}
        self.subscriptions = 0

    def on_update(self, update: dict[str, Any]) -> None:
        data = update.get("data") or {}
        key = self.key(str(data.get("order_id")))
        if update.get("type") == "order.status" and key is not None:
            self.seen.setdefault((key, str(data.get("status"))), time.time())

    async def watch(self, orders: list[tuple[str, str]]) -> None:
        """Subscribe each (customer, order); a customer's connection is opened with its first order."""
        for customer in dict.fromkeys(c for c, _ in orders):
            client = LiveClient(self.url, self.tokens.mint("customer", customer), on_update=self.on_update)
            await client.connect()
            self.clients[customer] = client
        await asyncio.gather(*(self._subscribe(self.clients[c], o) for c, o in orders))

    async def _subscribe(self, client: LiveClient, order: str) -> None:
        for _ in range(SUBSCRIBE_TRIES):
            self.subscriptions += 1
            try:
                await client.subscribe(f"order:{order}")
                return
            except SubscribeRefused:
                await asyncio.sleep(0.2)  # the gateway has not seen the order yet
        raise RuntimeError(f"order:{order} refused {SUBSCRIBE_TRIES} times")

    async def close(self) -> None:
        for client in self.clients.values():
            await client.disconnect()


class OrdersBench:
    """The clients and the event sender of one run."""

    def __init__(self, settings: Settings, n_orders: int, migrated: int) -> None:
        self.settings = settings
        self.url = settings.gateway_url
        self.n, self.migrated = n_orders, migrated  # orders [0, migrated) are watched over /live
        self.tokens = Tokens(settings)
        self.system = {"Authorization": f"Bearer {self.tokens.mint('system', 'bench-shop')}"}
        self.tally = Tally()
        self.index = {order_id(i): i for i in range(n_orders)}
        self.screens = Screens(self.url, self.tokens, self.tally.seen, self.index.get)
        self.gate = asyncio.Semaphore(CONCURRENCY)

    async def post(self, http: aiohttp.ClientSession, path: str, body: dict[str, Any], key: str) -> int:
        async with self.gate:
            try:
                async with http.post(f"{self.url}{path}", json=body,
                                     headers={**self.system, "Idempotency-Key": key}) as resp:
                    await resp.read()
                    self.tally.http[f"POST {resp.status}"] += 1
                    return resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.tally.http[f"POST {type(exc).__name__}"] += 1
                return 0

    async def create_orders(self, http: aiohttp.ClientSession, rate: float) -> None:
        rng = random.Random(5)
        await _at_rate(self.n, rate, lambda i: self.post(http, "/v1/orders", order_body(i, rng), f"{order_id(i)}:CREATED"),
                       "created")

    # --- migrated clients ------------------------------------------------------------------------------
    async def subscribe_all(self) -> None:
        watched = [(customer_of(i), order_id(i)) for i in range(self.migrated)]
        await self.screens.watch(watched)
        print(f"subscribed: {self.migrated} orders on {len(self.screens.clients)} customer connections", flush=True)

    # --- polling clients -------------------------------------------------------------------------------
    async def poll(self, http: aiohttp.ClientSession, i: int, rng: random.Random) -> None:
        """GET the order every POLL_EVERY_S s from a random phase, with If-None-Match."""
        headers = {"Authorization": f"Bearer {self.tokens.mint('customer', customer_of(i))}"}
        await asyncio.sleep(rng.uniform(0, POLL_EVERY_S))
        while True:
            async with self.gate:
                try:
                    async with http.get(f"{self.url}/v1/orders/{order_id(i)}", headers=headers) as resp:
                        body = await resp.json(content_type=None) if resp.status == 200 else None
                        if self.tally.polling:
                            self.tally.http[f"GET {resp.status}"] += 1
                        if resp.status == 200 and resp.headers.get("ETag"):
                            headers["If-None-Match"] = resp.headers["ETag"]
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.tally.http[f"GET {type(exc).__name__}"] += 1
                    body = None
            if isinstance(body, dict):
                self.tally.polled.setdefault((i, str(body.get("status"))), time.time())
            await asyncio.sleep(POLL_EVERY_S)

    # --- the events ------------------------------------------------------------------------------------
    async def send_events(self, http: aiohttp.ClientSession, rate: float, count: int) -> None:
        last: dict[int, asyncio.Task[None]] = {}

        async def one(k: int, before: asyncio.Task[None] | None) -> None:
            i, stage = k % self.n, k // self.n
            if before is not None:
                await before  # an order's events one at a time, in order
            body = event_body(i, stage)
            self.tally.sent[(i, body["status"])] = time.time()
            if 200 <= await self.post(http, f"/v1/orders/{order_id(i)}/events", body, body["event_id"]) < 300:
                self.tally.accepted[(i, body["status"])] = time.time()

        def spawn(k: int) -> asyncio.Task[None]:
            task = last[k % self.n] = asyncio.ensure_future(one(k, last.get(k % self.n)))
            return task

        await _at_rate(count, rate, spawn, "events", self.progress)

    def progress(self) -> str:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.tally.http.items()))
        return f"accepted {len(self.tally.accepted)}, seen by subscribers {len(self.tally.seen)} ({answers})"

    def figures(self, duration_s: float) -> dict[str, Any]:
        t = self.tally
        live = _delays(t.accepted, t.seen, lambda i: i < self.migrated)
        polled = _delays(t.accepted, t.polled, lambda i: i >= self.migrated)
        live_accepted = sum(1 for key in t.accepted if key[0] < self.migrated)
        polled_accepted = len(t.accepted) - live_accepted
        baseline = self.n * duration_s / POLL_EVERY_S
        gets_200, gets_304 = t.http["GET 200"], t.http["GET 304"]
        return {
            **percentiles(live, "order_event_to_screen"),
            **percentiles(_delays(t.sent, t.seen, lambda i: i < self.migrated), "order_post_to_screen"),
            "order_events_accepted": len(t.accepted), "order_events_lost": live_accepted - len(live),
            **{k: v for k, v in percentiles(polled, "poll_event_to_screen").items() if not k.endswith("p99_ms")},
            "poll_statuses_never_shown": polled_accepted - len(polled),
            "poll_get_reduction_pct": reduction_pct(gets_200, baseline),
            "poll_request_reduction_pct": reduction_pct(gets_200 + gets_304, baseline),
            "clients": self.n, "migrated_clients": self.migrated, "baseline_gets": round(baseline),
            "gets_200": gets_200, "gets_304": gets_304, "subscriptions": self.screens.subscriptions,
            "http": dict(sorted(t.http.items())),
        }


def _delays(since: dict[Any, float], shown: dict[Any, float],
            watched: Any) -> list[float]:
    """ms from `since` to `shown` for each (order, status) of the watched orders that was shown."""
    return [(shown[key] - at) * 1000 for key, at in since.items() if watched(key[0]) and key in shown]


async def _at_rate(count: int, rate: float, start: Any, what: str, progress: Any = None) -> None:
    """Call `start(i)` (a coroutine or task) for i in range(count), i due at t0 + i / rate; await them all."""
    t0 = last_print = time.perf_counter()
    pending: list[Any] = []
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(start(i)))
        if time.perf_counter() - last_print >= PROGRESS_EVERY_S:
            last_print = time.perf_counter()
            print(f"  {what}: {i + 1}/{count} sent{'; ' + progress() if progress else ''}", flush=True)
    await asyncio.gather(*pending)
    print(f"  {what}: {count} sent in {time.perf_counter() - t0:.1f} s", flush=True)


async def measure(settings: Settings, rate: float, duration_s: float, migrated_share: float) -> dict[str, Any]:
    n = max(1, math.ceil(rate * duration_s / len(STAGES)))
    migrated = min(n, round(n * migrated_share))
    bench = OrdersBench(settings, n, migrated)
    rng = random.Random(9)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        print(f"creating {n} orders ({migrated} watched over /live, {n - migrated} polled)", flush=True)
        await bench.create_orders(http, rate)
        pollers: list[asyncio.Future[None]] = []
        try:
            await bench.subscribe_all()
            pollers += [asyncio.ensure_future(bench.poll(http, i, rng)) for i in range(migrated, n)]
            await asyncio.sleep(POLL_EVERY_S)  # every poller has its first answer (and ETag) before counting starts
            bench.tally.polling = True
            started = time.perf_counter()
            await bench.send_events(http, rate, n * len(STAGES))
            await asyncio.sleep(max(STRAGGLERS_S, duration_s - (time.perf_counter() - started)))
            bench.tally.polling = False
            measured_s = time.perf_counter() - started
        finally:
            for task in pollers:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            await bench.screens.close()
    return {"order_event_rate": rate, "duration_s": round(measured_s, 1), **bench.figures(measured_s)}


async def measure_legacy(settings: Settings, dsn: str, rate: float, duration_s: float) -> dict[str, Any]:
    """The legacy job's steps at `rate` for `duration_s`: queue row committed -> the customer's screen."""
    n = max(1, math.ceil(rate * duration_s / (LEGACY_STEPS_PER_ORDER - 1)))
    orders = [(f"legacy-c-{i // ORDERS_PER_CUSTOMER:04d}", f"legacy-o-{i:05d}") for i in range(n)]
    committed: dict[tuple[str, str], float] = {}
    seen: dict[Any, float] = {}
    screens = Screens(settings.gateway_url, Tokens(settings), seen, lambda oid: oid if oid.startswith("legacy-o-") else None)
    rng = random.Random(21)
    print(f"legacy: {n} orders created in PostgreSQL, then {rate:g} steps/s for {duration_s:g} s", flush=True)
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for customer, order in orders:
                pickup: LatLng = {"lat": 37.7749 + rng.uniform(-0.02, 0.02), "lng": -122.4194 + rng.uniform(-0.02, 0.02)}
                await create_order(conn, order, customer, pickup, {"lat": pickup["lat"] + 0.01, "lng": pickup["lng"]})
            await screens.watch(orders)
            await _legacy_steps(conn, [order for _, order in orders], rate, duration_s, rng, committed)
        await asyncio.sleep(STRAGGLERS_S)
    finally:
        await screens.close()
    delays = _delays(committed, seen, lambda _: True)
    figures = {k: v for k, v in percentiles(delays, "legacy_commit_to_screen").items() if not k.endswith("p99_ms")}
    return {**figures, "legacy_events": len(committed), "legacy_lost": len(committed) - len(delays)}


async def _legacy_steps(conn: psycopg.AsyncConnection[Any], live: list[str], rate: float, duration_s: float,
                        rng: random.Random, committed: dict[tuple[str, str], float]) -> None:
    """Advance the orders round-robin, step k due at t0 + k / rate, until the time is up or all are final."""
    t0, k = time.perf_counter(), 0
    while live and k < rate * duration_s:
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        order = live[k % len(live)]
        step = await advance_order(conn, order, rng)
        if step is None:
            live.remove(order)  # final
            continue
        committed[(order, step.status)] = step.at
        k += 1


def legacy_figures(settings: Settings, rate: float, duration_s: float) -> dict[str, Any]:
    """measure_legacy on a local PostgreSQL and Connect worker started for it (stopped after), or nulls."""
    try:
        with postgres_running(settings) as dsn:
            apply_schema(dsn)
            with connect_running(settings, dsn):
                return asyncio.run(measure_legacy(settings, dsn, rate, duration_s))
    except (PostgresError, ConnectError, LegacyError, OSError) as exc:
        print(f"legacy figures are null: {type(exc).__name__}: {exc}", flush=True)
        return {"legacy_commit_to_screen_p50_ms": None, "legacy_commit_to_screen_p95_ms": None}


def run(rate: float, duration_s: float, migrated_share: float, legacy: tuple[float, float] | None) -> dict[str, Any]:
    settings = bench_settings(app_id=f"livetrack-orders-{int(time.time())}")
    with pipeline_running(settings, "orders") as (worker, gateway):
        meter = CpuMeter(settings, worker, gateway, loadgen=True)
        meter.start()
        figures = asyncio.run(measure(settings, rate, duration_s, migrated_share))
        figures.update(meter.stop())
        if legacy is None:
            figures.update({"legacy_commit_to_screen_p50_ms": None, "legacy_commit_to_screen_p95_ms": None})
        else:
            figures.update(legacy_figures(settings, *legacy))
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="order events per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of events")
    p.add_argument("--migrated", type=float, default=0.5, help="share of the orders watched over /live (0-1)")
    p.add_argument("--legacy-rate", type=float, default=20.0, help="legacy job steps per second")
    p.add_argument("--legacy-duration", type=float, default=15.0, help="seconds of legacy steps")
    p.add_argument("--no-legacy", action="store_true", help="skip the legacy phase (no PostgreSQL, no Connect)")
    args = p.parse_args()
    emit(run(args.rate, args.duration, args.migrated, None if args.no_legacy else (args.legacy_rate, args.legacy_duration)))


if __name__ == "__main__":
    main()
