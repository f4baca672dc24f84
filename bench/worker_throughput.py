"""Worker at saturation: pre-fill `locations`, start the worker, time how fast it drains.

Two fills in one run, side by side: pings as the gateway batches them under
load (many per record) and one ping per record (the gateway's worst case).
Every ping is accepted and moves its driver far enough to be pushed, so the
drivers agent does all its work for each one. A fill is drained when the
worker's feed has committed all of it; the rate counts the fill's driver pushes
only (the features' `cell:` pushes are counted apart), between the first and
the last one's record time. The fleet is 2,000 drivers unless told otherwise.
The CPU per record and per ping are derived from the two fills (same work per
ping, 200 or 1 ping per record).

    python -m bench.worker_throughput [--pings N] [--drivers D] [--batch B]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import time

from confluent_kafka import Consumer, TopicPartition

from agents.feed import group_id as feed_group
from agents.ops.kafka import consumer, read_span, watermarks
from bench.harness import bench_settings, emit, wait_until
from infra.broker import kafka_running
from infra.processes import spawn, worker_args
from gateway.batcher import IngestBatcher
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.topics import partition_count
from schemas.records import LocationEvent
from schemas.topics import LOCATIONS, PUSH

CITY = (37.7749, -122.4194)
STEP_M = 20.0  # per ping: above the 10 m push threshold, far below the teleport limit


def pings(drivers: int, count: int, first_seq: int, now_ms: int) -> list[LocationEvent]:
    """`count` pings round-robin over `drivers`, each driver moving STEP_M east per ping."""
    out = []
    for i in range(count):
        d, k = i % drivers, first_seq + i // drivers
        lat = CITY[0] + (d % 100) * 0.001
        lng = CITY[1] + (d // 100) * 0.01 + k * STEP_M / (111_320 * math.cos(math.radians(lat)))
        out.append(LocationEvent(driver_id=f"bench-{d:05d}", seq=k, lat=lat, lng=lng,
                                 fix_ts=now_ms + k * 1000, received_ts=now_ms, speed=STEP_M))
    return out


async def fill(settings: Settings, events: list[LocationEvent], per_record: int) -> int:
    """Produce through the gateway's batcher; return the number of records written."""
    producer = AsyncProducer(settings.bootstrap, linger_ms=5)
    await producer.start()
    batcher = IngestBatcher(producer, LOCATIONS.name, partition_count(settings, LOCATIONS),
                            linger_s=0.005, max_events=per_record)
    for i in range(0, len(events), 2000):
        await batcher.submit(events[i:i + 2000])
    await batcher.close()
    await producer.close()
    return batcher.records


def _ends(c: Consumer, topic: str) -> dict[int, int]:
    return {p: high for p, (_, high) in watermarks(c, topic).items()}


def _drained(feed: Consumer, ends: dict[int, int]) -> bool:
    """Whether the worker's feed has committed `locations` up to `ends` (outputs are acked before)."""
    got = feed.committed([TopicPartition(LOCATIONS.name, p) for p in ends], timeout=10)
    return all(tp.offset >= ends[tp.partition] for tp in got)


def drain(settings: Settings, expected: int, timeout_s: float) -> dict[str, float]:
    """Run the worker until its feed has committed every ping of the fill; count the driver pushes
    of the fill (the features' `cell:` pushes are not), their rate by their record times, CPU per ping."""
    probe = consumer(settings.bootstrap)
    feed = consumer(settings.bootstrap, feed_group(settings.app_id))
    before, inputs = _ends(probe, PUSH.name), _ends(probe, LOCATIONS.name)
    worker = spawn(worker_args(), settings, "bench-worker")
    try:
        if not wait_until(lambda: sum(_ends(probe, PUSH.name).values()) > sum(before.values()), 120, 0.05):
            raise SystemExit(f"worker wrote nothing; see {worker.log}")
        cpu0, started = worker.cpu_s(), _ends(probe, PUSH.name)
        if not wait_until(lambda: _drained(feed, inputs), timeout_s, 0.05):
            raise SystemExit(f"worker did not finish in {timeout_s}s; see {worker.log}")
        cpu1 = worker.cpu_s()
    finally:
        worker.stop()
        feed.close()
    span = {p: (before.get(p, 0), high) for p, high in _ends(probe, PUSH.name).items()}
    driver, timed, other, first_ms, last_ms = 0, 0, 0, None, 0
    for msgs in read_span(probe, PUSH.name, span):
        for m in msgs:
            if not (m.key() or b"").startswith(b"driver:"):
                other += 1
                continue
            driver += 1
            timed += (m.offset() or 0) >= started.get(m.partition() or 0, 0)
            ts = m.timestamp()[1]
            first_ms, last_ms = ts if first_ms is None else min(first_ms, ts), max(last_ms, ts)
    probe.close()
    if driver != expected:
        raise SystemExit(f"{expected} pings filled, {driver} driver pushes; see {worker.log}")
    seconds = max(1, last_ms - (first_ms or last_ms)) / 1000
    return {"events_per_s": round((driver - 1) / seconds), "cpu_us_per_event": round((cpu1 - cpu0) / timed * 1e6, 1),
            "other_pushes": other}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pings", type=int, default=60_000)
    p.add_argument("--drivers", type=int, default=2_000)
    p.add_argument("--batch", type=int, default=200, help="pings per record in the batched fill")
    args = p.parse_args()
    settings = bench_settings(app_id=f"livetrack-bench-{int(time.time())}")
    now = int(time.time() * 1000)
    figures: dict[str, float] = {}
    with kafka_running(settings, fresh=True):
        asyncio.run(fill(settings, pings(args.drivers, args.pings, 1, now), args.batch))
        batched = drain(settings, args.pings, 600)
        single_n = args.pings // 4
        records = asyncio.run(fill(settings, pings(args.drivers, single_n, args.pings // args.drivers + 1, now), 1))
        single = drain(settings, single_n, 600)
    # Both fills do the same work per ping; what differs is the records: c(b) = ping + record / b.
    b = args.batch
    per_record = (single["cpu_us_per_event"] - batched["cpu_us_per_event"]) * b / (b - 1)
    figures.update({
        "worker_events_per_s": batched["events_per_s"],
        "worker_cpu_us_per_event": batched["cpu_us_per_event"],
        "worker_pings_per_record": b,
        "worker_events_per_s_1_per_record": single["events_per_s"],
        "worker_cpu_us_per_event_1_per_record": single["cpu_us_per_event"],
        "worker_records_1_per_record": records,
        "worker_cpu_us_per_record": round(per_record, 1),
        "worker_cpu_us_per_ping": round(batched["cpu_us_per_event"] - per_record / b, 1),
        "worker_other_pushes": batched["other_pushes"] + single["other_pushes"],
        "pings": args.pings,
        "drivers": args.drivers,
    })
    emit(figures)


if __name__ == "__main__":
    main()
