"""Faust's own per-record cost on this machine: the measurement behind batch records and tables/writer.

A topic is pre-filled with small keyed records; a bare Faust agent (take_events,
as livetrack's agents use) drains it in each mode, one worker process per mode:
  consume - nothing per record: Faust's consumer machinery alone
  table   - `table[key] = value` per record: Faust's store write + changelog via its producer
  send    - `topic.send_soon(...)` per record: Faust's producer path

    python -m bench.faust_floor [--records 50000]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.harness import bench_settings, emit
from infra.broker import kafka_running
from infra.processes import env_for
from infra.settings import Settings

SRC, DST, PARTITIONS = "bench-floor-src", "bench-floor-dst", 8
MODES = ("consume", "table", "send")


def fill(settings: Settings, records: int) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (SRC, DST)]).values():
        future.result()
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
    for i in range(records):
        while True:
            try:
                producer.produce(SRC, key=f"k{i % 2000}".encode(), value=b"x" * 80)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush()


def worker(mode: str, records: int, out: Path) -> None:
    """Child process: a bare Faust worker draining SRC in `mode`, then stopping itself."""
    import weakref

    import faust
    from faust.streams import _current_event

    settings = Settings()
    app = faust.App(f"{settings.app_id}-{mode}", broker=f"kafka://{settings.bootstrap}", store="rocksdb://",
                    datadir=str(settings.state_dir / f"floor-{mode}"), web_bind="127.0.0.1",
                    web_port=settings.worker_web_port, topic_partitions=PARTITIONS,
                    consumer_auto_offset_reset="earliest")
    src = app.topic(SRC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    dst = app.topic(DST, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    table = app.Table("floor", key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    seen = {"n": 0, "t0": 0.0}

    async def drain(stream: faust.StreamT) -> None:
        async for events in stream.take_events(1000, within=0.002):
            seen["t0"] = seen["t0"] or time.perf_counter()
            for event in events:
                _current_event.set(weakref.ref(event))  # as agents.batching.bind_event
                if mode == "table":
                    table[event.message.key] = event.message.value
                elif mode == "send":
                    dst.send_soon(key=event.message.key, value=event.message.value)
            seen["n"] += len(events)
            if seen["n"] >= records:
                out.write_text(json.dumps({"per_s": seen["n"] / (time.perf_counter() - seen["t0"])}))
                os.kill(os.getpid(), signal.SIGTERM)

    app.agent(src, name=f"drain_{mode}")(drain)
    faust.Worker(app, loglevel="info").execute_from_commandline()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # the child's role
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return worker(args.mode, args.records, args.out)
    settings = bench_settings(app_id=f"livetrack-floor-{int(time.time())}")
    figures: dict[str, float] = {}
    with kafka_running(settings, fresh=True):
        fill(settings, args.records)
        for mode in MODES:
            out = settings.state_dir / f"floor-{mode}.json"
            log = settings.state_dir / "logs" / f"floor-{mode}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as f:
                subprocess.run([sys.executable, "-m", "bench.faust_floor", "--mode", mode, "--records",
                                str(args.records), "--out", str(out)], env=env_for(settings), stdout=f,
                               stderr=subprocess.STDOUT, timeout=300)
            if not out.exists():
                raise SystemExit(f"{mode} run gave no result; see {log}")
            rate = json.loads(out.read_text())["per_s"]
            figures[f"faust_{mode}_records_per_s"] = round(rate)
            figures[f"faust_{mode}_us_per_record"] = round(1e6 / rate, 1)
    emit(figures)


if __name__ == "__main__":
    main()
