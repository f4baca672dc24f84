"""The features and demand agents inside Faust's test_context: memory store, a fake producer, no Kafka."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import faust
import h3
import pytest

from agents.activity import ActivityFanout, ride_request, target_partitions
from agents.batching import DeadLetters, register_batched
from agents.demand import DemandAgent
from agents.demand import register as register_demand
from agents.drivers import DriverPolicy, DriversAgent
from agents.features import FeaturesAgent, cell_channel, register
from agents.features_math import FeaturePolicy, rings
from agents.metrics import WorkerMetrics
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import (
    CellActivityBatch,
    CellFeatures,
    CellLatest,
    CellPane,
    DeadLetter,
    DriverState,
    LocationBatch,
    PushMessage,
    RideEvent,
    Watermark,
)
from tables.cell_to_activity import PaneKeys, cell_to_activity, stored_panes
from tables.cell_to_features import FeatureLookup, cell_to_features
from tables.driver_to_state import driver_to_state
from tables.partition_to_watermark import partition_to_watermark
from tables.writer import TableWriter
from tests.unit.agents.test_drivers_agent import FakeProducer

PARTITIONS = 4
POLICY = FeaturePolicy()
T0 = 1_732_170_000_000 - 1_732_170_000_000 % 480_000
NOW = T0 + 3_600_000
LAT, LNG = 48.8566, 2.3522
STEP = 50 / 111_195


def _cells() -> tuple[str, str]:
    """A cell and a neighbour of it owned by another partition."""
    for i in range(200):
        a = h3.latlng_to_cell(LAT + i * 0.003, LNG, 9)
        for b in rings(a, 1)[1]:
            if partition_for(a, PARTITIONS) != partition_for(b, PARTITIONS):
                return a, b
    raise AssertionError("no such pair")


A, B = _cells()
A_LAT, A_LNG = h3.cell_to_latlng(A)


class Wired:
    """A features agent (and the fanout that feeds it) on one app with memory-store tables."""

    def __init__(self, policy: FeaturePolicy = POLICY) -> None:
        self.app = faust.App(f"test-features-{id(self)}", store="memory://", broker="kafka://127.0.0.1:1")
        self.producer = FakeProducer()
        self.policy = policy
        self.panes = TableWriter(cell_to_activity(self.app, PARTITIONS, policy), self.producer,  # type: ignore[arg-type]
                                 codec_for(CellPane), cache_max=1000)
        self.latest = TableWriter(cell_to_features(self.app, PARTITIONS), self.producer,  # type: ignore[arg-type]
                                  codec_for(CellLatest), cache_max=1000)
        self.watermarks = TableWriter(partition_to_watermark(self.app, PARTITIONS), self.producer,  # type: ignore[arg-type]
                                      codec_for(Watermark), cache_max=1000)
        self.metrics = WorkerMetrics()
        self.agent = self.new_agent()
        self.topic = self.app.topic("cell-activity", key_type=bytes, value_type=bytes, key_serializer="raw",
                                    value_serializer="raw", partitions=PARTITIONS)
        self.faust_agent = register(self.app, self.topic, self.agent, batch_max=10, batch_within_s=0.01)
        self.fanout = ActivityFanout(self.producer, partitions=PARTITIONS, resolution=9, k=policy.k,  # type: ignore[arg-type]
                                     pane_ms=policy.pane_ms)  # type: ignore[arg-type]

    def new_agent(self) -> FeaturesAgent:
        return FeaturesAgent(
            panes=self.panes, watermarks=self.watermarks, latest=self.latest,
            producer=self.producer,  # type: ignore[arg-type]
            dead_letters=DeadLetters("features-dlq", self.producer, lambda: NOW), policy=self.policy,  # type: ignore[arg-type]
            partitions=PARTITIONS, metrics=self.metrics, clock_ms=lambda: NOW,
        )

    def batches(self) -> list[tuple[bytes, int]]:
        """What the fanout sent since last asked: (record, partition)."""
        start = len(self.producer.sent)
        self.fanout.send(self.producer.group())  # type: ignore[arg-type]
        out = [(v, p) for t, v, _, p in self.producer.sent[start:] if t == "cell-activity"]
        del self.producer.sent[start:]
        return out

    async def put(self, ctx: Any, sightings: list[dict[str, Any]] = (), requests: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        for ping in sightings:
            self.fanout.sighting(ping, ping.pop("status", "AVAILABLE"))
        for req in requests:
            self.fanout.request(req)
        await self.put_raw(ctx, self.batches())

    async def put_raw(self, ctx: Any, records: list[tuple[bytes, int]]) -> None:
        """Put records and wait until the agent has processed them (put returns before that)."""
        want = self.agent.records + len(records)
        for value, partition in records:
            await ctx.put(value=value, partition=partition)
        for _ in range(500):
            if self.agent.records >= want:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("features agent did not process its input")

    def features(self) -> list[dict[str, Any]]:
        return [codec_for(CellFeatures).loads(v) for v, _, _ in self.producer.on("cell-features")]

    def pushes(self) -> list[dict[str, Any]]:
        return [codec_for(PushMessage).loads(v) for v, _, _ in self.producer.on("push")]

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def ping(driver: str, seq: int, t_s: float, north: int = 0, status: str = "AVAILABLE") -> dict[str, Any]:
    """A decoded LocationEvent in cell A (moving north by 50 m steps)."""
    ts = T0 + int(t_s * 1000)
    return {"driver_id": driver, "seq": seq, "lat": A_LAT + north * STEP / 10, "lng": A_LNG, "fix_ts": ts,
            "received_ts": ts, "accuracy": None, "speed": None, "bearing": None, "status": status}


def request(ride: str, t_s: float, cell: str = A) -> dict[str, Any]:
    return {"cell": cell, "ride_id": ride, "ts": T0 + int(t_s * 1000)}


def by_window(features: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    return {(f["cell"], f["kind"], f["size_s"], f["start_ts"] - T0): f for f in features}


async def test_windows_close_by_event_time_with_smoothing_pushes_and_latest() -> None:
    w = Wired()
    async with w.faust_agent.test_context() as ctx:
        await w.put(ctx, [ping("d1", 1, 1, 0), ping("d1", 2, 6, 1), ping("d2", 1, 7, 0, "ON_TRIP")],
                    [request("r1", 10), request("r1", 10), request("r2", 65, B)])
        await w.put(ctx, [ping("d1", 3, 65, 2)])
        # Watermark 65 s: only the hopping windows ending at 30 s (+ 10 s grace) are closed.
        assert {(f["kind"], f["end_ts"] - T0) for f in w.features()} == {("HOPPING", 30_000)}
        await w.put(ctx, [ping("d1", 4, 200, 2)])
    got = by_window(w.features())
    a60 = got[(A, "TUMBLING", 60, 0)]
    assert (a60["supply"], a60["demand"], a60["final"]) == (1, 1, True)  # d2 was on a trip
    assert a60["smoothed_supply"] == pytest.approx(1 / 4) and a60["smoothed_demand"] == pytest.approx(1 / 4)
    b60 = got[(B, "TUMBLING", 60, 0)]  # B's partition got A's activity too: smoothing across partitions
    assert (b60["supply"], b60["demand"]) == (0, 0) and b60["smoothed_demand"] == pytest.approx(0.5 / 4)
    b120 = got[(B, "TUMBLING", 120, 0)]
    assert (b120["demand"], b120["smoothed_demand"]) == (1, pytest.approx((1 + 0.5) / 4))
    a120 = got[(A, "HOPPING", 120, 0)]
    assert (a120["supply"], a120["demand"], a120["speed_source"]) == (1, 1, "DEFAULT")
    ends = {f["end_ts"] - T0 for f in w.features()}
    assert max(ends) == 180_000 and (A, "TUMBLING", 240, 0) not in got  # 240 s + grace not reached
    assert not any(f["start_ts"] >= T0 + 180_000 for f in w.features())
    pushes = [p for p in w.pushes() if p["channel"] == cell_channel(A)]
    assert [p["seq"] for p in pushes] == list(range(1, len(pushes) + 1)) and len(pushes) == 6  # hopping-120 ends
    data = json.loads(pushes[-1]["data"])
    assert data["window"] == "hopping-120s" and data["cell"] == A and len(data["boundary"]) == 6
    latest = FeatureLookup(w.latest.table, codec_for(CellLatest), POLICY, lambda: T0 + 190_000).latest(A)
    assert latest is not None and latest["push_seq"] == 6 and latest["features"]["end_ts"] == T0 + 180_000


async def test_late_events_are_counted_not_applied_and_a_restart_does_not_close_twice() -> None:
    w = Wired()
    async with w.faust_agent.test_context() as ctx:
        await w.put(ctx, [ping("d1", 1, 1), ping("d1", 2, 200, 1)])
        emitted = len(w.features())
        await w.put(ctx, [ping("d9", 1, 2)], [request("r9", 3)])  # pane [0, 30 s) closed at 40 s
        await w.put(ctx, [ping("d1", 3, 195, 1)])  # out of order, within grace: counted
        assert len(w.features()) == emitted
        assert w.sample("livetrack_features_events_total", kind="sighting", outcome="late", copy="own") == 1
        assert w.sample("livetrack_features_events_total", kind="request", outcome="late", copy="own") == 1
        assert w.sample("livetrack_features_events_total", kind="sighting", outcome="out_of_order", copy="own") == 1
        wm = w.agent.clock(partition_for(A, PARTITIONS)).wm
        w.agent.forget()  # as after a restart: the watermark comes back from the stored panes
        assert w.agent.clock(partition_for(A, PARTITIONS)).wm == wm == T0 + 200_000
        await w.put(ctx, [ping("d1", 4, 205, 2)])
        assert len(w.features()) == emitted  # nothing re-closed
        await w.put(ctx, [ping("d1", 5, 215, 3)])  # 210 s + grace passed... not yet: 215 < 220
        await w.put(ctx, [ping("d1", 6, 221, 3)])
    new = w.features()[emitted:]
    assert {f["end_ts"] - T0 for f in new} == {210_000}
    a = [f for f in new if f["cell"] == A and f["kind"] == "HOPPING" and f["size_s"] == 60]
    assert a[0]["supply"] == 1 and a[0]["demand"] == 0


async def test_expired_panes_are_removed_from_store_and_changelog() -> None:
    w = Wired()
    async with w.faust_agent.test_context() as ctx:
        await w.put(ctx, [ping("d1", 1, 1)])
        await w.put(ctx, [ping("d1", 2, 480 + 10 + 29)])  # pane [0, 30 s) is in no open window now
        await w.put(ctx, [ping("d1", 3, 480 + 10 + 31)])
    starts = {(cell, p, start - T0) for cell, p, start, _ in stored_panes(w.panes.table)}
    assert all(start > 0 for _, _, start in starts)
    tombstones = [k for v, k, _ in w.producer.on(w.panes.changelog) if v is None]
    assert tombstones and all(b"1732" in k or b"[" in k for k in tombstones)


async def test_bad_items_and_records_are_dead_lettered() -> None:
    w = Wired()
    part = partition_for(A, PARTITIONS)
    bad_cell = {"sightings": [{"cell": "not-a-cell", "driver_id": "d", "seq": 1, "ts": T0, "lat": 0.0, "lng": 0.0,
                               "available": True}], "requests": []}
    wrong_partition = next(p for p in range(PARTITIONS) if p not in target_partitions(A, 1, PARTITIONS))
    misplaced = {"sightings": [], "requests": [request("r1", 1)]}
    async with w.faust_agent.test_context() as ctx:
        await w.put_raw(ctx, [(b"garbage", part), (codec_for(CellActivityBatch).dumps(bad_cell), part),
                              (codec_for(CellActivityBatch).dumps(misplaced), wrong_partition)])
    reasons = [codec_for(DeadLetter).loads(v)["reason"] for v, _, _ in w.producer.on("features-dlq")]
    assert len(reasons) == 3
    assert "undecodable" in reasons[0] and "not an H3 cell" in reasons[1] and "k-ring" in reasons[2]


async def test_running_updates_are_not_final_and_throttled() -> None:
    w = Wired(FeaturePolicy(running_ms=1))
    async with w.faust_agent.test_context() as ctx:
        await w.put(ctx, [ping("d1", 1, 1)], [request("r1", 2)])
    running = [f for f in w.features() if not f["final"]]
    assert {(f["cell"], f["start_ts"] - T0, f["end_ts"] - T0) for f in running if f["cell"] == A} == {(A, -90_000, 30_000)}
    a = next(f for f in running if f["cell"] == A)
    assert (a["supply"], a["demand"], a["kind"], a["size_s"]) == (1, 1, "HOPPING", 120)
    pushes = [p for p in w.pushes() if p["channel"] == cell_channel(A)]
    assert [p["seq"] for p in pushes] == [1]
    assert FeatureLookup(w.latest.table, codec_for(CellLatest), POLICY, lambda: NOW).surge(A) == 1.0


async def test_drivers_agent_sends_sightings_to_every_partition_of_the_k_ring() -> None:
    app = faust.App(f"test-drivers-sightings-{id(object())}", store="memory://", broker="kafka://127.0.0.1:1")
    producer = FakeProducer()
    states = TableWriter(driver_to_state(app, PARTITIONS), producer, codec_for(DriverState), cache_max=100)  # type: ignore[arg-type]
    fanout = ActivityFanout(producer, partitions=PARTITIONS, resolution=9, k=1, pane_ms=30_000)  # type: ignore[arg-type]
    agent_obj = DriversAgent(
        states=states, producer=producer, dead_letters=DeadLetters("locations-dlq", producer, lambda: 7),  # type: ignore[arg-type]
        policy=DriverPolicy(), partitions=PARTITIONS, cell_partitions=PARTITIONS, clock_ms=lambda: 5, activity=fanout,
    )
    topic = app.topic("locations", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=PARTITIONS)
    agent = register_batched(app, topic, "pings", agent_obj.process, batch_max=10, batch_within_s=0.01)
    d = "d-1"
    events = [{k: v for k, v in ping(d, seq, seq).items() if k != "status"} for seq in (1, 2)]
    jump = {**events[0], "seq": 3, "lat": A_LAT + 1.0, "fix_ts": T0 + 3000}
    async with agent.test_context() as ctx:
        await ctx.put(value=codec_for(LocationBatch).dumps({"events": events}), partition=partition_for(d, PARTITIONS))
        await ctx.put(value=codec_for(LocationBatch).dumps({"events": [events[0], jump]}),
                      partition=partition_for(d, PARTITIONS))
    seqs: dict[int, list[int]] = {}
    for v, _, p in producer.on("cell-activity"):
        seqs.setdefault(p, []).extend(s["seq"] for s in codec_for(CellActivityBatch).loads(v)["sightings"])
    own = partition_for(A, PARTITIONS)
    assert set(seqs) == set(target_partitions(A, 1, PARTITIONS)) and len(seqs) > 1
    assert seqs[own] == [1, 2, 1]  # every fix, the stale seq 1 again too (a replay), never the jump
    # The neighbours' partitions only learn that d-1 was in A during this pane.
    assert all(got == [1] for p, got in seqs.items() if p != own)


async def test_demand_agent_forwards_requests_only() -> None:
    app = faust.App(f"test-demand-{id(object())}", store="memory://", broker="kafka://127.0.0.1:1")
    producer = FakeProducer()
    fanout = ActivityFanout(producer, partitions=PARTITIONS, resolution=9, k=1, pane_ms=30_000)  # type: ignore[arg-type]
    agent_obj = DemandAgent(fanout=fanout, producer=producer,  # type: ignore[arg-type]
                            dead_letters=DeadLetters("features-dlq", producer, lambda: 7), resolution=9)  # type: ignore[arg-type]
    topic = app.topic("rides", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=PARTITIONS)
    agent = register_demand(app, topic, agent_obj, batch_max=10, batch_within_s=0.01)
    ride = {"ride_id": "r-1", "version": 1, "event": "REQUESTED", "state": "REQUESTED", "ts": T0, "actor": "rider",
            "rider_id": "u-1", "product": "standard", "pickup_lat": A_LAT, "pickup_lng": A_LNG, "dest_lat": LAT,
            "dest_lng": LNG, "pickup_cell": h3.latlng_to_cell(A_LAT, A_LNG, 7), "driver_id": None,
            "fare_estimate": None, "pickup_eta_s": None, "reason": None}
    codec = codec_for(RideEvent)
    async with agent.test_context() as ctx:
        await ctx.put(value=codec.dumps(ride), partition=0)
        await ctx.put(value=codec.dumps({**ride, "version": 2, "event": "OFFERED", "state": "OFFERED"}), partition=0)
        await ctx.put(value=codec.dumps({**ride, "ride_id": "r-2", "pickup_lat": 91.0}), partition=1)
        await ctx.put(value=b"not avro", partition=1)
    requests = [r for v, _, _ in producer.on("cell-activity") for r in codec_for(CellActivityBatch).loads(v)["requests"]]
    assert {(r["cell"], r["ride_id"], r["ts"]) for r in requests} == {(A, "r-1", T0)}  # res 9 from lat/lng
    assert len(requests) == len(target_partitions(A, 1, PARTITIONS))
    assert ride_request({**ride, "event": "CANCELLED"}, 9) is None
    reasons = [codec_for(DeadLetter).loads(v)["reason"] for v, _, _ in producer.on("features-dlq")]
    assert len(reasons) == 2 and "pickup_lat must be <= 90" in reasons[0] and "undecodable" in reasons[1]


def test_pane_keys_are_fausts_windowed_keys() -> None:
    app = faust.App(f"test-pane-keys-{id(object())}", store="memory://", broker="kafka://127.0.0.1:1")
    table = cell_to_activity(app, PARTITIONS, POLICY)
    keys = PaneKeys(table)
    for start in (T0, T0 + 30_000, 1_700_000_010_000, 1_795_237_170_000):
        faust_key = app.serializers.dumps_key(table.key_type, ((A, 3), table.window.current(start / 1000)),
                                              serializer=table.key_serializer)
        assert keys.encode(A, 3, start).encode() == faust_key


def test_fanout_copies_to_neighbours_once_per_pane_and_again_after_a_failed_batch() -> None:
    producer = FakeProducer()
    fanout = ActivityFanout(producer, partitions=PARTITIONS, resolution=9, k=1, pane_ms=30_000)  # type: ignore[arg-type]
    own = partition_for(A, PARTITIONS)

    def batch(*pings: dict[str, Any], acked: bool = True) -> dict[int, list[tuple[int, bool]]]:
        for p in pings:
            fanout.sighting({k: v for k, v in p.items() if k != "status"}, p["status"])
        start = len(producer.sent)
        fanout.send(producer.group())  # type: ignore[arg-type]
        if acked:
            fanout.delivered()
        out: dict[int, list[tuple[int, bool]]] = {}
        for _, v, _, p in producer.sent[start:]:
            out[p] = [(s["seq"], s["available"]) for s in codec_for(CellActivityBatch).loads(v)["sightings"]]
        return out

    first = batch(ping("d1", 1, 1, status="ON_TRIP"), ping("d1", 2, 2, status="ON_TRIP"))
    assert first[own] == [(1, False), (2, False)] and all(v == [(1, False)] for p, v in first.items() if p != own)
    became_available = batch(ping("d1", 3, 3))
    assert len(became_available) > 1 and all(v == [(3, True)] for v in became_available.values())
    assert batch(ping("d1", 4, 4)) == {own: [(4, True)]}  # nothing new for the neighbours
    assert len(batch(ping("d1", 5, 31))) > 1  # a new pane
    lost = batch(ping("d1", 6, 61), acked=False)
    assert len(lost) > 1
    assert len(batch(ping("d1", 6, 61))) > 1  # the replay of a failed batch copies again


@dataclass
class _Message:
    value: bytes
    partition: int
    offset: int
    topic: str = "cell-activity"
    key: bytes | None = None


@dataclass
class _Event:
    message: _Message


def _events(w: Wired, pings: list[dict[str, Any]], first_offset: int) -> list[_Event]:
    """The cell-activity records the fanout makes of `pings`, as events at consecutive offsets."""
    for p in pings:
        w.fanout.sighting({k: v for k, v in p.items() if k != "status"}, p["status"])
    return [_Event(_Message(v, p, first_offset + i)) for i, (v, p) in enumerate(w.batches())]


@pytest.mark.parametrize("later_s", [100, 1_000], ids=["panes-kept", "panes-expire"])
async def test_a_crash_before_the_watermark_is_stored_replays_to_the_same_windows(later_s: int) -> None:
    """Panes and latest seqs written, watermark not (a SIGKILL mid-write): the replayed batch closes the
    same windows with the same values, judges none of its events late, finds every pane it needs (none
    removed ahead of the watermark) and does not push a final twice."""
    w = Wired()
    batch1 = _events(w, [ping("d1", 1, 1), ping("d2", 1, 2), ping("d1", 2, 20, 1), ping("d2", 2, 65)], 0)
    batch2 = _events(w, [ping("d1", 3, later_s, 2), ping("d2", 3, later_s + 1)], 100)
    await w.agent.process(batch1)  # type: ignore[arg-type]
    before = w.pushes()
    del w.producer.sent[:]
    flush = w.watermarks.flush

    def crash(group: Any, **_: Any) -> int:
        raise RuntimeError("SIGKILL")

    w.watermarks.flush = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await w.agent.process(batch2)  # type: ignore[arg-type]
    emitted, pushed = w.features(), w.pushes()
    del w.producer.sent[:]
    w.watermarks.flush = flush  # type: ignore[method-assign]
    await w.agent.process(batch2)  # type: ignore[arg-type]  # the replay
    again = w.features()
    assert again and {(f["cell"], f["kind"], f["size_s"], f["start_ts"]) for f in again} == {
        (f["cell"], f["kind"], f["size_s"], f["start_ts"]) for f in emitted}
    strip = [{k: v for k, v in f.items() if k != "emitted_ts"} for f in emitted]
    assert [{k: v for k, v in f.items() if k != "emitted_ts"} for f in again] == strip
    assert w.sample("livetrack_features_events_total", kind="sighting", outcome="late", copy="own") == 0
    finals = [p for p in pushed if p["channel"] == cell_channel(A) and json.loads(p["data"])["final"]]
    assert finals and not [p for p in w.pushes() if json.loads(p["data"])["final"]]  # pushed once, before
    if later_s > 480 + 10:  # every pane of batch 1 expired: removed once the watermark was stored
        assert {start for _, _, start, _ in stored_panes(w.panes.table)} == {T0 + 990_000}  # batch 2's only
    del w.producer.sent[:]
    await w.agent.process(_events(w, [ping("d1", 4, later_s + 300, 3)], 200))  # type: ignore[arg-type]
    seqs = [p["seq"] for p in before + pushed + w.pushes() if p["channel"] == cell_channel(A)]
    assert seqs == list(range(1, len(seqs) + 1))  # the channel's seqs go on without a gap or a repeat


async def test_a_watermark_jumping_by_years_closes_the_old_windows_at_once() -> None:
    w = Wired()
    years = 3 * 365 * 86_400
    async with w.faust_agent.test_context() as ctx:
        await w.put(ctx, [ping("d1", 1, -years)])
        await w.put(ctx, [ping("d1", 2, 0)])  # an hour of walking every hop in between would time out
    ends = {f["end_ts"] - T0 for f in w.features()}
    assert ends and max(ends) <= -years * 1000 + 480_000
    assert len({(f["kind"], f["size_s"]) for f in w.features()}) == 8
