"""A rolling upgrade on the real broker: the next version adds a field to DriverState and to Ride, and
the worker restarts on the same RocksDB and changelogs with every driver and ride intact.

Version N is this checkout. Version N+1 is a copy of it whose `schemas/records.py` declares one
more field (with a default) in each record, exported as a release would (`livetrack schemas
export`: a new version in `schemas/avsc/history`). A worker of N builds live state; it stops; a
worker of N+1 starts on the same state directory and app id: what it holds (read straight from its
RocksDB stores with N+1's codecs) is what N held, plus the new fields at their defaults; and it goes
on from there (a driver's pushes continue its seq; the accepted ride completes).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from infra.processes import WORKER_READY, spawn, worker_args
from tests.integration.fixtures import Pipeline, Subscriber, ping
from tests.integration.test_runtime import own_broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DRIVER_FIELD = "    battery_pct: Optional[float] = FloatField(required=False, default=None)\n"
RIDE_FIELD = "    promo_code: Optional[str] = StringField(required=False, default=None)\n"
READ_STORES = """
import json, sys
from pathlib import Path
from rocksdict import AccessType, Options, Rdict
from schemas.avro import codec_for
from schemas import records
out = {}
for table, record in (("driver_to_state", records.DriverState), ("ride_to_state", records.Ride)):
    for path in sorted(Path(sys.argv[1]).rglob(f"{table}-*.db")):
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        for key, value in db.items():
            if key != b"__faust\\x00offset__":
                out.setdefault(table, {})[key.decode()] = codec_for(record).loads(value)
        db.close()
print(json.dumps(out, default=repr, sort_keys=True))
"""


def next_version(dest: Path) -> Path:
    """A copy of this checkout's files with a field added to DriverState and to Ride, exported."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for name in files.split():
        if name.startswith(("tests/", "docs/")) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    records = dest / "schemas" / "records.py"
    text = records.read_text()
    anchor = "    offer_seq: int = IntegerField(min_value=0, required=False, default=0)\n"
    assert text.count(anchor) == 1
    text = text.replace(anchor, anchor + DRIVER_FIELD)
    ride_end = "    applied_offset: int = IntegerField(required=False, default=-1)\n    outbox: List[Outgoing] = []\n"
    assert text.count(ride_end) == 1
    records.write_text(text.replace(ride_end, ride_end + RIDE_FIELD))
    subprocess.run([sys.executable, "-m", "infra.cli", "schemas", "export"], cwd=dest, check=True,
                   env={"PYTHONPATH": str(dest), "PATH": "/usr/bin:/bin"}, capture_output=True)
    return dest


def stores(tree: Path, datadir: Path) -> dict[str, dict[str, Any]]:
    """driver_to_state and ride_to_state as `tree`'s code reads them from the RocksDB files."""
    out = subprocess.run([sys.executable, "-c", READ_STORES, str(datadir)], cwd=tree, check=True,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def test_a_worker_upgraded_to_records_with_new_fields_keeps_every_driver_and_ride(tmp_path: Path) -> None:
    n1 = next_version(tmp_path / "n1")
    history = {p.name for p in (n1 / "schemas" / "avsc" / "history" / "DriverState").iterdir()}
    assert len(history) == len({p.name for p in (ROOT / "schemas/avsc/history/DriverState").iterdir()}) + 1
    with own_broker(tmp_path / "state") as settings:
        p = Pipeline(settings)
        p.start_worker()
        await p.start_gateway()
        try:
            drivers = [f"u-{uuid.uuid4().hex[:6]}" for _ in range(5)]
            now = int(time.time() * 1000)
            async with Subscriber(p.url, p.token()) as client, aiohttp.ClientSession(headers=p.headers()) as http:
                for d in drivers:
                    await client.subscribe(f"driver:{d}")
                for seq in (1, 2):
                    async with http.post(f"{p.url}/v1/locations", json=[
                            ping(d, seq, step_m=20, ts=now - 5_000 + seq * 1_000) for d in drivers]) as resp:
                        assert resp.status == 202
                for _ in range(2 * len(drivers)):
                    await client.next()
                ride, driver = await _accepted_ride(p, http)
                datadir = settings.state_dir / "worker"
                p.stop_worker()
                before = stores(ROOT, datadir)
                assert set(before["driver_to_state"]) >= set(drivers) and ride in before["ride_to_state"]

                # Version N+1 on the same state: recovered, then stopped before any new input.
                p.worker = spawn(worker_args(), settings, "worker-n1", tree=n1)
                p.worker.wait_for_output(WORKER_READY, 90)
                p.stop_worker()
                after = stores(n1, datadir)
                assert after == {
                    "driver_to_state": {k: {**v, "battery_pct": None} for k, v in before["driver_to_state"].items()},
                    "ride_to_state": {k: {**v, "promo_code": None} for k, v in before["ride_to_state"].items()},
                }

                # ...and it goes on from there: pushes continue each driver's seq, the ride completes.
                p.worker = spawn(worker_args(), settings, "worker-n1", tree=n1)
                p.worker.wait_for_output(WORKER_READY, 90)
                async with http.post(f"{p.url}/v1/locations", json=[
                        ping(d, 3, step_m=20, ts=now - 2_000) for d in drivers]) as resp:
                    assert resp.status == 202
                seqs: dict[str, int] = {}
                while len(seqs) < len(drivers):
                    update = await client.next()
                    if update["type"] == "driver.location":
                        seqs[update["channel"]] = update["seq"]
                for d in drivers:
                    assert seqs[f"driver:{d}"] == before["driver_to_state"][d]["push_seq"] + 1
                driver_auth = {"Authorization": f"Bearer {p.token('driver', driver)}"}
                for action in ("start", "complete"):
                    async with http.post(f"{p.url}/v1/rides/{ride}/{action}", headers=driver_auth) as resp:
                        assert resp.status in (200, 202), await resp.text()
                deadline = time.monotonic() + 20
                while True:
                    async with http.get(f"{p.url}/v1/rides/{ride}") as resp:
                        if (await resp.json()).get("state") == "COMPLETED":
                            break
                    assert time.monotonic() < deadline, "the ride never completed on version N+1"
                    time.sleep(0.2)
        finally:
            p.stop()


async def _accepted_ride(p: Pipeline, http: aiohttp.ClientSession) -> tuple[str, str]:
    """A ride requested near the drivers and accepted by the driver it was offered to."""
    body = {"pickup": {"lat": 37.7749, "lng": -122.4194}, "destination": {"lat": 37.79, "lng": -122.40},
            "rider_id": "u-upgrade"}
    deadline = time.monotonic() + 30
    async with http.post(f"{p.url}/v1/rides", json=body) as resp:
        ride = (await resp.json())["ride_id"]
    while True:
        async with http.get(f"{p.url}/v1/rides/{ride}") as resp:
            state = await resp.json()
        if state.get("state") == "OFFERED":
            break
        assert time.monotonic() < deadline, f"never offered: {state}"
        time.sleep(0.2)
    driver = state["events"][-1]["driver_id"]
    async with http.post(f"{p.url}/v1/rides/{ride}/accept",
                         headers={"Authorization": f"Bearer {p.token('driver', driver)}"}) as resp:
        assert resp.status in (200, 202), await resp.text()
    while (state := await (await http.get(f"{p.url}/v1/rides/{ride}")).json()).get("state") != "ACCEPTED":
        assert time.monotonic() < deadline, f"never accepted: {state}"
        time.sleep(0.2)
    return ride, driver
