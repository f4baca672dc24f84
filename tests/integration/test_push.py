"""Push delivery on the real pipeline: resume across drops and a gateway SIGKILL, TTL, acks and retries."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator, Iterable

import aiohttp
import pytest

from gateway.client import LiveClient
from infra.producer import AsyncProducer
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH
from tests.conftest import _free_port
from tests.integration.fixtures import DropProxy, Pipeline, Subscriber, ping

pytestmark = pytest.mark.integration

Seen = dict[str, list[tuple[int, int]]]  # channel -> [(seq, skipped)] as the application got them


class Watcher:
    """A LiveClient and everything its application was handed, per channel."""

    def __init__(self, url: str, token: str) -> None:
        self.seen: Seen = defaultdict(list)
        self.start: dict[str, int] = {}  # channel -> seq the first subscribe ack stood at
        self.data_seq: dict[tuple[str, int], int] = {}  # (channel, seq) -> the ping's seq it carries
        self.client = LiveClient(url, token, on_update=self._on_update, retry_delay_s=0.2, retry_delay_max_s=1.0)

    def _on_update(self, update: dict[str, Any]) -> None:
        self.seen[update["channel"]].append((update["seq"], update.get("skipped", 0)))
        self.data_seq[(update["channel"], update["seq"])] = update["data"]["seq"]

    async def watch(self, channel: str) -> None:
        ack = await self.client.subscribe(channel)
        self.start[channel] = ack["seq"]

    def caught_up(self, heads: dict[str, int]) -> bool:
        return all(self.client.last.get(c) == heads[c] for c in self.start)


def audit(start: int, seen: list[tuple[int, int]], head: int) -> tuple[int, int]:
    """(gaps, duplicates) in what an application saw of a channel, from `start` to `head`:
    every seq must arrive once, in order, or be declared skipped by the seq after it."""
    gaps = dups = 0
    prev = start
    for seq, skipped in seen:
        if seq <= prev:
            dups += 1
            continue
        if seq - skipped != prev + 1:
            gaps += 1
        prev = seq
    return gaps + (prev != head), dups


class Pinger:
    """Posts one ping per driver per round through a gateway, each a pushed move, until stopped."""

    def __init__(self, url: str, headers: dict[str, str], drivers: list[str], hz: float) -> None:
        self.url, self.headers, self.drivers, self.hz = url, headers, drivers, hz
        self.seq = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                self.seq += 1
                body = [ping(d, self.seq) for d in self.drivers]
                async with http.post(f"{self.url}/v1/locations", json=body, headers=self.headers) as resp:
                    if resp.status != 202:
                        self.failed += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / self.hz)


@contextlib.asynccontextmanager
async def pinging(pinger: Pinger) -> AsyncIterator[Pinger]:
    stop = asyncio.Event()
    task = asyncio.create_task(pinger.run(stop))
    try:
        yield pinger
    finally:
        stop.set()
        await task


async def heads(pipeline: Pipeline, drivers: Iterable[str]) -> dict[str, int]:
    """Each driver channel's latest seq, as the gateway has it."""
    out = {}
    async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
        for d in drivers:
            async with http.get(f"{pipeline.url}/v1/drivers/{d}") as resp:
                out[f"driver:{d}"] = (await resp.json())["channel_seq"] if resp.status == 200 else 0
    return out


async def settled_heads(pipeline: Pipeline, drivers: Iterable[str], timeout_s: float = 30) -> dict[str, int]:
    """Heads once the worker has pushed everything the pinger sent: a loaded worker still pushes
    after the pinger stops, and a head read too early makes caught-up clients look ahead of it."""
    drivers = list(drivers)
    deadline = time.monotonic() + timeout_s
    last = await heads(pipeline, drivers)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.5)
        now = await heads(pipeline, drivers)
        if now == last:
            return now
        last = now
    return last


async def converge(watchers: list[Watcher], want: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(w.caught_up(want) for w in watchers):
        await asyncio.sleep(0.25)


def lagging(watchers: list[Watcher], want: dict[str, int]) -> list[str]:
    """How each client that did not catch up stands (for the failure message)."""
    return [f"{c}: last {w.client.last.get(c)} of {want[c]}, connected {w.client.connected}, {w.client.stats}"
            for w in watchers for c in w.start if w.client.last.get(c) != want[c]][:5]


def audit_all(watchers: list[Watcher], want: dict[str, int]) -> dict[str, int]:
    totals = {"gaps": 0, "duplicates": 0, "behind": 0, "delivered": 0}
    for w in watchers:
        for channel, start in w.start.items():
            gaps, dups = audit(start, w.seen[channel], want[channel])
            totals["gaps"] += gaps
            totals["duplicates"] += dups
            totals["behind"] += w.client.last.get(channel) != want[channel]
            totals["delivered"] += len(w.seen[channel])
    return totals


async def connect_all(watchers: list[Watcher], channel_of: Any, batch: int = 100) -> None:
    for i in range(0, len(watchers), batch):
        group = watchers[i:i + batch]
        await asyncio.gather(*(w.client.connect() for w in group))
        await asyncio.gather(*(w.watch(channel_of(i + k)) for k, w in enumerate(group)))


async def test_a_thousand_clients_dropped_and_reconnected_see_no_gap_and_no_duplicate(pipeline: Pipeline) -> None:
    run = uuid.uuid4().hex[:6]
    drivers = [f"rc-{run}-{i:02d}" for i in range(20)]
    token = pipeline.token("ops", "it-reconnect")
    async with DropProxy(pipeline.settings.gateway_port) as proxy:
        watchers = [Watcher(proxy.url, token) for _ in range(1000)]
        await connect_all(watchers, lambda i: f"driver:{drivers[i % len(drivers)]}")
        async with pinging(Pinger(pipeline.url, pipeline.headers(), drivers, hz=2)) as pinger:
            dropped = 0
            for wait_s, fraction in ((3, 1.0), (3, 0.5), (3, 1.0), (3, 0.3)):  # while updates flow
                await asyncio.sleep(wait_s)
                dropped += proxy.drop(fraction)
            await asyncio.sleep(3)
        want = await settled_heads(pipeline, drivers)
        await converge(watchers, want, timeout_s=60)
        totals = audit_all(watchers, want)
        resets = sum(w.client.stats.resets for w in watchers)
        reconnects = sorted(w.client.stats.connects - 1 for w in watchers)
        connected = sum(w.client.connected for w in watchers)
        for w in watchers:
            await w.client.disconnect()
    # Updates flowed through the drops (a loaded 2-core box pushes fewer than the 30 pings it got).
    assert pinger.failed == 0 and min(want.values()) >= 5
    assert totals == {"gaps": 0, "duplicates": 0, "behind": 0, "delivered": totals["delivered"]}, totals
    assert resets == 0  # the history covered every drop: nothing was replaced by a snapshot
    # Every client was cut at least once and came back (some cuts hit a reconnection mid-handshake).
    assert dropped >= len(watchers) and reconnects[0] >= 1 and connected == len(watchers)


async def test_a_gateway_killed_and_restarted_loses_no_update_for_resuming_clients(
    pipeline: Pipeline, kafka_settings: Settings
) -> None:
    """Clients on gateway B resume after B is SIGKILLed and restarted, while pings keep flowing
    through gateway A; both gateways give every message the same seq."""
    second = Pipeline(kafka_settings.model_copy(update={"gateway_port": _free_port()}))
    await second.start_gateway()
    run = uuid.uuid4().hex[:6]
    drivers = [f"gk-{run}-{i}" for i in range(10)]
    token = pipeline.token("ops", "it-restart")
    on_b = [Watcher(second.url, token) for _ in range(50)]
    on_a = Watcher(pipeline.url, token)
    try:
        await connect_all(on_b, lambda i: f"driver:{drivers[i % len(drivers)]}")
        await on_a.client.connect()
        for d in drivers:
            await on_a.watch(f"driver:{d}")
        async with pinging(Pinger(pipeline.url, pipeline.headers(), drivers, hz=4)) as pinger:
            await asyncio.sleep(2)
            assert second.gateway is not None
            second.gateway.stop(signal.SIGKILL)
            await asyncio.sleep(2)  # updates B's clients miss while B is gone
            await second.start_gateway()
            await asyncio.sleep(2)
        want = await settled_heads(pipeline, drivers)
        await converge([*on_b, on_a], want, timeout_s=30)
        totals = audit_all(on_b, want)
        behind = lagging(on_b, want)
        resets = sum(w.client.stats.resets for w in on_b)
        resumes = sum(w.client.stats.resumes for w in on_b)
    finally:
        for w in [*on_b, on_a]:
            await w.client.disconnect()
        second.stop()
    assert pinger.failed == 0 and min(want.values()) >= 20
    assert resumes >= len(on_b) and resets == 0
    assert totals == {"gaps": 0, "duplicates": 0, "behind": 0, "delivered": totals["delivered"]}, behind
    assert audit_all([on_a], want)["gaps"] == 0
    mismatched = [k for w in on_b for k, v in w.data_seq.items() if on_a.data_seq.get(k, v) != v]
    assert not mismatched  # the same seq is the same message on both gateways


def _push(channel: str, seq: int, *, priority: int, ttl_ms: int, sent_ts: int | None = None,
          type: str = "ride.status", **data: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"channel": channel, "seq": seq, "type": type, "priority": priority, "ttl_ms": ttl_ms,
            "sent_ts": now if sent_ts is None else sent_ts, "event_ts": now, "data": json.dumps({"n": seq, **data})}


async def _produce(settings: Settings, *messages: dict[str, Any]) -> None:
    """Push messages as an agent would: Avro, keyed by channel."""
    codec = codec_for(PushMessage)
    producer = AsyncProducer(settings.bootstrap)
    await producer.start()
    group = producer.group()
    for msg in messages:
        producer.send(group, PUSH.name, codec.dumps(msg), key=msg["channel"].encode())
    await group.wait()
    await producer.close()


async def _frames(client: Subscriber, within_s: float) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            out.append(await client.next(within_s))
    return out


async def _until_heads(client: Subscriber, heads: dict[str, int]) -> None:
    """Read `client`'s updates until each channel of `heads` has reached its seq."""
    left = dict(heads)
    while left:
        update = await client.next(30)
        if left.get(update["channel"]) == update["seq"]:
            del left[update["channel"]]


async def test_events_are_retried_until_acked_and_expired_messages_never_delivered(pipeline: Pipeline) -> None:
    s = pipeline.settings
    channel = f"ride:ttl-{uuid.uuid4().hex[:8]}"
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        assert (await client.subscribe(channel))["ok"]
        await _produce(s, _push(channel, 1, priority=7, ttl_ms=60_000, state="OFFERED"))
        first = await client.next()
        assert (first["seq"], first["ack"], first["data"]["state"]) == (1, True, "OFFERED")
        again = await client.next(s.push_retry_ms / 1000 + 2)  # not acked: sent again, same seq
        assert again == first
        await client.sio.emit("ack", {"channel": channel, "seq": 1}, namespace="/live")
        await _frames(client, 0.3)  # a retry already on its way
        assert await _frames(client, s.push_retry_ms / 1000 + 1) == []  # acked: no more retries

        long_ago = int(time.time() * 1000) - 10_000
        await _produce(s, _push(channel, 2, priority=3, ttl_ms=1000, sent_ts=long_ago, type="ride.eta"),
                       _push(channel, 3, priority=3, ttl_ms=60_000, type="ride.eta"))
        third = await client.next()
        assert (third["seq"], third["skipped"]) == (3, 1)  # 2 expired on the way: left out, and said so
        assert "ack" not in third
    async with Subscriber(pipeline.url, pipeline.token()) as late:
        ack = await late.subscribe(channel, since=0)
        assert (ack["recovered"], ack["seq"]) == (True, 3)
        assert [(u["seq"], u.get("skipped", 0)) for u in ack["updates"]] == [(1, 0), (3, 1)]
        assert (await late.subscribe(channel, since=2))["updates"][0]["seq"] == 3
        fresh = await late.subscribe(channel)
        assert fresh["snapshot"]["seq"] == 3 and "updates" not in fresh


async def test_a_resume_the_history_cannot_cover_gets_the_snapshot_and_says_so(pipeline: Pipeline) -> None:
    s = pipeline.settings
    channel = f"ride:gap-{uuid.uuid4().hex[:8]}"
    too_many = s.push_history_max + 5
    await _produce(s, *(_push(channel, n, priority=3, ttl_ms=0, type="ride.eta") for n in range(1, too_many + 1)))
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        for _ in range(50):  # the gateway may still be reading them
            ack = await client.subscribe(channel, since=1)
            if ack["seq"] == too_many:
                break
            await asyncio.sleep(0.1)
        assert (ack["recovered"], ack["seq"], ack["snapshot"]["seq"]) == (False, too_many, too_many)
        assert "updates" not in ack
        ack = await client.subscribe(channel, since=too_many - s.push_history_max)
        assert ack["recovered"] and len(ack["updates"]) == s.push_history_max


async def test_a_refused_resume_gives_nothing_away(pipeline: Pipeline) -> None:
    async with Subscriber(pipeline.url, pipeline.token("driver", "me")) as client:
        ack = await client.subscribe("driver:someone-else", since=0)
        assert ack == {"ok": False, "error": "not allowed: driver:someone-else"}
        ack = await client.subscribe("driver:me", since=-1)
        assert ack == {"ok": False, "error": "since must be a seq (integer >= 0)"}


async def test_a_slow_client_gets_events_first_and_locations_coalesced(pipeline: Pipeline) -> None:
    """Real backpressure: the client's link stalls while 40 MB of updates come; once it drains,
    an event overtakes the queued locations, the locations come coalesced, and nothing is lost."""
    run = uuid.uuid4().hex[:8]
    moving = [f"ride:slow-{run}-{k}" for k in range(100)]
    status = f"ride:status-{run}"
    # 100 kB updates: the latest of each channel alone (10 MB) outgrows what the stalled link's
    # buffers hold (the gateway's socket send buffer grows to 4 MB).
    rounds = 4
    async with DropProxy(pipeline.settings.gateway_port, small_buffers=True) as proxy, \
            Subscriber(pipeline.url, pipeline.token()) as fast:
        async with Subscriber(proxy.url, pipeline.token()) as client:
            for channel in (*moving, status):
                assert (await client.subscribe(channel))["ok"]
                assert (await fast.subscribe(channel))["ok"]
            proxy.flowing.clear()  # the client's link stalls: the gateway's socket stops draining
            await _produce(pipeline.settings, *(
                _push(channel, seq, priority=3, ttl_ms=60_000, type="ride.location", pad="x" * 100_000)
                for seq in range(1, rounds + 1) for channel in moving))
            # Channels sit on different partitions: only once a client that keeps up has every last
            # location is the event sure to come after them.
            await _until_heads(fast, {c: rounds for c in moving})
            await _produce(pipeline.settings, _push(status, 1, priority=7, ttl_ms=60_000, state="ACCEPTED"))
            await _until_heads(fast, {status: 1})
            proxy.flowing.set()
            frames: list[dict[str, Any]] = []
            done: set[str] = set()
            while len(done) < len(moving) + 1:
                frames.append(frame := await client.next(30))
                if frame["seq"] == (1 if frame["channel"] == status else rounds):
                    done.add(frame["channel"])
    by_channel: Seen = defaultdict(list)
    for f in frames:
        by_channel[f["channel"]].append((f["seq"], f.get("skipped", 0)))
    assert all(audit(0, by_channel[c], rounds) == (0, 0) for c in moving)  # every seq delivered or declared
    assert len(frames) < len(moving) * rounds / 2  # the backlog was coalesced
    at = next(i for i, f in enumerate(frames) if f["channel"] == status)
    assert frames[at]["ack"] is True
    latest_after = sum(f["seq"] == rounds for f in frames[at + 1:])
    assert latest_after >= 20  # the event went ahead of the locations still queued (FIFO would give 0)
