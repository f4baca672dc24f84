"""The drivers agent in a worker over an in-memory Kafka, on the memory and the RocksDB store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellMembershipBatch, DeadLetter, DriverState, LocationBatch, PushMessage
from tests.unit.agents.harness import PARTITIONS, Worker


def _ping(driver: str, seq: int, lat: float = 37.77) -> dict[str, Any]:
    return {"driver_id": driver, "seq": seq, "lat": lat + seq * 0.001, "lng": -122.41, "fix_ts": 1_000 * seq,
            "received_ts": 1_000 * seq, "accuracy": None, "speed": None, "bearing": None}


def _batch(*pings: dict[str, Any]) -> bytes:
    return codec_for(LocationBatch).dumps({"events": list(pings)})


async def test_pings_become_state_pushes_memberships_and_dead_letters(tmp_path: Path, store: str) -> None:
    w = Worker(tmp_path, store)
    d = "d-1"
    part = partition_for(d, PARTITIONS)
    other = next(f"x-{i}" for i in range(100) if partition_for(f"x-{i}", PARTITIONS) != part)
    w.kafka.produce("locations", _batch(_ping(d, 1), _ping(d, 2)), partition=part)
    w.kafka.produce("locations", _batch(_ping(d, 1), {**_ping(d, 3), "lat": 99.0}, _ping(other, 1)), partition=part)
    w.kafka.produce("locations", b"garbage", partition=part)
    await w.process("locations")
    pushes = w.kafka.values("push", PushMessage)
    assert [(p["channel"], p["seq"], json.loads(p["data"])["seq"]) for p in pushes] == [
        ("driver:d-1", 1, 1), ("driver:d-1", 2, 2)]  # seq 1 again is stale, seq 3 out of range: no push
    changelog = w.c.tables["driver_to_state"].changelog
    assert list(w.kafka.latest(changelog)) == ["d-1"]
    assert w.table("driver_to_state")["d-1"]["seq"] == 2  # in the store: acked
    cells = [m for b in w.kafka.values("driver-cells", CellMembershipBatch) for m in b["changes"]]
    assert cells[0]["op"] == "JOIN" and cells[0]["driver_id"] == d
    reasons = [letter["reason"] for letter in w.kafka.values("locations-dlq", DeadLetter)]
    assert any("lat must be <= 90" in r for r in reasons)
    assert any("another partition" in r for r in reasons)
    assert any("undecodable" in r for r in reasons)
    assert w.kafka.committed[("locations", part)] == 3  # every record handled, bad ones included


async def test_a_state_is_in_the_store_only_once_its_changelog_is_acked(tmp_path: Path, store: str) -> None:
    w = Worker(tmp_path, store)
    part = partition_for("d-1", PARTITIONS)
    seen: list[tuple[str, Any]] = []

    def fault(point: str) -> None:
        seen.append((point, w.table("driver_to_state").get("d-1")))

    w.c.runtime.faults.counter = lambda agent: fault if agent == "drivers" else None  # type: ignore[method-assign]
    w.kafka.produce("locations", _batch(_ping("d-1", 1)), partition=part)
    await w.process("locations")
    assert [p for p, _ in seen] == ["acked0", "stored0", "committed"]
    assert seen[0][1] is None and seen[1][1]["seq"] == 1  # acked: not stored yet; stored: there
    assert codec_for(DriverState).loads(w.kafka.latest(w.c.tables["driver_to_state"].changelog)["d-1"])["seq"] == 1
