"""The commit runtime in a real worker on a broker of the test's own: a bug stops its partition loudly,
and a worker killed right after a commit step resumes to the same pushes and dispatch."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from infra.broker import kafka_running
from infra.processes import scrape
from infra.settings import Settings
from schemas.partitioning import partition_for
from tests.conftest import _free_port
from tests.integration.fixtures import Pipeline, Subscriber, end_offsets, ping, read_topic

pytestmark = pytest.mark.integration


@contextmanager
def own_broker(state_dir: Path, **overrides: Any) -> Iterator[Settings]:
    if not Settings().embedded_kafka:
        pytest.skip("needs its own embedded broker (LIVETRACK_KAFKA_BOOTSTRAP names a shared cluster)")
    settings = Settings(
        kafka_port=_free_port(pairs=True), state_dir=state_dir, partitions=4, app_id=f"rt-{uuid.uuid4().hex[:6]}",
        gateway_port=_free_port(), worker_web_port=_free_port(), offer_ttl_ms=30_000, reserve_timeout_ms=20_000,
        dispatch_retry_ms=500, ride_reply_timeout_s=5.0, **overrides,
    )
    with kafka_running(settings):
        yield settings


def drivers_on_two_partitions(partitions: int) -> tuple[str, str]:
    first = f"bug-{uuid.uuid4().hex[:6]}"
    other = next(d for d in (f"ok-{i}-{uuid.uuid4().hex[:4]}" for i in range(100))
                 if partition_for(d, partitions) != partition_for(first, partitions))
    return first, other


async def worker_json(settings: Settings, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{settings.worker_web_port}{path}") as resp:
            return resp.status, await resp.json() if path == "/healthz" else await resp.text()


async def test_a_bug_stops_its_partition_with_an_error_and_a_metric_and_dead_letters_nothing(tmp_path: Path) -> None:
    with own_broker(tmp_path, fault_at="drivers:bug:1") as settings:
        p = Pipeline(settings)
        p.start_worker()
        await p.start_gateway()
        try:
            victim, other = drivers_on_two_partitions(settings.partitions)
            stopped_partition = partition_for(victim, settings.partitions)
            async with Subscriber(p.url, p.token()) as client, aiohttp.ClientSession(headers=p.headers()) as http:
                for d in (victim, other):
                    await client.subscribe(f"driver:{d}")
                async with http.post(f"{p.url}/v1/locations", json=ping(victim, 1)) as resp:
                    assert resp.status == 202  # the record of the bug
                await _health(settings)
                deadline = time.monotonic() + 20
                while (await worker_json(settings, "/healthz"))[0] != 503:
                    assert time.monotonic() < deadline, "the worker never reported the stopped partition"
                    await asyncio.sleep(0.2)
                for seq in (1, 2):  # the other partition goes on
                    async with http.post(f"{p.url}/v1/locations", json=ping(other, seq)) as resp:
                        assert resp.status == 202
                async with http.post(f"{p.url}/v1/locations", json=ping(victim, 2)) as resp:
                    assert resp.status == 202  # accepted into Kafka, never processed while stopped
                got = [await client.next() for _ in range(2)]
                assert [(u["channel"], u["seq"]) for u in got] == [(f"driver:{other}", 1), (f"driver:{other}", 2)]
                await asyncio.sleep(1.0)
                assert client.updates.empty()  # nothing of the stopped partition
            status, health = await worker_json(settings, "/healthz")
            assert status == 503 and health["ready"] is False
            [stopped] = health["stopped"]
            assert (stopped["agent"], stopped["topic"], stopped["partition"]) == ("drivers", "locations",
                                                                                stopped_partition)
            assert "KeyError" in stopped["error"] and stopped["offset"] >= 0
            metrics = (await worker_json(settings, "/metrics"))[1]
            assert (f'livetrack_partition_stopped{{agent="drivers",partition="{stopped_partition}",topic="locations"}} '
                    "1.0") in metrics
            assert 'livetrack_dead_letters_total{agent="drivers"}' not in metrics
            assert sum(end_offsets(settings, "locations-dlq").values()) == 0  # a bug is not bad input
            log = p.worker.output().decode() if p.worker is not None else ""
            assert f"stopped partition locations[{stopped_partition}] at offset" in log and "KeyError" in log
        finally:
            p.stop()


async def _health(settings: Settings) -> tuple[int, Any]:
    for _ in range(50):
        try:
            return await worker_json(settings, "/healthz")
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
    raise AssertionError("the worker's web server never answered")


@pytest.mark.parametrize("fault", ["drivers:acked0:2", "rides:acked0:1", "rides:acked1:1"])
async def test_a_worker_killed_after_a_commit_step_resumes_to_the_same_pushes(tmp_path: Path, fault: str) -> None:
    """SIGKILL right after a commit step; restarted without the fault, the worker replays to the same
    pushes: every driver channel seq once and in order, the offer delivered, the ride offered (offers
    live 30 s here: longer than a restart, which an offer must outlive to be seen)."""
    with own_broker(tmp_path, fault_at=fault) as settings:
        p = Pipeline(settings)
        p.start_worker()
        await p.start_gateway()
        try:
            d = f"k-{uuid.uuid4().hex[:6]}"
            async with Subscriber(p.url, p.token()) as client, aiohttp.ClientSession(headers=p.headers()) as http:
                await client.subscribe(f"driver:{d}")
                now = int(time.time() * 1000)
                updates: list[dict[str, Any]] = []
                for seq in (1, 2):  # one commit each: the first pushed before the second is posted
                    async with http.post(f"{p.url}/v1/locations",
                                         json=ping(d, seq, step_m=20, ts=now - 3_000 + seq * 1_000)) as resp:
                        assert resp.status == 202
                    if seq == 1:
                        updates.append(await client.next())
                        await _in_its_cell(settings, d)  # a candidate: the kill is this test's only fault
                if fault.startswith("drivers"):
                    assert _wait_dead(p, 30), "the fault never fired"
                    p.start_worker()
                body = {"pickup": {"lat": 37.7749, "lng": -122.4194}, "destination": {"lat": 37.79, "lng": -122.40},
                        "rider_id": "u-kill"}
                async with http.post(f"{p.url}/v1/rides", json=body) as resp:
                    assert resp.status in (201, 202)
                    ride = (await resp.json())["ride_id"]
                if fault.startswith("rides"):
                    assert _wait_dead(p, 30), "the fault never fired"
                    p.start_worker()
                deadline = time.monotonic() + 30
                while not any(u["type"] == "offer" for u in updates):
                    try:
                        updates.append(await client.next(timeout_s=max(0.1, deadline - time.monotonic())))
                    except asyncio.TimeoutError:
                        async with http.get(f"{p.url}/v1/rides/{ride}") as resp:
                            state = await resp.json()
                        raise AssertionError(f"no offer reached driver:{d}: {updates}; the ride: {state}") from None
                while True:  # the gateway's view of `rides` follows
                    async with http.get(f"{p.url}/v1/rides/{ride}") as resp:
                        if (await resp.json()).get("state") == "OFFERED":
                            break
                    assert time.monotonic() < deadline, "the ride was never OFFERED"
                    await asyncio.sleep(0.1)
            seqs = [u["seq"] for u in updates]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"driver:{d} seqs {seqs}"  # none lost, none twice
            offer = next(u for u in updates if u["type"] == "offer")
            assert offer["data"]["ride_id"] == ride
        finally:
            p.stop()


async def _in_its_cell(settings: Settings, driver: str) -> None:
    """Wait until the cells agent has the driver in `cell_to_drivers` (its changelog says so)."""
    changelog = f"{settings.app_id}-cell_to_drivers-changelog"
    deadline = time.monotonic() + 20
    while not any(driver.encode() in (m.value() or b"") for m in read_topic(settings, changelog)):
        assert time.monotonic() < deadline, f"{driver} never reached cell_to_drivers"
        await asyncio.sleep(0.2)


def _wait_dead(p: Pipeline, timeout_s: float) -> bool:
    """Wait for the fault to kill the worker; the next one starts without it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if p.worker is not None and not p.worker.alive():
            p.worker = None
            p.settings = p.settings.model_copy(update={"fault_at": ""})
            return True
        time.sleep(0.1)
    return False
