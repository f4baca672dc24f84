"""The rides agent and the driver desk in one worker: commands for drivers held here decided in place."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agents.desk import OUTBOX_KEEP_MS
from agents.geo import cell_of
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import DriverStatusChanged, LocationBatch, OfferCommand, PushMessage, RideCommand
from tables.transaction import TOGETHER, Transaction, commit
from tests.unit.agents.harness import NOW, PARTITIONS, WAITED, Worker

PICKUP = (37.7749, -122.4194)
DRIVER = "d-7"
RIDE = "r-1"
DRIVER_PARTITION = partition_for(DRIVER, PARTITIONS)
CANCEL = {"ride_id": RIDE, "command": "CANCEL", "ts": NOW, "actor": "rider", "actor_id": "u-1"}


def ping(seq: int) -> dict[str, Any]:
    """The driver's fix `seq`: 20 m north of the last, a second later (a significant move)."""
    return {"driver_id": DRIVER, "seq": seq, "lat": PICKUP[0] + seq * 20 / 111_195, "lng": PICKUP[1],
            "fix_ts": NOW - 5_000 + seq * 1_000, "received_ts": NOW - 5_000 + seq * 1_000, "accuracy": None,
            "speed": None, "bearing": None}


async def worker(tmp: Path, store: str, owned: set[int] | None = None) -> Worker:
    """A worker whose driver has pinged once, near the pickup; the replica shows it available."""
    w = Worker(tmp, store, owned=owned)
    w.kafka.produce("locations", codec_for(LocationBatch).dumps({"events": [ping(1)]}),
                    partition=DRIVER_PARTITION)
    await w.process("locations")
    w.c.view.available[cell_of(*PICKUP, 9)] = {DRIVER: NOW - 1_000}
    return w


def request(ride: str = RIDE) -> bytes:
    return codec_for(RideCommand).dumps({
        "ride_id": ride, "command": "REQUEST", "ts": NOW, "actor": "rider", "actor_id": "u-1", "rider_id": "u-1",
        "product": "standard", "pickup_lat": PICKUP[0], "pickup_lng": PICKUP[1], "dest_lat": 37.79,
        "dest_lng": -122.40})


def command(cmd: dict[str, Any]) -> bytes:
    full = {"rider_id": None, "product": None, "pickup_lat": None, "pickup_lng": None, "dest_lat": None,
            "dest_lng": None, "driver_id": None, "attempt": 0, "lat": None, "lng": None, "expires_at": 0,
            "reason": None, **cmd}
    return codec_for(RideCommand).dumps(full)


def offer(op: str, **kw: Any) -> bytes:
    cmd = {"driver_id": DRIVER, "op": op, "ride_id": RIDE, "ts": NOW, "actor": "system", "attempt": 1, "ttl_ms": 0,
           "pickup_lat": None, "pickup_lng": None, "dest_lat": None, "dest_lng": None, "fare_estimate": None,
           "reason": None, **kw}
    return codec_for(OfferCommand).dumps(cmd)


def driver_pushes(w: Worker) -> list[tuple[int, str]]:
    """(seq, type) of the driver's pushes, in log order."""
    pushes = w.kafka.values("push", PushMessage)
    return [(p["seq"], p["type"]) for p in pushes if p["channel"] == f"driver:{DRIVER}"]


def replies(w: Worker) -> list[tuple[str, str | None]]:
    return [(c["command"], c["driver_id"]) for c in w.kafka.values("ride-commands", RideCommand)
            if c["actor_id"] == "offers"]


async def test_a_driver_held_here_is_reserved_in_place_with_both_states_acked_first(tmp_path: Path, store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.sent.clear()
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    await w.process("ride-commands")
    assert not w.kafka.records("offers")  # decided here, not sent through the topic
    driver = w.table("driver_to_state")[DRIVER]
    assert (driver["ride_id"], driver["reserved_until"]) == (RIDE, NOW + 10_000)
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer")]
    assert replies(w) == [("RESERVED", DRIVER)]
    # Both changelogs acked before anything they decided is sent: a crash in between re-decides nothing.
    topics = [t for t, _ in w.kafka.sent]
    states = max(topics.index(w.c.tables["driver_to_state"].changelog), topics.index(w.c.tables["ride_to_state"].changelog))
    outputs = min(topics.index(t) for t in ("push", "rides") if t in topics)
    assert states < topics.index(WAITED, states) < outputs
    assert w.c.desk.ops["in_place"] == 1


async def test_a_replayed_request_sends_the_same_offer_again_and_reserves_nothing_new(tmp_path: Path,
                                                                                    store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    await w.process("ride-commands")
    held = w.table("driver_to_state")[DRIVER]
    w.kafka.committed.clear()  # after a crash: the same commands again, from the last commit
    w.kafka.committed[("locations", DRIVER_PARTITION)] = 1
    await w.process("ride-commands")
    assert w.table("driver_to_state")[DRIVER] == held
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer"), (2, "offer")]  # the same offer, same seq


async def test_a_driver_held_by_another_worker_is_asked_through_the_offers_topic(tmp_path: Path, store: str) -> None:
    w = await worker(tmp_path, store, owned=set(range(PARTITIONS)) - {DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    await w.process("ride-commands")
    offers = w.kafka.values("offers", OfferCommand)
    assert [(o["op"], o["driver_id"], o["ride_id"]) for o in offers] == [("RESERVE", DRIVER, RIDE)]
    assert w.table("driver_to_state")[DRIVER]["ride_id"] is None  # the other worker decides
    assert driver_pushes(w) == [(1, "driver.location")]
    assert w.c.desk.ops["in_place"] == 0


async def test_a_driver_changed_twice_in_one_batch_is_decided_in_place_twice_in_order(tmp_path: Path,
                                                                                    store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    w.kafka.produce("ride-commands", command(CANCEL), key=RIDE.encode())
    await w.process("ride-commands")
    assert not w.kafka.records("offers")
    assert w.table("driver_to_state")[DRIVER]["ride_id"] is None
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer"), (3, "offer.revoked")]
    box = w.table("driver_to_outbox")[DRIVER]
    assert [d["key"] for d in box["decisions"]] == [f"RESERVE {RIDE} 1", f"RELEASE {RIDE} 1"]


async def test_a_replayed_command_re_sends_what_it_sent_though_the_state_no_longer_shows_it(tmp_path: Path,
                                                                                          store: str) -> None:
    w = await worker(tmp_path, store, owned=set())  # every command comes through `offers`
    reserve = offer("RESERVE", ttl_ms=10_000, pickup_lat=PICKUP[0], pickup_lng=PICKUP[1], dest_lat=37.79,
                    dest_lng=-122.40)
    for value in (reserve, offer("ACCEPT", actor="driver"), offer("FREE", reason="cancelled")):
        w.kafka.produce("offers", value, key=DRIVER.encode())
    await w.process("offers")
    assert driver_pushes(w)[-1] == (4, "ride.ended")
    assert w.table("driver_to_state")[DRIVER]["ride_id"] is None  # freed: the state no longer names the ride
    w.kafka.committed[("offers", DRIVER_PARTITION)] = 2  # the FREE again (a crash before its commit)
    await w.process("offers")
    assert driver_pushes(w)[-2:] == [(4, "ride.ended"), (4, "ride.ended")]  # the same push, the same seq
    statuses = [s["status"] for s in w.kafka.values("driver-status", DriverStatusChanged)]
    assert statuses == ["EN_ROUTE", "AVAILABLE", "AVAILABLE"]  # its status change again too


async def test_a_ping_while_an_offer_waits_for_its_state_ack_does_not_overtake_the_offer(tmp_path: Path,
                                                                                       store: str) -> None:
    # Seen in `bench.dispatch` once: the location push took the seq after the offer's and went out
    # first; the gateway and the phone then dropped the offer as old, and the ride waited a whole TTL.
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    w.kafka.produce("locations", codec_for(LocationBatch).dumps({"events": [ping(2)]}), partition=DRIVER_PARTITION)
    pinged = asyncio.Event()

    async def ping_arrives_meanwhile() -> None:  # during the rides agent's first wait: its state's ack
        asyncio.ensure_future(w.process("locations")).add_done_callback(lambda _: pinged.set())
        for _ in range(10):
            await asyncio.sleep(0)

    w.kafka.during_wait.append(ping_arrives_meanwhile)
    await w.process("ride-commands")
    await pinged.wait()
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer"), (3, "driver.location")]
    assert w.table("driver_to_state")[DRIVER]["seq"] == 2 and w.table("driver_to_state")[DRIVER]["ride_id"] == RIDE


async def test_a_command_from_offers_waits_for_a_driver_changed_in_place_to_be_sent(tmp_path: Path,
                                                                                   store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    w.kafka.produce("offers", offer("DECLINE", actor="driver", attempt=0), key=DRIVER.encode())
    declined = asyncio.Event()

    async def decline_arrives_meanwhile() -> None:
        asyncio.ensure_future(w.process("offers")).add_done_callback(lambda _: declined.set())
        for _ in range(10):
            await asyncio.sleep(0)

    w.kafka.during_wait.append(decline_arrives_meanwhile)
    await w.process("ride-commands")
    await declined.wait()
    # Decided after the reservation (it sees it: the decline frees the driver), and sent after its offer.
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer"), (3, "offer.revoked")]
    assert replies(w) == [("RESERVED", DRIVER), ("DECLINED", DRIVER)]


async def test_sends_that_fail_for_a_while_are_retried_and_nothing_overtakes_them(tmp_path: Path, store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.c.runtime.backoff = type(w.c.runtime.backoff)(first_s=0.001, max_s=0.002)
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    w.kafka.produce("locations", codec_for(LocationBatch).dumps({"events": [ping(2)]}), partition=DRIVER_PARTITION)

    pinged: list[asyncio.Future[int]] = []

    async def outputs_fail_then_a_ping_arrives() -> None:  # after the state's ack: the outputs fail twice
        w.kafka.failing.extend([True] * 6)
        pinged.append(asyncio.ensure_future(w.process("locations")))
        await asyncio.sleep(0)

    w.kafka.during_wait.append(outputs_fail_then_a_ping_arrives)
    await w.process("ride-commands")
    await pinged[0]
    assert driver_pushes(w) == [(1, "driver.location"), (2, "offer"), (3, "driver.location")]
    assert w.c.metrics.commit_retries.labels("rides")._value.get() >= 1
    assert json.loads(w.kafka.values("push", PushMessage)[1]["data"])["ride_id"] == RIDE


def driver_messages(w: Worker) -> list[dict[str, Any]]:
    return [p for p in w.kafka.values("push", PushMessage) if p["channel"] == f"driver:{DRIVER}"]


def resent(w: Worker, partitions: set[int]) -> int:
    """How many records the desk would re-send for `partitions` (the transaction dropped after)."""
    tx = Transaction(TOGETHER)
    try:
        return w.c.desk.resend(tx, partitions)
    finally:
        tx.abort()  # later transactions on those drivers need not wait for it


async def test_a_worker_taking_a_partition_re_sends_its_drivers_recent_decisions_as_they_were(tmp_path: Path,
                                                                                            store: str) -> None:
    w = await worker(tmp_path, store, owned={DRIVER_PARTITION})
    w.kafka.produce("ride-commands", request(), key=RIDE.encode())
    await w.process("ride-commands")
    offer_push = driver_messages(w)[-1]
    w = w.restart(owned={DRIVER_PARTITION})
    other = (DRIVER_PARTITION + 1) % PARTITIONS
    assert resent(w, {other}) == 0  # nobody's decisions there
    tx = Transaction(TOGETHER, "desk-resend")
    assert w.c.desk.resend(tx, {DRIVER_PARTITION}) > 0
    await commit(tx, w.kafka)  # type: ignore[arg-type]
    assert driver_messages(w)[-1] == offer_push and (offer_push["seq"], offer_push["type"]) == (2, "offer")
    w.clock[0] += OUTBOX_KEEP_MS  # older than an offer notice's TTL: worth nothing re-sent
    assert resent(w, {DRIVER_PARTITION}) == 0
