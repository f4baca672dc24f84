"""`make bench-replay`: a shadow replaying pings and rides, and a diff of 100,000 keys; one JSON object last.

    python -m bench.replay [--pings N] [--drivers D] [--rides R] [--keys K]

The live input topics are filled (pings as the gateway batches them, rides requested and cancelled
far from every driver), then `agents.ops.replay` runs a shadow over everything retained.
`replay_events_per_s` counts the pings and ride commands from the moment the shadow worker is
ready until its lag first reaches 0 (its startup and the calm checks after are left out, and shown
as `replay_total_s`). `diff_keys_per_s` diffs two driver_to_state changelogs of `--keys` keys, 1%
of them different.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import time
from typing import Any

from confluent_kafka import Producer

from agents.ops.diff import Side, diff
from agents.ops.replay import Options, replay
from bench.harness import bench_settings, emit
from bench.worker_throughput import fill, pings
from infra.broker import kafka_running
from infra.processes import WORKER_READY
from infra.settings import Settings
from infra.topics import ensure_topics
from schemas import records
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.topics import RIDE_COMMANDS, TopicSpec


def fill_rides(settings: Settings, rides: int) -> int:
    """REQUEST and CANCEL of `rides` rides whose pickup no driver is near; the commands written."""
    codec = codec_for(records.RideCommand)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 5})
    now = int(time.time() * 1000)
    for i in range(rides):
        for j, command in enumerate(("REQUEST", "CANCEL")):
            cmd = {"ride_id": f"bench-ride-{i}", "command": command, "ts": now + j, "actor": "rider",
                   "actor_id": f"rider-{i}", "rider_id": f"rider-{i}", "product": "standard", "pickup_lat": -33.87,
                   "pickup_lng": 151.21, "dest_lat": -33.86, "dest_lng": 151.20}
            producer.produce(RIDE_COMMANDS.name, codec.dumps(cmd), key=cmd["ride_id"].encode())
    producer.flush(60)
    return rides * 2


def timed_replay(settings: Settings, events: int) -> dict[str, float]:
    """Replay everything into a shadow; the rate between its worker's readiness and its lag reaching 0."""
    log = settings.state_dir / "logs" / "shadow-bench.log"
    marks: dict[str, float] = {}

    def progress(update: dict[str, Any]) -> None:
        if "ready" not in marks and log.exists() and WORKER_READY.encode() in log.read_bytes():
            marks["ready"] = time.perf_counter()
        if update["phase"] == "drain" and update["lag"] == 0 and "ready" in marks:
            marks.setdefault("drained", time.perf_counter())

    started = time.perf_counter()
    replay(settings, "bench", Options(timeout_s=900), {}, progress)
    total = time.perf_counter() - started
    busy = marks["drained"] - marks["ready"]
    return {"replay_events_per_s": round(events / busy), "replay_busy_s": round(busy, 2),
            "replay_total_s": round(total, 2)}


def fill_tables(settings: Settings, keys: int) -> None:
    """Two driver_to_state changelogs (apps bench-left, bench-right) of `keys` keys, 1% different."""
    codec = codec_for(records.DriverState)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    base = {"seq": 1, "lat": 37.7, "lng": -122.4, "fix_ts": 1, "received_ts": 1, "cell": "892830828", "status":
            "AVAILABLE", "push_seq": 1, "pushed_lat": 37.7, "pushed_lng": -122.4, "pushed_ts": 1, "membership_ts": 1}
    for app, changed in (("bench-left", False), ("bench-right", True)):
        topic = f"{app}-driver_to_state-changelog"
        ensure_topics(settings, [TopicSpec(topic, "driver_id", records.DriverState, compacted=True)])
        for i in range(keys):
            driver = f"d-{i:06d}"
            value = codec.dumps({**base, "driver_id": driver, "seq": 2 if changed and i % 100 == 0 else 1})
            while True:
                try:
                    producer.produce(topic, value, driver.encode(), partition=partition_for(driver, settings.partitions))
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(120)


def timed_diff(settings: Settings, keys: int) -> dict[str, float]:
    report = diff(settings.bootstrap, Side("left", "bench-left", ""), Side("right", "bench-right", ""),
                  tables=["driver_to_state"])
    table = report["tables"]["driver_to_state"]
    assert table["different"] == keys // 100, table
    return {"diff_keys": report["keys"], "diff_s": report["seconds"],
            "diff_keys_per_s": round(report["keys"] / report["seconds"])}


def _free_pair() -> int:
    """A loopback port free with the next one (broker and controller)."""
    for port in range(29_100, 29_900, 2):
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise SystemExit("no free port pair")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pings", type=int, default=200_000)
    p.add_argument("--drivers", type=int, default=2_000)
    p.add_argument("--rides", type=int, default=1_000)
    p.add_argument("--keys", type=int, default=100_000)
    args = p.parse_args()
    port = _free_pair()  # not bench_settings' fixed port: other benchmarks may run on this machine
    settings = bench_settings(app_id=f"livetrack-bench-{int(time.time())}", kafka_port=port,
                              state_dir=Settings().state_dir / f"bench-replay-{port}")
    figures: dict[str, float] = {}
    with kafka_running(settings, fresh=True):
        asyncio.run(fill(settings, pings(args.drivers, args.pings, 1, int(time.time() * 1000)), 200))
        commands = fill_rides(settings, args.rides)
        figures.update(timed_replay(settings, args.pings + commands))
        fill_tables(settings, args.keys)
        figures.update(timed_diff(settings, args.keys))
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    figures.update({"pings": args.pings, "ride_commands": commands})
    emit(figures)


if __name__ == "__main__":
    main()
