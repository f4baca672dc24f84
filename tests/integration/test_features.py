"""Features on the real broker: a recorded stream through the worker equals the plain-Python reference.

These tests run their own brokers: the watermark is per partition, so the other
tests' pings (other places, other times) would make these events late, and a
new worker group first replays whatever earlier runs left in the topics.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fastavro
import h3
from confluent_kafka import Consumer, TopicPartition
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

from agents.feed import group_id
from infra.broker import kafka_running
from infra.processes import scrape
from infra.producer import AsyncProducer
from infra.settings import Settings
from schemas.avro import AVSC_DIR, codec_for
from schemas.partitioning import partition_for
from schemas.records import CellFeatures, LocationBatch, RideEvent
from schemas.topics import CELL_FEATURES, LOCATIONS, RIDES
from tests.conftest import _free_port
from tests.integration.features_reference import Ping, Request, Stream, recorded_stream, reference
from tests.integration.fixtures import Pipeline, Subscriber, read_topic
from tests.integration.test_page import CHROMIUM, FLAGS

pytestmark = pytest.mark.integration

GRACE_MS = 300_000  # > (LEAD_SLICES + 2) * SLICE_MS: the feeder's lead never makes an event late
SLICE_MS = 30_000
LEAD_SLICES = 6  # the feeder waits for the worker to consume all but this many slices
PACE_S = 0.3
MINUTES = 12
Key = tuple[str, str, int, int]
VALUES = ("supply", "demand", "smoothed_supply", "smoothed_demand", "surge", "speed_mps", "speed_source",
          "speed_segments")


@contextmanager
def _own_broker(state_dir: Path) -> Iterator[Settings]:
    if not Settings().embedded_kafka:
        pytest.skip("needs its own embedded broker (LIVETRACK_KAFKA_BOOTSTRAP names a shared cluster)")
    settings = Settings(
        kafka_port=_free_port(pairs=True), state_dir=state_dir, partitions=4, app_id="features",
        gateway_port=_free_port(), worker_web_port=_free_port(), features_grace_ms=GRACE_MS,
    )
    with kafka_running(settings):
        yield settings


@pytest.fixture(scope="module")
def features_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of this module's own embedded broker (the reference run, then the .avsc reader)."""
    with _own_broker(Path(tmp_path_factory.mktemp("features"))) as settings:
        yield settings


@pytest.fixture
def fresh_settings(tmp_path: Path) -> Iterator[Settings]:
    """A broker of the test's own: a new worker group would first replay what others left in the topics."""
    with _own_broker(tmp_path / "state") as settings:
        yield settings


def _base_ts(hours_ago: int) -> int:
    now = int(time.time() * 1000)
    return now - hours_ago * 3_600_000 - now % 480_000


def _ride(r: Request, event: str) -> dict[str, Any]:
    return {
        "ride_id": r.ride, "version": 1 if event == "REQUESTED" else 2, "event": event, "state": event, "ts": r.ts,
        "actor": "rider" if event == "REQUESTED" else "system", "rider_id": "u-" + r.ride, "product": "standard",
        "pickup_lat": r.lat, "pickup_lng": r.lng, "dest_lat": r.lat + 0.01, "dest_lng": r.lng,
        "pickup_cell": h3.latlng_to_cell(r.lat, r.lng, 9), "driver_id": None, "fare_estimate": None,
        "pickup_eta_s": None, "reason": None,
    }


def _event(p: Ping) -> dict[str, Any]:
    return {"driver_id": p.driver, "seq": p.seq, "lat": p.lat, "lng": p.lng, "fix_ts": p.ts, "received_ts": p.ts,
            "accuracy": None, "speed": None, "bearing": None}


class Feeder:
    """Produces a stream as the gateway and dispatch would: LocationBatch per driver partition, RideEvents.

    It never runs more than LEAD_SLICES ahead of what the worker has consumed (its committed offsets on
    `locations` and `rides`), so the pings' and the requests' paths stay within the grace of each other
    however slow a loaded machine makes the worker.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AsyncProducer(settings.bootstrap)
        self.marks: list[dict[tuple[str, int], int]] = []  # per slice: the last offset produced so far
        # Pings are committed by the worker's feed, ride events by Faust (agents.feed.group_id).
        self.probes = {topic: Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group,
                                        "enable.auto.commit": False})
                       for topic, group in ((LOCATIONS.name, group_id(settings.app_id)), (RIDES.name, settings.app_id))}

    async def __aenter__(self) -> "Feeder":
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.close()
        for probe in self.probes.values():
            probe.close()

    async def send(self, pings: list[Ping], requests: list[Request] = (), others: list[Request] = ()) -> None:  # type: ignore[assignment]
        group = self.producer.group()
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for p in pings:
            by_partition.setdefault(partition_for(p.driver, self.settings.partitions), []).append(_event(p))
        for partition, events in by_partition.items():
            self.producer.send(group, LOCATIONS.name, codec_for(LocationBatch).dumps({"events": events}),
                               partition=partition)
        for r, event in [(r, "REQUESTED") for r in requests] + [(r, "OFFERED") for r in others]:
            self.producer.send(group, RIDES.name, codec_for(RideEvent).dumps(_ride(r, event)), key=r.ride.encode())
        await group.wait()
        self.marks.append({**(self.marks[-1] if self.marks else {}), **group.offsets})

    def _consumed(self, mark: dict[tuple[str, int], int]) -> bool:
        committed = []
        for topic, probe in self.probes.items():
            tps = [TopicPartition(t, p) for t, p in mark if t == topic]
            if tps:
                committed += probe.committed(tps, timeout=10)
        return all(tp.offset > mark[(tp.topic, tp.partition)] for tp in committed)

    async def stream(self, stream: Stream, base_ts: int, *, after_slice: Any = None, minutes: int = MINUTES) -> None:
        """The stream slice by slice (30 s of event time each), in event-time order, at most LEAD_SLICES
        ahead of the worker."""
        for k in range(minutes * 60_000 // SLICE_MS):
            if k > LEAD_SLICES:
                await self.settle(self.marks[k - LEAD_SLICES - 1])
            lo, hi = base_ts + k * SLICE_MS, base_ts + (k + 1) * SLICE_MS
            await self.send([p for p in stream.pings if lo <= p.ts < hi],
                            [r for r in stream.requests if lo <= r.ts < hi],
                            [r for r in stream.others if lo <= r.ts + 2_000 < hi])
            if after_slice is not None:
                await after_slice(k)
            await asyncio.sleep(PACE_S)

    async def settle(self, mark: dict[tuple[str, int], int] | None = None, timeout_s: float = 180) -> None:
        """Wait until the worker has consumed up to `mark` (default: all that was sent), by its committed offsets."""
        mark = self.marks[-1] if mark is None else mark
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self._consumed, mark):
            assert time.monotonic() < deadline, f"the worker did not consume the stream in {timeout_s} s"
            await asyncio.sleep(0.2)

    async def clock(self, prefix: str, ts: int) -> None:
        """A ping per partition far away at `ts`: every partition's event time passes the stream's windows.

        Sent only once the whole stream is consumed: pings and requests take separate agents to
        `cell-activity`, so a request still on its way would land behind the clock there and be late
        (rightly: counted as late, in no window), which the reference does not model.
        """
        await self.settle()
        pings = []
        for partition in range(self.settings.partitions):
            lat = next(-40.0 - i * 0.01 for i in range(1000)
                       if partition_for(h3.latlng_to_cell(-40.0 - i * 0.01, 100.0, 9), self.settings.partitions)
                       == partition)
            pings.append(Ping(f"{prefix}-clock-{partition}", 1, ts, lat, 100.0))
        await self.send(pings)


def emitted(settings: Settings, lo_ts: int, hi_ts: int) -> dict[Key, list[dict[str, Any]]]:
    """Final features on `cell-features` for windows ending in (lo_ts, hi_ts], every copy of each."""
    out: dict[Key, list[dict[str, Any]]] = {}
    for m in read_topic(settings, CELL_FEATURES.name, timeout_s=30):
        f = codec_for(CellFeatures).loads(m.value())
        if f["final"] and lo_ts < f["end_ts"] <= hi_ts:
            out.setdefault((f["cell"], f["kind"], f["size_s"], f["start_ts"]), []).append(f)
    return out


async def wait_for(settings: Settings, expected: dict[Key, Any], lo_ts: int, hi_ts: int,
                   timeout_s: float = 120) -> dict[Key, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await asyncio.to_thread(emitted, settings, lo_ts, hi_ts)
        if set(expected) <= set(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(1.0)


def assert_equal_to_reference(got: dict[Key, list[dict[str, Any]]], expected: dict[Key, dict[str, Any]]) -> None:
    # A stream that exercises everything: many windows, surge above the floor, every speed source.
    assert len(expected) > 5000 and any(f["surge"] > 1.2 for f in expected.values())
    assert {f["speed_source"] for f in expected.values()} == {"CELL", "DEFAULT"}
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    assert not missing and not extra, f"{len(missing)} windows missing, e.g. {sorted(missing)[:3]}; " \
                                      f"{len(extra)} unexpected, e.g. {sorted(extra)[:3]}"
    for key, copies in got.items():
        first = {k: v for k, v in copies[0].items() if k != "emitted_ts"}
        for c in copies[1:]:
            diff = {k: (first[k], v) for k, v in c.items() if k != "emitted_ts" and v != first[k]}
            assert not diff, f"{key}: re-emitted with other values {diff}, reference {expected[key]}"
        want = expected[key]
        exact = {k: first[k] for k in ("supply", "demand", "speed_source", "speed_segments")}
        assert exact == {k: want[k] for k in exact}, f"{key}: {exact} != reference"
        for k in ("smoothed_supply", "smoothed_demand", "surge", "speed_mps"):
            assert first[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), f"{key} {k}: {first[k]} != {want[k]}"


def worker_metrics(settings: Settings) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in scrape(f"http://127.0.0.1:{settings.worker_web_port}/metrics") for s in family.samples}


def outcome_total(metrics: dict[tuple[str, tuple], float], outcome: str) -> float:
    return sum(v for (name, labels), v in metrics.items()
               if name == "livetrack_features_events_total" and ("outcome", outcome) in labels)


def busiest_cell(expected: dict[Key, dict[str, Any]]) -> str:
    totals: dict[str, int] = {}
    for (cell, kind, size, _), f in expected.items():
        if (kind, size) == ("HOPPING", 120):
            totals[cell] = totals.get(cell, 0) + f["supply"] + f["demand"]
    return max(totals, key=lambda c: totals[c])


async def test_features_equal_the_reference_and_stream_on_the_cell_channel(features_settings: Settings) -> None:
    settings = features_settings.model_copy(update={"app_id": f"features-{uuid.uuid4().hex[:6]}"})
    base = _base_ts(hours_ago=6)
    stream = recorded_stream(base, "a", seed=5)
    expected = reference(stream)
    cell = busiest_cell(expected)
    pipeline = Pipeline(settings)
    pipeline.start_worker()
    await pipeline.start_gateway()
    try:
        async with Subscriber(pipeline.url, pipeline.token("ops")) as client, Feeder(settings) as feeder:
            ack = await client.subscribe(f"cell:{cell}")
            assert ack["ok"] is True
            async with Subscriber(pipeline.url, pipeline.token("driver", "a-d00")) as driver:
                assert (await driver.subscribe(f"cell:{cell}"))["ok"] is False  # an ops channel
            await feeder.stream(stream, base)
            await feeder.clock("a", base + 45 * 60_000)
            got = await wait_for(settings, expected, base - 480_000, base + 30 * 60_000)
            pushed = await _updates(client, f"cell:{cell}", 10)
            metrics = worker_metrics(settings)
    finally:
        pipeline.stop()
    assert_equal_to_reference(got, expected)
    assert outcome_total(metrics, "late") == 0 and outcome_total(metrics, "future") == 0
    assert outcome_total(metrics, "duplicate") > 0  # the retried requests
    primary = sorted((f for f in (c[0] for c in got.values()) if f["cell"] == cell and f["kind"] == "HOPPING"
                      and f["size_s"] == 120), key=lambda f: f["end_ts"])
    assert [u["seq"] for u in pushed] == list(range(1, len(primary) + 1))
    assert [(u["data"]["end_ts"], u["data"]["surge"], u["data"]["supply"]) for u in pushed] == [
        (f["end_ts"], f["surge"], f["supply"]) for f in primary]
    assert pushed[0]["type"] == "cell.features" and len(pushed[0]["data"]["boundary"]) == 6


async def _updates(client: Subscriber, channel: str, quiet_s: float) -> list[dict[str, Any]]:
    """Updates of `channel` until none came for `quiet_s`."""
    out = []
    try:
        while True:
            update = await client.next(quiet_s)
            if update["channel"] == channel:
                out.append(update)
    except asyncio.TimeoutError:
        return out


async def test_features_survive_sigkills_midway_and_during_the_closing_burst(fresh_settings: Settings) -> None:
    settings = fresh_settings
    base = _base_ts(hours_ago=3)
    stream = recorded_stream(base, "b", seed=11)
    expected = reference(stream)
    pipeline = Pipeline(settings)
    pipeline.start_worker()
    slices = MINUTES * 60_000 // SLICE_MS

    async def kill_midway(k: int) -> None:
        if k == slices // 2:
            await asyncio.sleep(0.05)  # the worker is busy with this slice
            pipeline.stop_worker(signal.SIGKILL)
            pipeline.start_worker()

    try:
        async with Feeder(settings) as feeder:
            await feeder.stream(stream, base, after_slice=kill_midway)
            await feeder.clock("b", base + 45 * 60_000)
            await asyncio.sleep(0.1)  # closing hundreds of windows now
            pipeline.stop_worker(signal.SIGKILL)
            pipeline.start_worker()
            got = await wait_for(settings, expected, base - 480_000, base + 30 * 60_000)
            assert pipeline.worker is not None
            log = pipeline.worker.log.read_bytes()  # every run of the worker
    finally:
        pipeline.stop()
    assert b"resumes at event time" in log  # a restarted worker took panes and watermark from RocksDB
    assert_equal_to_reference(got, expected)  # windows re-emitted after a kill must carry the same values


def test_cell_features_read_with_the_avsc_and_fastavro_only(features_settings: Settings, tmp_path: Path) -> None:
    """The example analytics consumer (confluent-kafka + fastavro + the .avsc, no livetrack code) gets
    every record; fastavro alone decodes them the same way."""
    out = tmp_path / "features.csv"
    run = subprocess.run(
        [sys.executable, "-m", "analytics.features_csv", "--bootstrap", features_settings.bootstrap, "--out",
         str(out), "--schema", str(AVSC_DIR / "CellFeatures.avsc"), "--idle-exit-s", "3"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    messages = read_topic(features_settings, CELL_FEATURES.name, timeout_s=30)
    assert messages, "the tests above emitted features"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(messages) and f"{len(rows)} rows written" in run.stdout
    schema = fastavro.parse_schema(json.loads((AVSC_DIR / "CellFeatures.avsc").read_text()))
    decoded = {(m.partition(), m.offset()): fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema, None)
               for m in messages}
    for row in rows:
        record = decoded[(int(row["partition"]), int(row["offset"]))]
        assert row["cell"] == record["cell"] and int(row["supply"]) == record["supply"]  # type: ignore[index]
        assert float(row["surge"]) == pytest.approx(record["surge"])  # type: ignore[index]
        assert int(row["log_append_ms"]) >= record["emitted_ts"]  # type: ignore[index]


@pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium; run it through make")
async def test_page_supply_layer_draws_the_cells_drivers_are_in(fresh_settings: Settings) -> None:
    base = _base_ts(hours_ago=2)
    stream = recorded_stream(base, "c", seed=3, minutes=4, drivers=6, rides=20)
    pipeline = Pipeline(fresh_settings)
    pipeline.start_worker()
    await pipeline.start_gateway()
    try:
        async with async_playwright() as pw, Feeder(fresh_settings) as feeder:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            await page.goto(f"{pipeline.url}/#token={pipeline.token()}")
            await page.wait_for_selector("#conn[data-state=live]", timeout=20_000)
            # Switch the layer on (Leaflet redraws the control on click, so no check() of the box).
            await page.click(".leaflet-control-layers-overlays input")
            await page.wait_for_function("window.livetrackSupply?.on === true", timeout=10_000)
            await feeder.stream(stream, base, minutes=4)
            await feeder.clock("c", base + 45 * 60_000)
            windows = await wait_for(fresh_settings, reference(stream), base - 480_000, base + 30 * 60_000)
            cells = {h3.latlng_to_cell(p.lat, p.lng, 9) for p in stream.pings}
            # Each cell the page saw a driver in (from `fleet`; a slow page may get a driver's moves coalesced)
            # is subscribed and drawn from its channel's last update: one per primary window.
            want = {c: sum(1 for (w, kind, size, _) in windows if (w, kind, size) == (c, "HOPPING", 120)) for c in cells}
            drawn = "want => Object.entries(want).every(([c, n]) => !window.livetrackSupply.cells.has(c) ||" \
                    " (window.livetrackSupply.cells.get(c).seq === n && window.livetrackSupply.cells.get(c).polygon))"
            try:
                await page.wait_for_function(drawn, arg=want, timeout=60_000)
            except PlaywrightTimeout:
                pass  # said below, with the seqs
            seqs = await page.evaluate("Object.fromEntries([...window.livetrackSupply.cells].map(([c, v]) => [c, v.seq]))")
            await page.evaluate("window.livetrack.map.setView([48.8566, 2.3522], 15)")
            await page.screenshot(path=str(fresh_settings.state_dir / "page-supply.png"))
            await browser.close()
    finally:
        pipeline.stop()
    shown = {c: seq for c, seq in seqs.items() if c in cells}  # (the others: the clock pings' cells)
    assert shown == {c: want[c] for c in shown}, f"page seqs {shown} != {want}"
    assert len(shown) >= 0.8 * len(cells) and len(shown) >= 3
