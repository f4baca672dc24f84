"""Dispatch latency and matching throughput on a fresh local pipeline.

200 drivers ping at 1 Hz around a city; riders request rides at `--rate` for `--duration` seconds,
after `--warmup` seconds at that rate that are not measured. The drivers' phones (one
gateway.client.LiveClient watching every `driver:{id}`, acking events as every client does) accept each offer at once over HTTP; the
riders' LiveClient subscribes to `ride:{id}` as soon as the request is answered. Once assigned, the rider cancels, so the driver is free again. Then a burst of `--burst` requests as fast as the gateway takes them.

- offer:  the POST /v1/rides is sent -> the driver's client has the offer.
- assign: the POST is sent -> the rider's client sees ride.state ACCEPTED.
- match_requests_per_s: burst requests assigned per second, first POST to last assignment.
- offers_over_1s: measured requests whose offer came more than a second late, or never; the
  phones' and riders' client `gaps` and `resets` (a reset can lose an update, as offers were once lost).
- <process>_cpu_pct, machine_cpu_pct: CPU over the measured phase, in % of one core (the machine
  has `os.cpu_count()` of them; the load generator is this process).

    python -m bench.dispatch [--rate 50] [--duration 20] [--warmup 5] [--burst 300]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from typing import Any

import aiohttp

from bench.harness import CpuMeter, bench_settings, emit, percentiles, pipeline_running
from gateway.auth import Tokens
from gateway.client import LiveClient, SubscribeRefused
from infra.settings import Settings

DRIVERS = 200
RADIUS_M = 2500.0


def now_ms() -> float:
    return time.time() * 1000


class Bench:
    """Drivers, their phones, riders and every timestamp the figures need."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.tokens = Tokens(settings)
        self.rng = random.Random(5)
        lat, lng = (float(x) for x in settings.sim_city.split(","))
        self.centre = (lat, lng)
        self.drivers = [f"bench-d{i:03d}" for i in range(DRIVERS)]
        self.spots = [self.point() for _ in self.drivers]
        self.driver_tokens = {d: self.tokens.mint("driver", d) for d in self.drivers}
        self.ops = self.tokens.mint("ops", "bench-dispatch")
        self.rider = self.tokens.mint("rider", "bench-rider")
        self.sent: dict[str, float] = {}  # ride id -> POST sent (ms)
        self.offered: dict[str, float] = {}  # ride id -> first offer at the driver's client
        self.assigned: dict[str, float] = {}  # ride id -> ACCEPTED at the rider's client
        self.outcomes: dict[str, str] = {}
        self.to_worker: dict[str, float] = {}  # ride id -> POST sent -> the rides agent logged REQUESTED
        self.to_phone: dict[str, float] = {}  # ride id -> the rides agent asked for the reservation -> offer seen
        self.to_offers: dict[str, float] = {}  # ride id -> the rides agent asked -> the offers agent reserved
        self.offer_to_phone: dict[str, float] = {}  # ride id -> the offers agent reserved -> offer seen
        self.statuses: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.http: aiohttp.ClientSession | None = None
        # The drivers' phones and the riders' app: the project's client (resume, dedupe, acks).
        self.phones = LiveClient(settings.gateway_url, self.ops, on_update=self.on_driver_update, reconnection=False)
        self.riders = LiveClient(settings.gateway_url, self.rider, on_update=self.on_rider_update, reconnection=False)

    def point(self) -> tuple[float, float]:
        r, a = RADIUS_M * math.sqrt(self.rng.random()), self.rng.uniform(0, 2 * math.pi)
        lat, lng = self.centre
        return lat + r * math.cos(a) / 111_195, lng + r * math.sin(a) / (111_195 * math.cos(math.radians(lat)))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post(self, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.post(f"{self.s.gateway_url}{path}", json=body,
                                  headers={"Authorization": f"Bearer {token}"}) as resp:
            self.statuses[f"{path.rsplit('/', 1)[-1]} {resp.status}"] = self.statuses.get(
                f"{path.rsplit('/', 1)[-1]} {resp.status}", 0) + 1
            return resp.status, await resp.json()

    async def connect(self) -> None:
        await self.phones.connect()
        await self.riders.connect()
        await asyncio.gather(*(self.phones.subscribe(f"driver:{d}") for d in self.drivers))

    async def ping_forever(self) -> None:
        seq = int(now_ms())
        while True:
            seq += 1
            ts = int(now_ms())
            pings = [{"driver_id": d, "seq": seq, "lat": lat + self.rng.uniform(-2e-5, 2e-5), "lng": lng, "ts": ts}
                     for d, (lat, lng) in zip(self.drivers, self.spots)]
            await self.post("/v1/locations", self.ops, pings)
            await asyncio.sleep(1.0)

    def on_driver_update(self, update: dict[str, Any]) -> None:
        data = update["data"]
        if update["type"] == "offer":
            seen = now_ms()
            self.offered.setdefault(data["ride_id"], seen)
            self.to_phone.setdefault(data["ride_id"], seen - update["ts"])
            # The offers agent reserved at its own `now`: the offer expires ttl_ms after it.
            reserved = data["expires_at"] - data["ttl_ms"]
            self.to_offers.setdefault(data["ride_id"], reserved - update["ts"])
            self.offer_to_phone.setdefault(data["ride_id"], seen - reserved)
            self.spawn(self.post(f"/v1/rides/{data['ride_id']}/accept", self.driver_tokens[data["driver_id"]]))

    def on_rider_update(self, update: dict[str, Any]) -> None:
        data = update["data"]
        if update["type"] == "ride.state":
            self.outcomes[data["ride_id"]] = data["state"]
            if data["state"] == "ACCEPTED" and data["ride_id"] not in self.assigned:
                self.assigned[data["ride_id"]] = now_ms()
                self.spawn(self.finish(data["ride_id"], data["driver_id"]))

    async def finish(self, ride_id: str, driver: str) -> None:
        """The rider lets the driver go at once (one command, not a trip's two): free for the next rider."""
        await self.post(f"/v1/rides/{ride_id}/cancel", self.rider, {"reason": "benchmark"})

    async def request(self) -> None:
        pickup, dest = self.point(), self.point()
        body = {"pickup": {"lat": pickup[0], "lng": pickup[1]}, "destination": {"lat": dest[0], "lng": dest[1]}}
        sent = now_ms()
        status, ride = await self.post("/v1/rides", self.rider, body)
        if status not in (201, 202):
            return
        self.sent[ride["ride_id"]] = sent
        if "requested_ts" in ride:
            self.to_worker[ride["ride_id"]] = ride["requested_ts"] - sent
        try:
            ack = await self.riders.subscribe(f"ride:{ride['ride_id']}")
        except SubscribeRefused:
            return  # this node has not seen the ride yet: its outcome is not counted
        snap = (ack.get("snapshot") or {}).get("data") or {}
        if snap.get("state") in ("ACCEPTED", "ONGOING", "COMPLETED") and ride["ride_id"] not in self.assigned:
            self.assigned[ride["ride_id"]] = now_ms()  # it beat the subscription: counted when seen

    async def at_rate(self, rate: float, duration_s: float) -> list[str]:
        before = set(self.sent)
        start = time.monotonic()
        for i in range(int(rate * duration_s)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            self.spawn(self.request())
        await self.settle()
        return [r for r in self.sent if r not in before]

    async def settle(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)


async def measure(settings: Settings, meter: CpuMeter, rate: float, duration_s: float, warmup_s: float,
                  burst: int) -> dict[str, Any]:
    bench = Bench(settings)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        bench.http = http
        await bench.connect()
        pinger = asyncio.ensure_future(bench.ping_forever())
        await asyncio.sleep(3.0)  # drivers in their cells and in the worker's replica
        await bench.at_rate(rate, warmup_s)
        meter.start()
        measured = await bench.at_rate(rate, duration_s)
        cpu = meter.stop()
        offers = [bench.offered[r] - bench.sent[r] for r in measured if r in bench.offered]
        assigns = [bench.assigned[r] - bench.sent[r] for r in measured if r in bench.assigned]
        burst_start = now_ms()
        burst_rides = await bench.at_rate(burst / 2.0, 2.0)  # `burst` requests within 2 s
        await bench.settle()
        done = [bench.assigned[r] for r in burst_rides if r in bench.assigned]
        span_s = (max(done) - burst_start) / 1000 if done else float("nan")
        pinger.cancel()
        await bench.phones.disconnect()
        await bench.riders.disconnect()
    return {
        "rate": rate, "requests": len(measured), "offered": len(offers), "assigned": len(assigns),
        **percentiles(offers, "offer"), **percentiles(assigns, "assign"),
        # Where an offer's time goes: gateway -> Kafka -> rides agent, then rides agent -> offers agent -> phone.
        **percentiles([bench.to_worker[r] for r in measured if r in bench.to_worker], "request_to_rides_agent"),
        **percentiles([bench.to_phone[r] for r in measured if r in bench.to_phone], "rides_agent_to_phone"),
        # ...which splits at the offers agent's reservation: rides agent -> offers agent, offers agent -> phone.
        **percentiles([bench.to_offers[r] for r in measured if r in bench.to_offers], "rides_agent_to_offers_agent"),
        **percentiles([bench.offer_to_phone[r] for r in measured if r in bench.offer_to_phone], "offers_agent_to_phone"),
        "offers_over_1s": sum(1 for r in measured if bench.offered.get(r, math.inf) - bench.sent[r] > 1000),
        "phones_gaps": bench.phones.stats.gaps, "phones_resets": bench.phones.stats.resets,
        "riders_gaps": bench.riders.stats.gaps, "riders_resets": bench.riders.stats.resets,
        "burst_requests": len(burst_rides), "burst_assigned": len(done),
        "match_requests_per_s": round(len(done) / span_s, 1) if done else 0.0,
        "http": dict(sorted(bench.statuses.items())), "warmup_s": warmup_s, **cpu,
    }


def run(rate: float, duration_s: float, warmup_s: float, burst: int) -> dict[str, Any]:
    settings = bench_settings(app_id=f"livetrack-dispatch-{int(time.time())}")
    with pipeline_running(settings, "dispatch") as (worker, gateway):
        meter = CpuMeter(settings, worker, gateway, loadgen=True)
        return asyncio.run(measure(settings, meter, rate, duration_s, warmup_s, burst))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50.0, help="ride requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured (after a warm-up)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds at --rate before measuring")
    p.add_argument("--burst", type=int, default=300, help="requests of the throughput burst")
    args = p.parse_args()
    emit(run(args.rate, args.duration, args.warmup, args.burst))


if __name__ == "__main__":
    main()
