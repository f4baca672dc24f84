"""Feature agents at saturation: pings and ride requests through drivers -> features (and demand -> features).

A worker runs on a fresh broker; this process feeds it a city in event-time
order (drivers pinging every 5 s, ride requests among them), slice by slice,
keeping a few slices queued ahead of the features agent (read from the
worker's /metrics) so the worker never waits for input while event time stays
within the grace. Windows close as event time moves, as in production.

- `features_events_per_s`: pings + requests applied by the features agent per
  second, first record produced -> last one applied (the whole path: drivers
  agent, demand agent, the k-ring fan-out, the features agent).
- `window_close_to_topic_p95_ms`: a window's close (the agent's decision, the
  record's `emitted_ts`) -> its CellFeatures record in the log (LogAppendTime).

    python -m bench.features [--drivers 1000] [--ping-every-s 5] [--minutes 6] [--rides 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from typing import Any

from bench.harness import bench_settings, counter_total, emit, percentiles, scrape
from infra.broker import kafka_running
from infra.processes import WORKER_READY, Proc, spawn, worker_args
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.topics import read_topic
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellFeatures, LocationBatch, RideEvent
from schemas.topics import CELL_FEATURES, LOCATIONS, RIDES

CITY = (37.7749, -122.4194)
RADIUS_M = 4000.0
SLICE_MS = 5_000
AHEAD_SLICES = 5  # queued ahead of the features agent: enough to keep it busy
GRACE_MS = 40_000  # > AHEAD_SLICES * SLICE_MS: the feeder's lead never makes an event late


def _offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / 111_195, lng + east_m / (111_195 * math.cos(math.radians(lat)))


def city(drivers: int, every_s: int, minutes: int, rides: int, base_ms: int, seed: int = 7) -> list[tuple[list, list]]:
    """Per slice: (pings, ride requests), in event-time order; drivers move 5-15 m/s, turning now and then."""
    rng = random.Random(seed)
    slices: list[tuple[list, list]] = [([], []) for _ in range(minutes * 60_000 // SLICE_MS)]
    for d in range(drivers):
        r, a = RADIUS_M * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        lat, lng = _offset(*CITY, r * math.cos(a), r * math.sin(a))
        heading, speed, start = rng.uniform(0, 2 * math.pi), rng.uniform(5, 15), rng.randrange(every_s * 1000)
        for k in range(minutes * 60 // every_s):
            heading += rng.uniform(-0.5, 0.5)
            lat, lng = _offset(lat, lng, speed * every_s * math.cos(heading), speed * every_s * math.sin(heading))
            ts = base_ms + start + k * every_s * 1000
            slices[(ts - base_ms) // SLICE_MS][0].append(
                {"driver_id": f"bf-{d:05d}", "seq": k + 1, "lat": lat, "lng": lng, "fix_ts": ts, "received_ts": ts,
                 "accuracy": None, "speed": None, "bearing": None})
    for i in range(rides):
        r, a = RADIUS_M * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        lat, lng = _offset(*CITY, r * math.cos(a), r * math.sin(a))
        ts = base_ms + rng.randrange(minutes * 60_000)
        slices[(ts - base_ms) // SLICE_MS][1].append(
            {"ride_id": f"bf-r{i:06d}", "version": 1, "event": "REQUESTED", "state": "REQUESTED", "ts": ts,
             "actor": "rider", "rider_id": f"u{i}", "product": "standard", "pickup_lat": lat, "pickup_lng": lng,
             "dest_lat": lat + 0.01, "dest_lng": lng, "pickup_cell": "8928308280fffff", "driver_id": None,
             "fare_estimate": None, "pickup_eta_s": None, "reason": None})
    return slices


def encode(slices: list[tuple[list, list]], partitions: int) -> list[list[tuple[str, bytes, bytes | None, int | None]]]:
    """Per slice, the records as the gateway (LocationBatch per partition) and dispatch (one RideEvent) write them."""
    out = []
    for pings, rides in slices:
        records: list[tuple[str, bytes, bytes | None, int | None]] = []
        by_partition: dict[int, list[dict]] = {}
        for p in pings:
            by_partition.setdefault(partition_for(p["driver_id"], partitions), []).append(p)
        for partition, events in by_partition.items():
            for i in range(0, len(events), 200):
                records.append((LOCATIONS.name, codec_for(LocationBatch).dumps({"events": events[i:i + 200]}), None,
                                partition))
        records.extend((RIDES.name, codec_for(RideEvent).dumps(r), r["ride_id"].encode(), None) for r in rides)
        out.append(records)
    return out


def applied(settings: Settings) -> float:
    """Events the features agent has taken (own-cell copies: one per ping and per request)."""
    try:
        families = scrape(f"http://127.0.0.1:{settings.worker_web_port}/metrics")
    except OSError:
        return 0.0
    return counter_total(families, "livetrack_features_events", copy="own")


async def feed(settings: Settings, records: list[list[tuple]], counts: list[int], worker: Proc) -> dict[str, float]:
    """Produce slice by slice, AHEAD_SLICES ahead of the agent; time until every event is applied."""
    producer = AsyncProducer(settings.bootstrap, linger_ms=5)
    await producer.start()
    total, done_before = sum(counts), [sum(counts[:k]) for k in range(len(counts) + 1)]
    t0, cpu0 = time.perf_counter(), worker.cpu_s()
    for k, slice_records in enumerate(records):
        while k >= AHEAD_SLICES and await asyncio.to_thread(applied, settings) < done_before[k - AHEAD_SLICES + 1]:
            await asyncio.sleep(0.05)
        group = producer.group()
        for topic, value, key, partition in slice_records:
            producer.send(group, topic, value, key=key, partition=partition)
        await group.wait()
    while await asyncio.to_thread(applied, settings) < total:
        if not worker.alive():
            raise SystemExit(f"worker died; see {worker.log}")
        await asyncio.sleep(0.05)
    t1, cpu1 = time.perf_counter(), worker.cpu_s()
    await producer.close()
    return {"features_events_per_s": round(total / (t1 - t0)), "features_cpu_us_per_event":
            round((cpu1 - cpu0) / total * 1e6, 1), "features_events": total, "features_run_s": round(t1 - t0, 2)}


def close_to_topic(settings: Settings) -> dict[str, Any]:
    """Every CellFeatures record: LogAppendTime - emitted_ts."""
    latencies, windows = [], set()
    for m in read_topic(settings, CELL_FEATURES.name, timeout_s=60):
        f = codec_for(CellFeatures).loads(m.value())
        latencies.append(m.timestamp()[1] - f["emitted_ts"])
        windows.add((f["kind"], f["size_s"], f["end_ts"]))
    return {**percentiles(latencies, "window_close_to_topic"), "features_records": len(latencies),
            "features_window_closes": len(windows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drivers", type=int, default=1000)
    p.add_argument("--ping-every-s", type=int, default=5, help="each driver's ping interval (event time)")
    p.add_argument("--minutes", type=int, default=6, help="event time the stream covers")
    p.add_argument("--rides", type=int, default=3000)
    args = p.parse_args()
    settings = bench_settings(app_id=f"livetrack-bench-features-{int(time.time())}", features_grace_ms=GRACE_MS)
    base = int(time.time() * 1000) - 3_600_000
    base -= base % 480_000
    slices = city(args.drivers, args.ping_every_s, args.minutes, args.rides, base)
    counts = [len(pings) + len(rides) for pings, rides in slices]
    with kafka_running(settings, fresh=True):
        records = encode(slices, settings.partitions)
        worker = spawn(worker_args(), settings, "bench-features-worker")
        try:
            worker.wait_for_output(WORKER_READY, 120)
            figures = asyncio.run(feed(settings, records, counts, worker))
            time.sleep(1.0)  # the last batch's features reach the log
        finally:
            worker.stop()
        figures.update(close_to_topic(settings))
    figures.update({"features_drivers": args.drivers, "features_ping_every_s": args.ping_every_s,
                    "features_rides": args.rides,
                    "features_minutes": args.minutes, "features_grace_ms": GRACE_MS})
    emit(figures)


if __name__ == "__main__":
    main()
