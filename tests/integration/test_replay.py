"""Replay into a shadow on a broker of the module's own: a recorded stream through the live worker,
then shadows that diff equal, name a hand-made difference, rebuild only a time range, survive SIGKILL,
leave the live push topic alone and show a policy override in `push`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from confluent_kafka import Producer

from agents.ops.diff import read_table
from agents.ops.replay import lag_of
from infra.broker import kafka_running
from infra.processes import env_for
from infra.settings import Settings
from schemas import records
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from tests.conftest import _free_port
from tests.integration.fixtures import Pipeline, end_offsets, read_topic
from tests.integration.replay_stream import ROOT, faust_cli, produce_pings, produce_ride, stream_pings

pytestmark = pytest.mark.integration

DRIVERS_A = [f"ra-{i}" for i in range(6)]
DRIVERS_B = [f"rb-{i}" for i in range(6)]


class Live:
    """The module's live worker, its settings and the record times of the stream's two halves."""

    def __init__(self, settings: Settings, pipeline: Pipeline, first_ms: int, second_ms: int) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.first_ms = first_ms
        self.second_ms = second_ms


def _drained(settings: Settings, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    calm = 0
    while calm < 2:
        assert time.monotonic() < deadline, "the live worker did not drain the stream"
        time.sleep(1.0)
        lag, _ = lag_of(settings, settings.app_id, "")
        calm = calm + 1 if lag == 0 else 0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not Settings().embedded_kafka:
        pytest.skip("needs its own embedded broker (LIVETRACK_KAFKA_BOOTSTRAP names a shared cluster)")
    settings = Settings(
        kafka_port=_free_port(pairs=True), state_dir=Path(tmp_path_factory.mktemp("replay")), partitions=4,
        app_id=f"rp-{uuid.uuid4().hex[:6]}", gateway_port=_free_port(), worker_web_port=_free_port(),
    )
    with kafka_running(settings):
        p = Pipeline(settings)
        p.start_worker()
        try:
            first = int(time.time() * 1000)
            produce_pings(settings, stream_pings(DRIVERS_A, 8))
            produce_ride(settings, "ride-r1", ["REQUEST", "CANCEL"])
            time.sleep(1.0)
            second = int(time.time() * 1000)  # every record of the second half is stamped after this
            produce_pings(settings, stream_pings(DRIVERS_B, 8))
            _drained(settings)
            yield Live(settings, p, first, second)
        finally:
            p.stop()


def test_a_replay_of_everything_diffs_equal_and_leaves_live_push_alone(live: Live) -> None:
    push_before = end_offsets(live.settings, "push")
    ran = faust_cli(live.settings, "replay", "full", "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["status"] == "done"
    assert end_offsets(live.settings, "push") == push_before  # nothing of the replay reached live push
    diff = faust_cli(live.settings, "diff", "full", "--json", "--topic", "push", "--match", "driver:*",
                     "--report", str(live.settings.state_dir / "full-diff.json"))
    report = diff.json()
    assert diff.code == 0, diff.out[-3000:] + json.dumps({t: {k: v for k, v in r.items() if k != "samples"} for t, r in report["tables"].items()})
    # (cell_to_features holds closed windows: none closes within this short stream; diffed equal in the bench.)
    for table in ("driver_to_state", "cell_to_drivers", "ride_to_state", "cell_to_activity", "partition_to_watermark"):
        assert report["tables"][table]["equal"] > 0, table
    assert report["topics"]["push"]["equal"] > 0


def test_a_hand_altered_driver_is_the_one_difference_named(live: Live) -> None:
    changelog = f"{live.settings.app_id}-driver_to_state-changelog"
    driver = DRIVERS_A[2]
    original = read_table(live.settings.bootstrap, changelog, 30)[driver]
    codec = codec_for(records.DriverState)
    altered = {**codec.loads(original), "lat": 1.5}
    partition = partition_for(driver, live.settings.partitions)
    _write(live.settings, changelog, driver, codec.dumps(altered), partition)
    try:
        diff = faust_cli(live.settings, "diff", "full", "--table", "driver_to_state", "--json")
        assert diff.code == 1, diff.err
        table = diff.json()["tables"]["driver_to_state"]
        assert (table["different"], table["only_left"], table["only_right"]) == (1, 0, 0)
        [sample] = table["samples"]
        assert sample["key"] == driver and list(sample["fields"]) == ["lat"]
        assert sample["fields"]["lat"][0] == 1.5
    finally:
        _write(live.settings, changelog, driver, original, partition)


def _write(settings: Settings, topic: str, key: str, value: bytes, partition: int) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    producer.produce(topic, value, key.encode(), partition=partition)
    assert producer.flush(10) == 0


def test_a_time_range_rebuilds_only_that_range(live: Live) -> None:
    ran = faust_cli(live.settings, "replay", "later", "--topic", "locations", "--from-ts", str(live.second_ms),
                    "--json")
    assert ran.code == 0, ran.err
    shadow = ran.json()
    drivers = read_table(live.settings.bootstrap, f"{shadow['app_id']}-driver_to_state-changelog", 30)
    assert sorted(drivers) == sorted(DRIVERS_B)


def test_a_replay_killed_midway_and_run_again_ends_equal(live: Live) -> None:
    env = {**env_for(live.settings), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "faust", "-A", "agents.worker", "replay", "killed", "--json"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = live.settings.state_dir / "shadows" / "killed.json"
    changelog = f"{live.settings.app_id}-shadow-killed-driver_to_state-changelog"
    deadline = time.monotonic() + 150
    shown: dict[str, Any] = {}
    while not (shown.get("worker_pid") and shown.get("copied") and end_offsets_or_none(live.settings, changelog)):
        assert time.monotonic() < deadline and proc.poll() is None, "the replay never got going"
        time.sleep(0.1)
        shown = json.loads(manifest.read_text()) if manifest.exists() else {}
    os.kill(shown["worker_pid"], signal.SIGKILL)
    proc.kill()
    proc.wait(10)
    assert json.loads(manifest.read_text())["status"] == "replaying"
    again = faust_cli(live.settings, "replay", "killed", "--json")
    assert again.code == 0, again.err
    diff = faust_cli(live.settings, "diff", "killed", "--json")
    assert diff.code == 0, json.dumps(diff.json(), indent=1)[:3000]


def end_offsets_or_none(settings: Settings, topic: str) -> int:
    try:
        return sum(end_offsets(settings, topic).values())
    except Exception:  # not created yet
        return 0


def test_a_push_distance_override_shows_in_the_push_diff(live: Live) -> None:
    ran = faust_cli(live.settings, "replay", "far", "--set", "push_min_distance_m=250", "--json")
    assert ran.code == 0, ran.err
    diff = faust_cli(live.settings, "diff", "far", "--table", "driver_to_state", "--topic", "push",
                     "--match", "driver:*", "--json")
    assert diff.code == 1
    push = diff.json()["topics"]["push"]
    assert push["only_left"] > 0 and push["only_right"] == 0  # fewer moves pushed in the shadow
    drop = faust_cli(live.settings, "drop", "far", "--json")
    assert drop.code == 0, drop.err
    assert not (live.settings.state_dir / "shadows" / "far.json").exists()


def _letter(settings: Settings, driver: str, lat: float, reason: str) -> None:
    now = int(time.time() * 1000)
    ping = {"driver_id": driver, "seq": 1, "lat": lat, "lng": -122.4, "fix_ts": now, "received_ts": now,
            "accuracy": None, "speed": 5.0, "bearing": None}
    letter = {"topic": "locations", "partition": partition_for(driver, settings.partitions), "offset": 7,
              "reason": reason, "key": None, "value": codec_for(records.LocationEvent).dumps(ping), "ts": now}
    _write(settings, "locations-dlq", driver, codec_for(records.DeadLetter).dumps(letter), 0)


def test_dlq_redrive_re_enters_a_transient_letter_once_and_keeps_the_invalid_one(live: Live) -> None:
    _letter(live.settings, "redrive-ok", 37.77, "produce failed: broker unavailable (transient)")
    _letter(live.settings, "redrive-bad", 999.0, "lat must be at most 90")
    listed = faust_cli(live.settings, "dlq", "list", "--json")
    assert listed.code == 0, listed.err
    assert {r["dlq"]: r["pending"] for r in listed.json()}["locations-dlq"] == 2
    first = faust_cli(live.settings, "dlq", "redrive", "locations-dlq", "--json").json()
    assert [r["source"] for r in first["redriven"]] == [f"locations:{partition_for('redrive-ok', 4)}:7"]
    [refused] = first["refused"]
    assert "lat" in refused["reason"]
    second = faust_cli(live.settings, "dlq", "redrive", "locations-dlq", "--json").json()
    assert second["redriven"] == [] and len(second["refused"]) == 1  # still there, with its reason
    shown = faust_cli(live.settings, "dlq", "show", "locations-dlq", "--pending", "--json").json()
    assert [s["reason"].startswith("redrive refused: ") for s in shown] == [True]
    deadline = time.monotonic() + 30
    while True:  # the redriven ping reached the live worker, once
        found = faust_cli(live.settings, "tables", "driver_to_state", "redrive-ok", "--json")
        if found.code == 0:
            break
        assert time.monotonic() < deadline, found.out + found.err
    assert found.json()["value"]["seq"] == 1
    redriven = [m for m in read_topic(live.settings, "locations")
                if any(k == "livetrack-redriven-from" for k, _ in (m.headers() or []))]
    assert len(redriven) == 1


def test_operator_commands_answer_in_json_and_text(live: Live) -> None:
    lag = faust_cli(live.settings, "lag", "--json")
    assert lag.code == 0 and {r["group"] for r in lag.json()} == {live.settings.app_id,
                                                                 f"{live.settings.app_id}-feed"}
    tables = faust_cli(live.settings, "tables")
    assert tables.code == 0 and "driver_to_state" in tables.out and "changelog" in tables.out
    tail = faust_cli(live.settings, "tail", "locations", "-n", "1", "--json")
    rows = [json.loads(line) for line in tail.out.splitlines()]
    assert tail.code == 0 and rows and all("events" in r["value"] for r in rows)
    assert faust_cli(live.settings, "tail", "no-such-topic").code == 2


def test_a_promoted_shadow_goes_on_from_where_its_replay_stopped(live: Live) -> None:
    """Last in the module: the live worker is stopped and a worker under the shadow's app id takes over."""
    ran = faust_cli(live.settings, "replay", "next", "--json")
    assert ran.code == 0, ran.err
    live.pipeline.stop_worker()
    promoted = faust_cli(live.settings, "promote", "next", "--json")
    assert promoted.code == 0, promoted.err
    app_id = promoted.json()["app_id"]
    live.pipeline.settings = live.settings.model_copy(update={"app_id": app_id})
    before = end_offsets(live.settings, "push")
    live.pipeline.start_worker()
    produce_pings(live.settings, stream_pings(["after-promote"], 2))
    _drained(live.pipeline.settings)
    states = read_table(live.settings.bootstrap, f"{app_id}-driver_to_state-changelog", 30)
    assert {*DRIVERS_A, *DRIVERS_B, "after-promote"} <= set(states)
    pushed = [m.key().decode() for m in read_topic(live.settings, "push", since=before)]
    # Driver pushes of the new pings only: nothing of the replayed range decided again.
    assert sorted(c for c in pushed if c.startswith("driver:")) == ["driver:after-promote"] * 2, pushed
