"""A crash after each commit step of each agent replays to the same tables and the same outputs.

One scenario runs the whole worker (pings, rides offered, accepted, declined, started, completed
and cancelled, windows closing) over an in-memory Kafka, once without a crash and once per fault
point: the worker dies (`Crash`) right after that step of one commit of one agent, a new worker
restarts over the same store directory (its tables recovered from the changelogs past the
store's persisted offset, as Faust's recovery does) and reads its inputs again from the committed
offsets. Then the tables must equal the uncrashed run's, every output the uncrashed run sent must
have been sent and nothing else (a replay may repeat a record, never differ from it), every
channel's pushes must first appear in seq order (a gateway drops a seq below its head, so a
decision overtaken by a later push would be lost) and each seq must mean one message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h3
import pytest

from agents.runtime import Faults
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import (
    CellActivityBatch, CellMembershipBatch, LocationBatch, OfferCommand, PushMessage, RideCommand,
)
from tests.unit.agents.harness import NOW, PARTITIONS, Crash, Worker

PICKUP = (52.5200, 13.4050)
CELL = h3.latlng_to_cell(*PICKUP, 9)
DRIVERS = ("d-1", "d-2", "d-3", "d-4")
START = NOW - 700_000  # event time of the first fix: the fixes go on 10 s apart, windows close


def t(seq: int) -> int:
    """When fix `seq` is taken."""
    return START + seq * 10_000


def _ping(driver: str, seq: int) -> dict[str, Any]:
    i = DRIVERS.index(driver)
    return {"driver_id": driver, "seq": seq, "lat": PICKUP[0] + (seq * 15 + i * 40) / 111_195, "lng": PICKUP[1],
            "fix_ts": t(seq) + i, "received_ts": t(seq) + 500, "accuracy": 5.0, "speed": 1.5, "bearing": 0.0}


def pings(w: Worker, seqs: range) -> None:
    w.clock[0] = t(seqs[-1]) + 1_000  # the worker's clock follows the fixes: ride events are in event time too
    for seq in seqs:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for d in DRIVERS:
            by_partition.setdefault(partition_for(d, PARTITIONS), []).append(_ping(d, seq))
        for partition, events in by_partition.items():
            w.kafka.produce("locations", codec_for(LocationBatch).dumps({"events": events}), partition=partition)


def ride_command(w: Worker, ride: str, command: str, actor: str, actor_id: str, **kw: Any) -> None:
    cmd = {"ride_id": ride, "command": command, "ts": w.now, "actor": actor, "actor_id": actor_id, "rider_id": None,
           "product": None, "pickup_lat": None, "pickup_lng": None, "dest_lat": None, "dest_lng": None,
           "driver_id": None, "attempt": 0, "lat": None, "lng": None, "expires_at": 0, "reason": None, **kw}
    w.kafka.produce("ride-commands", codec_for(RideCommand).dumps(cmd), key=ride.encode())


def request(w: Worker, ride: str) -> None:
    ride_command(w, ride, "REQUEST", "rider", f"u-{ride}", rider_id=f"u-{ride}", product="standard",
                 pickup_lat=PICKUP[0], pickup_lng=PICKUP[1], dest_lat=PICKUP[0] + 0.02, dest_lng=PICKUP[1])


def offered(w: Worker, ride: str) -> str:
    ride_state = w.table("ride_to_state")[ride]
    assert ride_state["state"] == "OFFERED", ride_state
    return str(ride_state["offer_driver"])


def answer(w: Worker, ride: str, op: str) -> None:
    """The offered driver answers, as the gateway sends it (to `offers`, keyed by driver)."""
    driver = offered(w, ride)
    cmd = {"driver_id": driver, "op": op, "ride_id": ride, "ts": w.now, "actor": "driver", "attempt": 0, "ttl_ms": 0,
           "pickup_lat": None, "pickup_lng": None, "dest_lat": None, "dest_lng": None, "fare_estimate": None,
           "reason": None}
    w.kafka.produce("offers", codec_for(OfferCommand).dumps(cmd), key=driver.encode())


def by_driver(w: Worker, ride: str, command: str) -> None:
    ride_command(w, ride, command, "driver", str(w.table("ride_to_state")[ride]["driver_id"]))


STEPS: list[Callable[[Worker], None]] = [
    lambda w: pings(w, range(1, 6)),
    lambda w: (request(w, "r-1"), request(w, "r-2")),
    lambda w: (answer(w, "r-1", "ACCEPT"), answer(w, "r-2", "DECLINE")),  # within the offers' TTL
    lambda w: (pings(w, range(6, 12)), by_driver(w, "r-1", "START")),
    lambda w: (pings(w, range(12, 20)), by_driver(w, "r-1", "COMPLETE"),
               ride_command(w, "r-2", "CANCEL", "rider", "u-r-2")),
    lambda w: pings(w, range(20, 70)),  # event time goes on ~8 min: every window kind closes, panes expire
]


@dataclass
class Run:
    worker: Worker
    crashes: list[str] = field(default_factory=list)


def _seeded(w: Worker) -> Worker:
    w.c.view.available[CELL] = {d: t(5) for d in DRIVERS}  # the replica a real worker follows
    return w


async def run(tmp: Path, store: str, owned: set[int] | None, fault: str = "") -> Run:
    """The scenario, crashing once at `fault` (agent:point:nth) and restarting."""
    r = Run(_seeded(Worker(tmp, store, owned=owned)))

    def crash(point: str) -> None:
        r.crashes.append(point)
        raise Crash(point)

    r.worker.c.runtime.faults = Faults(fault, crash)
    for step in STEPS:
        step(r.worker)
        while True:
            try:
                await r.worker.settle()
                break
            except Crash:
                r.worker = _seeded(r.worker.restart(owned=owned))
    return r


def tables(w: Worker) -> dict[str, dict[str, Any]]:
    out = {name: w.table(name) for name in w.c.tables}
    for ride in out["ride_to_state"].values():
        ride.pop("applied_offset")  # an offset in `ride-commands`, which a replay may have repeated records in
    return out


def outputs(w: Worker) -> dict[str, set[Any]]:
    """Every record the worker sent, by topic (changelogs are compared as tables; `locations` is input).
    Batch records count by their items: a replayed batch may group the same items otherwise."""
    skip = {t.changelog for t in w.c.tables.values()} | {"locations"}
    out: dict[str, set[Any]] = {}
    for topic, key, value in w.kafka.order:
        if topic in skip:
            continue
        if topic == "driver-cells" and value is not None:
            # A replayed ping re-sends its driver's presence in the cell as a JOIN, where the first run
            # may have called it a REFRESH (still there): the same fact for the cells agent.
            found = {_frozen({**m, "op": "LEAVE" if m["op"] == "LEAVE" else "IN"})
                     for m in codec_for(CellMembershipBatch).loads(value)["changes"]}
        elif topic == "cell-activity" and value is not None:
            # Which neighbours' partitions already have a sighting is remembered in memory only: a
            # restarted worker copies some again (the panes keep a set, the tables above are equal).
            batch = codec_for(CellActivityBatch).loads(value)
            found = {(kind, _frozen(item)) for kind in ("sightings", "requests") for item in batch[kind]}
        else:
            found = {(key, value)}
        out.setdefault(topic, set()).update(found)
    return out


def _frozen(item: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(item.items()))


def check_channels(w: Worker) -> None:
    """Each channel's seqs first appear in order, each seq one message."""
    first_seen: dict[str, list[int]] = {}
    meaning: dict[tuple[str, int], bytes] = {}
    codec = codec_for(PushMessage)
    for topic, _key, value in w.kafka.order:
        if topic != "push" or value is None:
            continue
        p = codec.loads(value)
        assert meaning.setdefault((p["channel"], p["seq"]), value) == value, f"{p['channel']} seq {p['seq']} twice"
        seen = first_seen.setdefault(p["channel"], [])
        if p["seq"] not in seen:
            seen.append(p["seq"])
    for channel, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"{channel}: seqs first sent in the order {seqs}"
        assert seqs == list(range(1, len(seqs) + 1)), f"{channel}: seqs {seqs}"


POINTS = {  # agent -> (commit order's points, which commit)
    "drivers": (("acked0", "stored0", "committed"), 3),
    "cells": (("acked0", "stored0", "committed"), 2),
    "demand": (("acked0", "committed"), 1),
    "rides": (("acked0", "stored0", "acked1", "committed"), 2),
    "offers": (("acked0", "stored0", "acked1", "committed"), 1),
    "features": (("acked0", "acked1", "stored1", "acked2", "stored2", "acked3", "stored3", "committed"), 5),
}
# Dispatch commands are decided in place (this worker holds the driver) or through `offers`: both.
CASES = [(agent, point, nth, placement) for agent, (points, nth) in POINTS.items() for point in points
         for placement in (("in_place", "remote") if agent in ("rides", "offers") else ("in_place",))]


@pytest.fixture
def store() -> str:
    return "rocksdb://"  # the store a worker runs on: its persisted offset is what recovery resumes from


@pytest.fixture(scope="module")
def baselines() -> dict[tuple[str, str], Any]:
    return {}


@pytest.mark.parametrize("agent,point,nth,placement", CASES, ids=[f"{a}-{p}-{where}" for a, p, _, where in CASES])
async def test_a_crash_after_a_commit_step_replays_to_the_same_tables_and_outputs(
    tmp_path: Path, store: str, placement: str, agent: str, point: str, nth: int,
    baselines: dict[tuple[str, str], Any],
) -> None:
    owned = None if placement == "in_place" else set()  # remote: every dispatch command through `offers`
    key = (store, placement)
    if key not in baselines:
        base = await run(tmp_path / "base", store, owned)
        check_channels(base.worker)
        baselines[key] = (tables(base.worker), outputs(base.worker))
        base.worker.close()
    want_tables, want_outputs = baselines[key]
    crashed = await run(tmp_path / "crash", store, owned, f"{agent}:{point}:{nth}")
    assert crashed.crashes == [point], f"{agent} never reached {point} of commit {nth}"
    w = crashed.worker
    assert tables(w) == want_tables
    assert outputs(w) == want_outputs
    check_channels(w)
    w.close()


async def test_the_scenario_exercises_every_agent_and_outcome(tmp_path: Path) -> None:
    r = await run(tmp_path, "memory://", owned=set())
    w = r.worker
    rides = w.table("ride_to_state")
    assert (rides["r-1"]["state"], rides["r-2"]["state"]) == ("COMPLETED", "CANCELLED")
    assert w.kafka.records("offers") and w.kafka.records("cell-features") and w.kafka.records("cell-activity")
    assert w.table("cell_to_drivers") and w.table("driver_to_outbox")
    kinds = {codec_for(PushMessage).loads(v)["type"] for t, _, v in w.kafka.order if t == "push" and v}
    assert {"driver.location", "offer", "offer.revoked", "ride.assigned", "ride.started", "ride.ended",
            "ride.state", "cell.features"} <= kinds
