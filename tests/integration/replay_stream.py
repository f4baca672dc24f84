"""A recorded stream for the replay tests: pings and rides produced straight to the live input topics
with chosen record timestamps, so a time range can pick a part of it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from confluent_kafka import Producer

from infra.processes import env_for
from infra.settings import Settings
from schemas import records
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.topics import LOCATIONS, RIDE_COMMANDS

__all__ = ["CITY", "Ran", "faust_cli", "produce_pings", "produce_ride", "stream_pings"]

CITY = (37.7749, -122.4194)
ROOT = Path(__file__).resolve().parents[2]


def stream_pings(drivers: Sequence[str], seqs: int, *, step_m: float = 100.0) -> list[dict[str, Any]]:
    """`seqs` pings per driver, one second apart up to now, each `step_m` north of the last."""
    start_ms = int(time.time() * 1000) - seqs * 1000
    out = []
    for i, d in enumerate(drivers):
        for k in range(1, seqs + 1):
            out.append({"driver_id": d, "seq": k, "lat": CITY[0] + i * 0.01 + k * step_m / 111_195,
                        "lng": CITY[1], "fix_ts": start_ms + k * 1000, "received_ts": start_ms + k * 1000,
                        "speed": 10.0})
    return out


def produce_pings(settings: Settings, pings: list[dict[str, Any]], *, per_record: int = 5) -> int:
    """Pings as LocationBatch records on their drivers' partitions (stamped now, as the gateway's are)."""
    codec = codec_for(records.LocationBatch)
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for p in pings:
        by_partition.setdefault(partition_for(p["driver_id"], settings.partitions), []).append(p)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all"})
    n = 0
    for partition, items in by_partition.items():
        for i in range(0, len(items), per_record):
            producer.produce(LOCATIONS.name, codec.dumps({"events": items[i:i + per_record]}), partition=partition)
            n += 1
    assert producer.flush(30) == 0
    return n


def produce_ride(settings: Settings, ride_id: str, commands: Sequence[str]) -> None:
    """A rider's commands for a ride whose pickup is far from every driver (so no dispatch decides)."""
    codec = codec_for(records.RideCommand)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all"})
    for i, command in enumerate(commands):
        cmd = {"ride_id": ride_id, "command": command, "ts": int(time.time() * 1000), "actor": "rider", "actor_id": "rider-1",
               "rider_id": "rider-1", "product": "standard", "pickup_lat": -33.87, "pickup_lng": 151.21,
               "dest_lat": -33.86, "dest_lng": 151.20}
        producer.produce(RIDE_COMMANDS.name, codec.dumps(cmd), key=ride_id.encode())
        assert producer.flush(30) == 0
        time.sleep(0.5)  # the live rides agent decides one before the next comes


class Ran:
    """A finished `faust -A agents.worker ...` command: exit code, stdout (parsed if JSON), stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)


def faust_cli(settings: Settings, *args: str, timeout_s: float = 180) -> Ran:
    """Run one of livetrack's Faust commands as an operator would, with these settings."""
    env = {**env_for(settings), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "faust", "-A", "agents.worker", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return Ran(proc)
