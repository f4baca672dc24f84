"""The rides agent with the offers agent beside it: offer commands for drivers held here are decided in place."""
from __future__ import annotations

import json
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types import Message as FaustMessage

import asyncio

from agents.batching import DeadLetters, partition_event
from agents.candidates import CellDriversView
from agents.drivers import DriverPolicy, DriversAgent
from agents.feed import Assignment
from agents.geo import cell_of
from agents.offers import OfferPolicy, OffersAgent
from agents.rides import DispatchPolicy, RidesAgent
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import (
    DriverState, DriverStatusChanged, LocationBatch, OfferCommand, PushMessage, Ride, RideCommand,
)
from tables.driver_to_state import driver_to_state
from tables.ride_to_state import ride_to_state
from tables.writer import TableWriter
from tests.unit.fakes import WAITED, FakeGroup, FakeProducer

PARTITIONS = 4
NOW = 1_732_170_000_000
PICKUP = (37.7749, -122.4194)
DRIVER = "d-7"
RIDE = "r-1"
DRIVER_PARTITION = partition_for(DRIVER, PARTITIONS)


class Wired:
    """Both agents on one memory-store app, the driver seen near the pickup a second ago."""

    def __init__(self, owned: set[int]) -> None:
        self.app = faust.App(f"test-rides-agent-{id(self)}", store="memory://", broker="kafka://127.0.0.1:1")
        self.producer = FakeProducer()
        p: Any = self.producer
        dlq = DeadLetters("dispatch-dlq", p, lambda: NOW)
        self.states = TableWriter(driver_to_state(self.app, PARTITIONS), p, codec_for(DriverState), cache_max=100)
        self.rides = TableWriter(ride_to_state(self.app, PARTITIONS), p, codec_for(Ride), cache_max=100)
        self.assignment = Assignment()
        self.assignment.partitions = frozenset(owned)
        self.offers = OffersAgent(
            states=self.states, producer=p, dead_letters=dlq, policy=OfferPolicy(), partitions=PARTITIONS,
            cell_partitions=PARTITIONS, clock_ms=lambda: NOW, owned=self.assignment,
            event_for=lambda part: partition_event(self.app, "offers", part),
        )
        view = CellDriversView()
        cell = cell_of(*PICKUP, 9)
        view.available[cell] = {DRIVER: NOW - 1_000}
        view.ready.set()
        self.agent = RidesAgent(rides=self.rides, producer=p, dead_letters=dlq, view=view, policy=DispatchPolicy(),
                                candidate_max_age_ms=60_000, clock_ms=lambda: NOW, offers=self.offers)
        state = {"driver_id": DRIVER, "seq": 3, "lat": PICKUP[0] + 0.001, "lng": PICKUP[1], "fix_ts": NOW - 1_000,
                 "received_ts": NOW - 1_000, "cell": cell, "status": "AVAILABLE", "push_seq": 2,
                 "pushed_lat": PICKUP[0], "pushed_lng": PICKUP[1], "pushed_ts": NOW - 1_000,
                 "membership_ts": NOW - 1_000, "speed": None, "bearing": None, "accuracy": None, "ride_id": None,
                 "offer_attempt": 0, "reserved_until": 0, "offer_seq": 0}
        self.states.set(DRIVER, state, partition_event(self.app, "offers", DRIVER_PARTITION))
        self.states.flush(self.producer.group())  # type: ignore[arg-type]
        self.producer.sent.clear()

    def request(self, offset: int = 0, ride: str = RIDE) -> faust.EventT:
        return self.command({"ride_id": ride, "command": "REQUEST", "ts": NOW, "actor": "rider", "actor_id": "u-1",
                             "rider_id": "u-1", "product": "standard", "pickup_lat": PICKUP[0],
                             "pickup_lng": PICKUP[1], "dest_lat": 37.79, "dest_lng": -122.40}, offset)

    def command(self, cmd: dict[str, Any], offset: int) -> faust.EventT:
        """A RideCommand record at `offset` of its ride's partition."""
        return self.event("ride-commands", cmd["ride_id"], codec_for(RideCommand).dumps(cmd), offset)

    def offer(self, cmd: dict[str, Any], offset: int) -> faust.EventT:
        """An OfferCommand record at `offset` of its driver's partition."""
        return self.event("offers", cmd["driver_id"], codec_for(OfferCommand).dumps(cmd), offset)

    def event(self, topic: str, key: str, value: bytes, offset: int) -> faust.EventT:
        part = partition_for(key, PARTITIONS)
        message = FaustMessage(topic, part, offset, NOW / 1000, 0, None, key.encode(), value, None,
                               tp=TP(topic, part))
        return faust.Event(self.app, message.key, message.value, None, message)

    def sent_commands(self) -> list[dict[str, Any]]:
        return [codec_for(RideCommand).loads(v) for v, _, _ in self.producer.on("ride-commands")]

    def topics(self) -> list[str]:
        return [t for t, *_ in self.producer.sent]

    def driver(self) -> dict[str, Any]:
        value = self.states.get(DRIVER)
        assert value is not None
        return value



async def test_a_driver_held_here_is_reserved_in_place_after_both_states_are_written() -> None:
    w = Wired(owned={DRIVER_PARTITION})
    await w.agent.process([w.request()])
    topics = w.topics()
    assert "offers" not in topics  # decided here, not sent through the topic
    assert (w.driver()["ride_id"], w.driver()["reserved_until"]) == (RIDE, NOW + DispatchPolicy().offer_ttl_ms)
    pushes = [codec_for(PushMessage).loads(v) for v, _, _ in w.producer.on("push")]
    offer = next(p for p in pushes if p["type"] == "offer")
    assert (offer["channel"], offer["seq"], json.loads(offer["data"])["ride_id"]) == (f"driver:{DRIVER}", 3, RIDE)
    assert [(r["command"], r["driver_id"]) for r in w.sent_commands()] == [("RESERVED", DRIVER)]
    # Both changelogs acked before anything they decided is sent: a crash in between re-decides nothing.
    last_state = max(topics.index(w.states.changelog), topics.index(w.rides.changelog))
    first_output = min(topics.index(t) for t in ("push", "ride-commands", "rides"))
    assert last_state < topics.index(WAITED) < first_output
    assert w.offers.in_place == 1


async def test_a_replayed_request_sends_the_same_offer_again_and_reserves_nothing_new() -> None:
    w = Wired(owned={DRIVER_PARTITION})
    await w.agent.process([w.request(offset=5)])
    held = dict(w.driver())
    w.producer.sent.clear()
    await w.agent.process([w.request(offset=5)])  # after a crash: the same command, its outbox re-sent
    assert w.driver() == held
    pushes = [codec_for(PushMessage).loads(v) for v, _, _ in w.producer.on("push")]
    assert [(p["type"], p["seq"]) for p in pushes if p["channel"] == f"driver:{DRIVER}"] == [("offer", 3)]


async def test_a_driver_held_by_another_worker_is_asked_through_the_offers_topic() -> None:
    w = Wired(owned=set(range(PARTITIONS)) - {DRIVER_PARTITION})
    await w.agent.process([w.request()])
    offers = [codec_for(OfferCommand).loads(v) for v, _, _ in w.producer.on("offers")]
    assert [(o["op"], o["driver_id"], o["ride_id"]) for o in offers] == [("RESERVE", DRIVER, RIDE)]
    assert w.driver()["ride_id"] is None  # that worker decides
    assert not [v for v, _, _ in w.producer.on("push") if codec_for(PushMessage).loads(v)["type"] == "offer"]
    assert w.offers.in_place == 0


CANCEL = {"ride_id": RIDE, "command": "CANCEL", "ts": NOW, "actor": "rider", "actor_id": "u-1"}


async def test_a_driver_freed_in_a_batch_is_not_asked_again_in_it() -> None:
    w = Wired(owned={DRIVER_PARTITION})
    await w.agent.process([w.request(offset=1)])
    reserved = w.sent_commands()[0]
    accept = {"driver_id": DRIVER, "op": "ACCEPT", "ride_id": RIDE, "ts": NOW, "actor": "driver", "attempt": 1}
    await w.offers.process([w.offer(accept, offset=1)])
    assigned = w.sent_commands()[-1]
    await w.agent.process([w.command(reserved, 2), w.command(assigned, 3)])
    assert w.driver()["status"] == "EN_ROUTE"
    w.producer.sent.clear()
    await w.agent.process([w.command(CANCEL, 4), w.request(offset=5, ride="r-2")])
    # Freed here, asked again only from the next batch on: never two changes of a driver in one step.
    assert (w.driver()["status"], w.driver()["ride_id"]) == ("AVAILABLE", None)
    assert not w.producer.on("offers")
    await w.agent.process([w.request(offset=6, ride="r-4")])  # the next batch
    assert w.driver()["ride_id"] == "r-4"


async def test_a_second_command_for_a_driver_in_one_batch_goes_through_the_offers_topic() -> None:
    w = Wired(owned={DRIVER_PARTITION})
    await w.agent.process([w.request(offset=1), w.command(CANCEL, 2)])
    # The RESERVE is decided here; the RELEASE goes through `offers`, after the offer's push: a crash
    # before the sends cannot leave the driver past a push that a replay would no longer re-send.
    assert w.driver()["ride_id"] == RIDE
    offers = [codec_for(OfferCommand).loads(v) for v, _, _ in w.producer.on("offers")]
    assert [(o["op"], o["ride_id"]) for o in offers] == [("RELEASE", RIDE)]
    offer = next(i for i, (t, v, _, _) in enumerate(w.producer.sent)
                 if t == "push" and codec_for(PushMessage).loads(v)["type"] == "offer")
    assert offer < w.topics().index("offers")


async def test_a_driver_whose_last_change_is_not_sent_yet_is_asked_through_the_offers_topic() -> None:
    w = Wired(owned={DRIVER_PARTITION})
    with w.offers.unsent_until_done([DRIVER]):
        await w.agent.process([w.request()])
    assert [codec_for(OfferCommand).loads(v)["op"] for v, _, _ in w.producer.on("offers")] == ["RESERVE"]
    assert w.driver()["ride_id"] is None and not w.offers.unsent


async def test_a_batch_changing_a_driver_twice_is_handled_in_two_steps() -> None:
    w = Wired(owned=set())
    reserve = {"driver_id": DRIVER, "op": "RESERVE", "ride_id": RIDE, "ts": NOW, "actor": "system", "attempt": 1,
               "ttl_ms": 10_000, "pickup_lat": PICKUP[0], "pickup_lng": PICKUP[1], "dest_lat": 37.79,
               "dest_lng": -122.40}
    release = {"driver_id": DRIVER, "op": "RELEASE", "ride_id": RIDE, "ts": NOW, "actor": "system", "attempt": 1,
               "reason": "expired"}
    await w.offers.process([w.offer(reserve, 1), w.offer(release, 2)])
    kinds = [t if t != "push" else codec_for(PushMessage).loads(v)["type"] for t, v, _, _ in w.producer.sent]
    changelog = w.states.changelog
    # Each change: its state acked, then its sends acked, before the next change is written.
    assert kinds == [changelog, WAITED, "offer", "ride-commands", WAITED,
                     changelog, WAITED, "offer.revoked", WAITED]


async def test_a_replayed_command_re_sends_what_it_sent_though_the_state_no_longer_shows_it() -> None:
    w = Wired(owned=set())
    base = {"driver_id": DRIVER, "ride_id": RIDE, "ts": NOW, "attempt": 1}
    reserve = {**base, "op": "RESERVE", "actor": "system", "ttl_ms": 10_000, "pickup_lat": PICKUP[0],
               "pickup_lng": PICKUP[1], "dest_lat": 37.79, "dest_lng": -122.40}
    free = {**base, "op": "FREE", "actor": "system", "reason": "cancelled"}
    await w.offers.process([w.offer(reserve, 1)])
    await w.offers.process([w.offer({**base, "op": "ACCEPT", "actor": "driver"}, 2)])
    await w.offers.process([w.offer(free, 3)])
    ended = [v for v, _, _ in w.producer.on("push") if codec_for(PushMessage).loads(v)["type"] == "ride.ended"]
    assert len(ended) == 1 and w.driver()["ride_id"] is None  # freed: the state no longer names the ride
    w.producer.sent.clear()
    await w.offers.process([w.offer(free, 3)])  # after a crash between the state's ack and the sends
    assert [v for v, _, _ in w.producer.on("push")] == ended  # the same push, the same seq
    assert w.topics().index(w.states.changelog) < w.topics().index(WAITED) < w.topics().index("push")
    statuses = [codec_for(DriverStatusChanged).loads(v)["status"] for v, _, _ in w.producer.on("driver-status")]
    assert statuses == ["AVAILABLE"]  # its status change again too


def _driver_pushes(w: Wired) -> list[tuple[int, str]]:
    """(seq, type) of the `driver:{id}` pushes, in the order they were handed to the producer."""
    pushes = [codec_for(PushMessage).loads(v) for v, _, _ in w.producer.on("push")]
    return [(p["seq"], p["type"]) for p in pushes if p["channel"] == f"driver:{DRIVER}"]


async def test_a_ping_while_an_offer_waits_for_its_state_ack_does_not_overtake_the_offer() -> None:
    # Seen in `bench.dispatch`: the location push took the seq after the offer's and went out first;
    # the gateway and the phone then dropped the offer as old, and the ride waited a whole offer TTL.
    w = Wired(owned={DRIVER_PARTITION})
    drivers = DriversAgent(states=w.states, producer=w.producer, dead_letters=w.offers.dead_letters,  # type: ignore[arg-type]
                           policy=DriverPolicy(), partitions=PARTITIONS, cell_partitions=PARTITIONS,
                           clock_ms=lambda: NOW, dispatching=w.offers.is_unsent)
    moved = {"driver_id": DRIVER, "seq": 4, "lat": PICKUP[0] + 0.002, "lng": PICKUP[1], "fix_ts": NOW,
             "received_ts": NOW, "accuracy": None, "speed": None, "bearing": None}
    ping = w.event("locations", DRIVER, codec_for(LocationBatch).dumps({"events": [moved]}), 0)
    waited = w.producer.group().wait

    async def ping_arrives_meanwhile() -> None:  # the first wait: the rides agent's state ack
        w.producer.group = lambda: FakeGroup(w.producer.sent)  # type: ignore[method-assign]
        await drivers.process([ping])
        await waited()

    w.producer.group = lambda: _Hooked(w.producer.sent, ping_arrives_meanwhile)  # type: ignore[method-assign]
    await w.agent.process([w.request()])
    assert (w.driver()["seq"], w.driver()["lat"]) == (4, moved["lat"])  # the move is kept...
    assert _driver_pushes(w) == [(3, "offer")]  # ...and not pushed ahead of the offer
    await drivers.process([w.event("locations", DRIVER, codec_for(LocationBatch).dumps(
        {"events": [{**moved, "seq": 5, "fix_ts": NOW + 1_000, "received_ts": NOW + 1_000}]}), 1)])
    assert _driver_pushes(w) == [(3, "offer"), (4, "driver.location")]


async def test_the_offers_agent_waits_for_a_driver_changed_in_place_to_be_sent() -> None:
    w = Wired(owned=set())
    reserve = {"driver_id": DRIVER, "op": "RESERVE", "ride_id": RIDE, "ts": NOW, "actor": "system", "attempt": 1,
               "ttl_ms": 10_000, "pickup_lat": PICKUP[0], "pickup_lng": PICKUP[1], "dest_lat": 37.79,
               "dest_lng": -122.40}
    with w.offers.unsent_until_done([DRIVER]):  # as the rides agent holds it until its sends are out
        task = asyncio.ensure_future(w.offers.process([w.offer(reserve, 1)]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done() and w.states.changelog not in w.topics()
    await task
    assert w.states.changelog in w.topics() and w.driver()["ride_id"] == RIDE


async def test_a_driver_whose_sends_failed_gets_no_location_push_until_they_are_sent() -> None:
    w = Wired(owned={DRIVER_PARTITION})

    async def fails() -> None:
        raise RuntimeError("not acked")

    w.producer.group = lambda: _Hooked(w.producer.sent, fails)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await w.agent.process([w.request(offset=1)])
    # The offer's seq is taken, its push not sent: the feed will try the batch again.
    assert w.offers.is_unsent(DRIVER) and not w.offers.unsent
    w.producer.group = lambda: FakeGroup(w.producer.sent)  # type: ignore[method-assign]
    await w.agent.process([w.request(offset=1)])  # the retry: decided in place again, its outbox re-sent
    assert not w.offers.is_unsent(DRIVER) and w.offers.in_place == 2
    assert _driver_pushes(w) == [(3, "offer")]


class _Hooked(FakeGroup):
    """A group whose wait runs `hook` instead (once): something else happens while the agent waits."""

    def __init__(self, sent: list, hook: Any) -> None:
        super().__init__(sent)
        self.hook = hook

    async def wait(self) -> None:
        await self.hook()
