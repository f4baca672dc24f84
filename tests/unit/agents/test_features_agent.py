"""The features and demand agents in a worker over an in-memory Kafka, on the memory and RocksDB store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h3
import pytest

from agents.activity import ActivityFanout, ride_request, target_partitions
from agents.features import cell_channel
from agents.features_math import FeaturePolicy, rings
from agents.lookup import FeatureLookup
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellActivityBatch, CellFeatures, DeadLetter, LocationBatch, PushMessage, RideEvent
from tables.cell_to_activity import PaneKeys, cell_to_activity, decode_key
from tables.transaction import TOGETHER, Transaction
from tests.unit.agents.harness import Crash, Worker

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
    """A worker whose features agent is fed the cell-activity records a fanout makes."""

    def __init__(self, tmp: Path, store: str, **settings: Any) -> None:
        self.w = Worker(tmp, store, clock=[NOW], **settings)
        self.policy = self.w.c.features.policy
        self.fanout = ActivityFanout(partitions=PARTITIONS, resolution=9, k=self.policy.k, pane_ms=self.policy.pane_ms)

    @property
    def agent(self) -> Any:
        return self.w.c.features

    def produce(self, sightings: list[dict[str, Any]] = (), requests: list[dict[str, Any]] = (),  # type: ignore[assignment]
                acked: bool = True) -> None:
        """The cell-activity records of these sightings (with their `status`) and requests, into Kafka."""
        tx = Transaction(TOGETHER)
        self.fanout.send(tx, sightings=[({k: v for k, v in p.items() if k != "status"}, p.get("status", "AVAILABLE"))
                                        for p in sightings], requests=list(requests))
        for topic, value, key, partition in tx.outputs:
            assert value is not None
            self.w.kafka.produce(topic, value, key=key, partition=partition)
        if acked:
            for done in tx.committed:
                done()

    async def put(self, sightings: list[dict[str, Any]] = (), requests: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.produce(sightings, requests)
        await self.w.process("cell-activity")

    def features(self) -> list[dict[str, Any]]:
        return self.w.kafka.values("cell-features", CellFeatures)

    def pushes(self) -> list[dict[str, Any]]:
        return self.w.kafka.values("push", PushMessage)

    def sample(self, name: str, **labels: str) -> float:
        return self.w.c.metrics.registry.get_sample_value(name, labels) or 0.0

    def lookup(self, now: int) -> FeatureLookup:
        return FeatureLookup(self.w.c.tables["cell_to_features"], self.policy, lambda: now)


def ping(driver: str, seq: int, t_s: float, north: int = 0, status: str = "AVAILABLE") -> dict[str, Any]:
    """A decoded LocationEvent in cell A (moving north by 50 m steps)."""
    ts = T0 + int(t_s * 1000)
    return {"driver_id": driver, "seq": seq, "lat": A_LAT + north * STEP / 10, "lng": A_LNG, "fix_ts": ts,
            "received_ts": ts, "accuracy": None, "speed": None, "bearing": None, "status": status}


def request(ride: str, t_s: float, cell: str = A) -> dict[str, Any]:
    return {"cell": cell, "ride_id": ride, "ts": T0 + int(t_s * 1000)}


def by_window(features: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    return {(f["cell"], f["kind"], f["size_s"], f["start_ts"] - T0): f for f in features}


async def test_windows_close_by_event_time_with_smoothing_pushes_and_latest(tmp_path: Path, store: str) -> None:
    w = Wired(tmp_path, store)
    if True:
        await w.put([ping("d1", 1, 1, 0), ping("d1", 2, 6, 1), ping("d2", 1, 7, 0, "ON_TRIP")],
                    [request("r1", 10), request("r1", 10), request("r2", 65, B)])
        await w.put([ping("d1", 3, 65, 2)])
        # Watermark 65 s: only the hopping windows ending at 30 s (+ 10 s grace) are closed.
        assert {(f["kind"], f["end_ts"] - T0) for f in w.features()} == {("HOPPING", 30_000)}
        await w.put([ping("d1", 4, 200, 2)])
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
    latest = w.lookup(T0 + 190_000).latest(A)
    assert latest is not None and latest["push_seq"] == 6 and latest["features"]["end_ts"] == T0 + 180_000


async def test_late_events_are_counted_not_applied_and_a_restart_does_not_close_twice(tmp_path: Path,
                                                                                     store: str) -> None:
    w = Wired(tmp_path, store)
    if True:
        await w.put([ping("d1", 1, 1), ping("d1", 2, 200, 1)])
        emitted = len(w.features())
        await w.put([ping("d9", 1, 2)], [request("r9", 3)])  # pane [0, 30 s) closed at 40 s
        await w.put([ping("d1", 3, 195, 1)])  # out of order, within grace: counted
        assert len(w.features()) == emitted
        assert w.sample("livetrack_features_events_total", kind="sighting", outcome="late", copy="own") == 1
        assert w.sample("livetrack_features_events_total", kind="request", outcome="late", copy="own") == 1
        assert w.sample("livetrack_features_events_total", kind="sighting", outcome="out_of_order", copy="own") == 1
        wm = w.agent.clock(partition_for(A, PARTITIONS)).wm
        w.agent.forget()  # as after a restart: the watermark comes back from the stored panes
        assert w.agent.clock(partition_for(A, PARTITIONS)).wm == wm == T0 + 200_000
        await w.put([ping("d1", 4, 205, 2)])
        assert len(w.features()) == emitted  # nothing re-closed
        await w.put([ping("d1", 5, 215, 3)])  # 210 s + grace passed... not yet: 215 < 220
        await w.put([ping("d1", 6, 221, 3)])
    new = w.features()[emitted:]
    assert {f["end_ts"] - T0 for f in new} == {210_000}
    a = [f for f in new if f["cell"] == A and f["kind"] == "HOPPING" and f["size_s"] == 60]
    assert a[0]["supply"] == 1 and a[0]["demand"] == 0


async def test_expired_panes_are_removed_from_store_and_changelog(tmp_path: Path, store: str) -> None:
    w = Wired(tmp_path, store)
    if True:
        await w.put([ping("d1", 1, 1)])
        await w.put([ping("d1", 2, 480 + 10 + 29)])  # pane [0, 30 s) is in no open window now
        await w.put([ping("d1", 3, 480 + 10 + 31)])
    starts = {(cell, p, start - T0) for cell, p, start in map(decode_key, w.w.table("cell_to_activity"))}
    assert starts and all(start > 0 for _, _, start in starts)
    changelog = w.w.c.tables["cell_to_activity"].changelog
    tombstones = [r.key for r in w.w.kafka.records(changelog) if r.value is None]
    assert tombstones and all(b"1732" in k or b"[" in k for k in tombstones)


async def test_bad_items_and_records_are_dead_lettered(tmp_path: Path, store: str) -> None:
    w = Wired(tmp_path, store)
    part = partition_for(A, PARTITIONS)
    bad_cell = {"sightings": [{"cell": "not-a-cell", "driver_id": "d", "seq": 1, "ts": T0, "lat": 0.0, "lng": 0.0,
                               "available": True}], "requests": []}
    wrong_partition = next(p for p in range(PARTITIONS) if p not in target_partitions(A, 1, PARTITIONS))
    misplaced = {"sightings": [], "requests": [request("r1", 1)]}
    for value, partition in [(b"garbage", part), (codec_for(CellActivityBatch).dumps(bad_cell), part),
                             (codec_for(CellActivityBatch).dumps(misplaced), wrong_partition)]:
        w.w.kafka.produce("cell-activity", value, partition=partition)
        await w.w.process("cell-activity")
    reasons = [letter["reason"] for letter in w.w.kafka.values("features-dlq", DeadLetter)]
    assert len(reasons) == 3
    assert "undecodable" in reasons[0] and "not an H3 cell" in reasons[1] and "k-ring" in reasons[2]


async def test_running_updates_are_not_final_and_throttled(tmp_path: Path, store: str) -> None:
    w = Wired(tmp_path, store, features_running_ms=1)
    if True:
        await w.put([ping("d1", 1, 1)], [request("r1", 2)])
    running = [f for f in w.features() if not f["final"]]
    assert {(f["cell"], f["start_ts"] - T0, f["end_ts"] - T0) for f in running if f["cell"] == A} == {(A, -90_000, 30_000)}
    a = next(f for f in running if f["cell"] == A)
    assert (a["supply"], a["demand"], a["kind"], a["size_s"]) == (1, 1, "HOPPING", 120)
    pushes = [p for p in w.pushes() if p["channel"] == cell_channel(A)]
    assert [p["seq"] for p in pushes] == [1]
    assert w.lookup(NOW).surge(A) == 1.0


async def test_drivers_agent_sends_sightings_to_every_partition_of_the_k_ring(tmp_path: Path, store: str) -> None:
    w = Worker(tmp_path, store, clock=[T0 + 10_000])
    d = "d-1"
    events = [{k: v for k, v in ping(d, seq, seq).items() if k != "status"} for seq in (1, 2)]
    jump = {**events[0], "seq": 3, "lat": A_LAT + 1.0, "fix_ts": T0 + 3000}
    for batch in (events, [events[0], jump]):
        w.kafka.produce("locations", codec_for(LocationBatch).dumps({"events": batch}),
                        partition=partition_for(d, PARTITIONS))
        await w.process("locations")
    seqs: dict[int, list[int]] = {}
    for r in w.kafka.records("cell-activity"):
        assert r.value is not None
        seqs.setdefault(r.partition, []).extend(s["seq"] for s in codec_for(CellActivityBatch).loads(r.value)["sightings"])
    own = partition_for(A, PARTITIONS)
    assert set(seqs) == set(target_partitions(A, 1, PARTITIONS)) and len(seqs) > 1
    assert seqs[own] == [1, 2, 1]  # every fix, the stale seq 1 again too (a replay), never the jump
    # The neighbours' partitions only learn that d-1 was in A during this pane.
    assert all(got == [1] for p, got in seqs.items() if p != own)


async def test_demand_agent_forwards_requests_only(tmp_path: Path, store: str) -> None:
    w = Worker(tmp_path, store)
    ride = {"ride_id": "r-1", "version": 1, "event": "REQUESTED", "state": "REQUESTED", "ts": T0, "actor": "rider",
            "rider_id": "u-1", "product": "standard", "pickup_lat": A_LAT, "pickup_lng": A_LNG, "dest_lat": LAT,
            "dest_lng": LNG, "pickup_cell": h3.latlng_to_cell(A_LAT, A_LNG, 7), "driver_id": None,
            "fare_estimate": None, "pickup_eta_s": None, "reason": None}
    codec = codec_for(RideEvent)
    for value, partition in ((codec.dumps(ride), 0),
                             (codec.dumps({**ride, "version": 2, "event": "OFFERED", "state": "OFFERED"}), 0),
                             (codec.dumps({**ride, "ride_id": "r-2", "pickup_lat": 91.0}), 1), (b"not avro", 1)):
        w.kafka.produce("rides", value, partition=partition)
    await w.process("rides")
    requests = [r for b in w.kafka.values("cell-activity", CellActivityBatch) for r in b["requests"]]
    assert {(r["cell"], r["ride_id"], r["ts"]) for r in requests} == {(A, "r-1", T0)}  # res 9 from lat/lng
    assert len(requests) == len(target_partitions(A, 1, PARTITIONS))
    assert ride_request({**ride, "event": "CANCELLED"}, 9) is None
    reasons = [letter["reason"] for letter in w.kafka.values("features-dlq", DeadLetter)]
    assert len(reasons) == 2 and "pickup_lat must be <= 90" in reasons[0] and "undecodable" in reasons[1]


def test_pane_keys_are_fausts_windowed_keys() -> None:
    import faust

    app = faust.App(f"test-pane-keys-{id(object())}", store="memory://", broker="kafka://127.0.0.1:1")
    table = cell_to_activity(app, PARTITIONS, pane_ms=POLICY.pane_ms, reach_ms=POLICY.max_window_ms + POLICY.grace_ms)
    keys = PaneKeys(table)
    for start in (T0, T0 + 30_000, 1_700_000_010_000, 1_795_237_170_000):
        faust_key = app.serializers.dumps_key(table.key_type, ((A, 3), table.window.current(start / 1000)),
                                              serializer=table.key_serializer)
        assert keys.encode(A, 3, start).encode() == faust_key


def test_fanout_copies_to_neighbours_once_per_pane_and_again_after_a_failed_batch() -> None:
    fanout = ActivityFanout(partitions=PARTITIONS, resolution=9, k=1, pane_ms=30_000)
    own = partition_for(A, PARTITIONS)

    def batch(*pings: dict[str, Any], acked: bool = True) -> dict[int, list[tuple[int, bool]]]:
        tx = Transaction(TOGETHER)
        fanout.send(tx, sightings=[({k: v for k, v in p.items() if k != "status"}, p["status"]) for p in pings])
        if acked:
            for done in tx.committed:
                done()
        out: dict[int, list[tuple[int, bool]]] = {}
        for _, v, _, p in tx.outputs:
            assert v is not None and p is not None
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


@pytest.mark.parametrize("later_s", [100, 1_000], ids=["panes-kept", "panes-expire"])
async def test_a_crash_before_the_watermark_is_stored_replays_to_the_same_windows(tmp_path: Path, store: str,
                                                                                   later_s: int) -> None:
    """Panes and latest seqs stored, watermark not (a SIGKILL between the commit's phases): the replayed
    batch closes the same windows with the same values, judges none of its events late, finds every pane
    it needs (none removed ahead of the watermark) and does not push a final twice."""
    w = Wired(tmp_path, store)
    await w.put([ping("d1", 1, 1), ping("d2", 1, 2), ping("d1", 2, 20, 1), ping("d2", 2, 65)])
    before, emitted_before = len(w.pushes()), len(w.features())

    def crash(point: str) -> None:
        if point == "stored1":
            raise Crash(point)

    w.w.c.runtime.faults.counter = lambda agent: crash if agent == "features" else None  # type: ignore[method-assign]
    w.produce([ping("d1", 3, later_s, 2), ping("d2", 3, later_s + 1)])
    with pytest.raises(Crash):
        await w.w.process("cell-activity")
    emitted, pushed = w.features()[emitted_before:], w.pushes()[before:]
    w.w = w.w.restart()  # a new worker: its tables from the store and the changelogs, the batch again
    await w.w.process("cell-activity")
    again = w.features()[emitted_before + len(emitted):]
    assert again and {(f["cell"], f["kind"], f["size_s"], f["start_ts"]) for f in again} == {
        (f["cell"], f["kind"], f["size_s"], f["start_ts"]) for f in emitted}
    strip = [{k: v for k, v in f.items() if k != "emitted_ts"} for f in emitted]
    assert [{k: v for k, v in f.items() if k != "emitted_ts"} for f in again] == strip
    assert w.sample("livetrack_features_events_total", kind="sighting", outcome="late", copy="own") == 0
    finals = [p for p in pushed if p["channel"] == cell_channel(A) and json.loads(p["data"])["final"]]
    replayed = w.pushes()[before + len(pushed):]
    assert finals and not [p for p in replayed if json.loads(p["data"])["final"]]  # pushed once, before
    if later_s > 480 + 10:  # every pane of batch 1 expired: removed once the watermark was stored
        assert {start for _, _, start in map(decode_key, w.w.table("cell_to_activity"))} == {T0 + 990_000}
    await w.put([ping("d1", 4, later_s + 300, 3)])
    seqs = [p["seq"] for p in w.pushes() if p["channel"] == cell_channel(A)]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))  # the channel's seqs go on without a gap
    assert len(seqs) == len(set(seqs))  # ...and none twice


async def test_a_watermark_jumping_by_years_closes_the_old_windows_at_once(tmp_path: Path, store: str) -> None:
    w = Wired(tmp_path, store)
    years = 3 * 365 * 86_400
    if True:
        await w.put([ping("d1", 1, -years)])
        await w.put([ping("d1", 2, 0)])  # an hour of walking every hop in between would time out
    ends = {f["end_ts"] - T0 for f in w.features()}
    assert ends and max(ends) <= -years * 1000 + 480_000
    assert len({(f["kind"], f["size_s"]) for f in w.features()}) == 8
