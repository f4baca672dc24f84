"""Worker at saturation: pre-fill `locations`, start the worker, time how fast it drains.

Two fills in one run, side by side: pings as the gateway batches them under
load (many per record) and one ping per record (the gateway's worst case).
Every ping is accepted and moves its driver far enough to be pushed, so the
drivers agent does all its work for each one.

    python -m bench.worker_throughput [--pings N] [--drivers D] [--batch B]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

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


def topic_count(consumer: Consumer, topic: str) -> int:
    """Records in a topic (0 while it does not exist yet)."""
    try:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in meta.partitions)
    except KafkaException:  # a topic just created may have no leader for a moment
        return 0


def drain(settings: Settings, expected_total: int, timeout_s: float) -> dict[str, float]:
    """Run the worker until `push` holds `expected_total` messages (one per bench ping); rate, CPU/event."""
    topic = PUSH.name
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "bench-probe"})
    before = topic_count(consumer, topic)
    worker = spawn(worker_args(), settings, "bench-worker")
    try:
        if not wait_until(lambda: topic_count(consumer, topic) > before, 120, 0.05):
            raise SystemExit(f"worker wrote nothing; see {worker.log}")
        t0, cpu0, n0 = time.perf_counter(), worker.cpu_s(), topic_count(consumer, topic)
        if not wait_until(lambda: topic_count(consumer, topic) >= expected_total, timeout_s, 0.05):
            raise SystemExit(f"worker did not finish in {timeout_s}s; see {worker.log}")
        t1, cpu1, n1 = time.perf_counter(), worker.cpu_s(), topic_count(consumer, topic)
    finally:
        worker.stop()
        consumer.close()
    events = n1 - n0
    return {"events_per_s": round(events / (t1 - t0)), "cpu_us_per_event": round((cpu1 - cpu0) / events * 1e6, 1)}


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
        single = drain(settings, args.pings + single_n, 600)
    figures.update({
        "worker_events_per_s": batched["events_per_s"],
        "worker_cpu_us_per_event": batched["cpu_us_per_event"],
        "worker_pings_per_record": args.batch,
        "worker_events_per_s_1_per_record": single["events_per_s"],
        "worker_cpu_us_per_event_1_per_record": single["cpu_us_per_event"],
        "worker_records_1_per_record": records,
        "pings": args.pings,
    })
    emit(figures)


if __name__ == "__main__":
    main()
