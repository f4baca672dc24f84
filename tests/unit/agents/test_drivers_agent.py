"""The drivers agent inside Faust's test_context: memory store, a fake producer, no Kafka."""
from __future__ import annotations

import json
from typing import Any

import faust
import pytest

from agents.batching import DeadLetters, register_batched
from agents.drivers import DriverPolicy, DriversAgent
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellMembershipBatch, DeadLetter, DriverState, LocationBatch, PushMessage
from tables.driver_to_state import driver_to_state
from tables.writer import TableWriter
from tests.unit.fakes import FakeProducer

PARTITIONS = 4


def _ping(driver: str, seq: int, lat: float = 37.77) -> dict[str, Any]:
    return {"driver_id": driver, "seq": seq, "lat": lat + seq * 0.001, "lng": -122.41, "fix_ts": 1_000 * seq,
            "received_ts": 1_000 * seq, "accuracy": None, "speed": None, "bearing": None}


@pytest.fixture
def wired() -> tuple[faust.App, Any, FakeProducer, TableWriter]:
    app = faust.App(f"test-drivers-agent-{id(object())}", store="memory://", broker="kafka://127.0.0.1:1")
    producer = FakeProducer()
    states = TableWriter(driver_to_state(app, PARTITIONS), producer, codec_for(DriverState), cache_max=100)  # type: ignore[arg-type]
    agent_obj = DriversAgent(
        states=states, producer=producer, dead_letters=DeadLetters("locations-dlq", producer, lambda: 7),  # type: ignore[arg-type]
        policy=DriverPolicy(), partitions=PARTITIONS, cell_partitions=PARTITIONS, clock_ms=lambda: 5,
    )
    topic = app.topic("locations", key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=PARTITIONS)
    # The worker feeds it through agents.feed; a Faust test agent hands it the same events.
    agent = register_batched(app, topic, "pings", agent_obj.process, batch_max=10, batch_within_s=0.01)
    return app, agent, producer, states


async def test_pings_become_state_pushes_memberships_and_dead_letters(wired: Any) -> None:
    app, agent, producer, states = wired
    batch = codec_for(LocationBatch)
    d = "d-1"
    part = partition_for(d, PARTITIONS)
    other = next(f"x-{i}" for i in range(100) if partition_for(f"x-{i}", PARTITIONS) != part)
    async with agent.test_context() as ctx:
        await ctx.put(value=batch.dumps({"events": [_ping(d, 1), _ping(d, 2)]}), partition=part)
        await ctx.put(value=batch.dumps({"events": [_ping(d, 1), {**_ping(d, 3), "lat": 99.0}, _ping(other, 1)]}),
                      partition=part)
        await ctx.put(value=b"garbage", partition=part)
    pushes = [codec_for(PushMessage).loads(v) for v, _, _ in producer.on("push")]
    assert [(p["channel"], p["seq"], json.loads(p["data"])["seq"]) for p in pushes] == [
        ("driver:d-1", 1, 1), ("driver:d-1", 2, 2)]  # seq 1 again is stale, seq 3 out of range: no push
    changelog = producer.on(states.changelog)
    assert changelog and all(k == b"d-1" and p == part for _, k, p in changelog)
    assert codec_for(DriverState).loads(changelog[-1][0])["seq"] == 2
    cells = [m for v, _, _ in producer.on("driver-cells") for m in codec_for(CellMembershipBatch).loads(v)["changes"]]
    assert cells[0]["op"] == "JOIN" and cells[0]["driver_id"] == d
    reasons = [codec_for(DeadLetter).loads(v)["reason"] for v, _, _ in producer.on("locations-dlq")]
    assert any("lat must be <= 90" in r for r in reasons)
    assert any("another partition" in r for r in reasons)
    assert any("undecodable" in r for r in reasons)
