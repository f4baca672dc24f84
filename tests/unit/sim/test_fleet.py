"""The simulator's pure parts: motion, pings, scheduling, chunking, backoff, headers."""
from __future__ import annotations

import math
import random
from collections import Counter
from itertools import pairwise

import pytest

from gateway.ingest import parse_locations
from sim.fleet import (
    ARRIVE_M,
    BACKOFF_MAX_S,
    MAX_SPEED_MPS,
    MIN_SPEED_MPS,
    City,
    Driver,
    FleetStats,
    Ping,
    advance,
    backoff_s,
    chunks,
    make_fleet,
    ping,
    request_headers,
    step,
    tick,
)

SF = City(37.7749, -122.4194, 4000.0)
NOW_MS = 1_732_170_000_000


def _fleet(n: int = 20, seed: int = 1, period_s: float = 1.0) -> list[Driver]:
    return make_fleet(n, SF, random.Random(seed), now_s=0.0, period_s=period_s)


def _dist_m(a: Driver, b: Driver) -> float:
    return math.hypot(a.x_m - b.x_m, a.y_m - b.y_m)


def _run(drivers: list[Driver], seconds: float, tick_s: float, seed: int = 2) -> tuple[list[Driver], list[Ping]]:
    rng = random.Random(seed)
    sent: list[Ping] = []
    for k in range(1, round(seconds / tick_s) + 1):
        drivers, pings = tick(drivers, k * tick_s, NOW_MS + round(k * tick_s * 1000), 1.0, SF, rng)
        sent.extend(pings)
    return drivers, sent


def test_city_parse() -> None:
    assert City.parse("37.7749,-122.4194", 4000.0) == SF
    assert City.parse(" 51.5 , -0.12 ", 10.0) == City(51.5, -0.12, 10.0)


@pytest.mark.parametrize("text,radius", [("37.7", 1.0), ("a,b", 1.0), ("1,2,3", 1.0), ("95,0", 1.0), ("0,0", 0.0)])
def test_city_parse_refuses(text: str, radius: float) -> None:
    with pytest.raises(ValueError):
        City.parse(text, radius)


def test_to_latlng_is_metric() -> None:
    lat, lng = SF.to_latlng(0.0, 1000.0)
    assert lat - SF.lat == pytest.approx(0.0089932, rel=1e-4) and lng == SF.lng
    lat, lng = SF.to_latlng(1000.0, 0.0)
    assert lng - SF.lng == pytest.approx(0.0089932 / math.cos(math.radians(SF.lat)), rel=1e-4)


def test_make_fleet_ids_and_stagger() -> None:
    fleet = _fleet(n=12, period_s=2.0)
    assert [d.driver_id for d in fleet[:2]] == ["sim-0001", "sim-0002"] and fleet[-1].driver_id == "sim-0012"
    assert all(0.0 <= d.due_s < 2.0 for d in fleet) and len({d.due_s for d in fleet}) == 12
    assert all(math.hypot(d.x_m, d.y_m) <= SF.radius_m for d in fleet)
    assert all(MIN_SPEED_MPS <= d.speed_mps <= MAX_SPEED_MPS and d.seq == 1 for d in fleet)


def test_step_moves_at_driving_speed() -> None:
    rng = random.Random(3)
    for d in _fleet():
        moved = step(d, 1.0, SF, rng)
        assert MIN_SPEED_MPS - 1e-9 <= _dist_m(d, moved) <= MAX_SPEED_MPS + 1e-9
        assert moved.seq == d.seq and moved.t_s == d.t_s  # motion only


def test_step_zero_is_identity() -> None:
    d = _fleet()[0]
    assert step(d, 0.0, SF, random.Random(0)) == d


def test_drivers_stay_inside_and_keep_plausible_headings() -> None:
    rng, drivers = random.Random(4), _fleet(n=30)
    for _ in range(1800):
        nxt = [step(d, 1.0, SF, rng) for d in drivers]
        for a, b in zip(drivers, nxt):
            assert math.hypot(b.x_m, b.y_m) <= SF.radius_m + 1e-6
            assert MIN_SPEED_MPS <= b.speed_mps <= MAX_SPEED_MPS
            turn = abs((b.heading_deg - a.heading_deg + 180) % 360 - 180)
            assert turn <= 45 + 15  # steering limit plus a few sigma of heading noise
        drivers = nxt


def test_drivers_reach_waypoints() -> None:
    rng, d = random.Random(5), _fleet(n=1)[0]
    waypoints = {(d.wx_m, d.wy_m)}
    for _ in range(3600):
        d = step(d, 1.0, SF, rng)
        waypoints.add((d.wx_m, d.wy_m))
    assert len(waypoints) >= 5  # ~8 km across at ~10 m/s: several legs an hour


def test_long_gap_is_driven_in_substeps() -> None:
    d = _fleet(n=1)[0]
    moved = step(d, 120.0, SF, random.Random(6))
    assert math.hypot(moved.x_m, moved.y_m) <= SF.radius_m
    assert _dist_m(d, moved) <= MAX_SPEED_MPS * 120


def test_ping_body_format() -> None:
    d = _fleet(n=1)[0]
    after, item = ping(d, NOW_MS, SF, random.Random(7))
    assert list(item) == ["driver_id", "seq", "lat", "lng", "ts", "accuracy", "speed", "bearing"]
    assert item["driver_id"] == "sim-0001" and item["seq"] == d.seq and item["ts"] == NOW_MS
    assert after.seq == d.seq + 1 and (after.x_m, after.y_m) == (d.x_m, d.y_m)
    assert 0 <= item["bearing"] < 360 and 0 <= item["speed"] <= MAX_SPEED_MPS + 1
    assert all(isinstance(item[k], float) for k in ("lat", "lng", "accuracy", "speed", "bearing"))


def test_ping_noise_is_a_few_metres() -> None:
    rng, d = random.Random(8), _fleet(n=1)[0]
    true_lat, true_lng = SF.to_latlng(d.x_m, d.y_m)
    for _ in range(500):
        _, item = ping(d, NOW_MS, SF, rng)
        north = (item["lat"] - true_lat) * 111_195
        east = (item["lng"] - true_lng) * 111_195 * math.cos(math.radians(SF.lat))
        assert math.hypot(north, east) <= 5 * item["accuracy"]
        assert 3.0 <= item["accuracy"] <= 8.0


def test_pings_pass_gateway_validation() -> None:
    _, sent = _run(_fleet(n=50), seconds=3, tick_s=0.1)
    assert len(parse_locations(sent, max_items=len(sent), received_ts=NOW_MS)) == len(sent)


def test_tick_pings_each_driver_at_rate_with_contiguous_seqs() -> None:
    drivers, sent = _run(_fleet(n=20), seconds=10, tick_s=0.1)
    by_driver: dict[str, list[Ping]] = {}
    for item in sent:
        by_driver.setdefault(item["driver_id"], []).append(item)
    assert len(by_driver) == 20
    for items in by_driver.values():
        assert len(items) in (10, 11)
        assert [i["seq"] for i in items] == list(range(1, len(items) + 1))
        assert all(a["ts"] < b["ts"] for a, b in pairwise(items))
    assert all(d.due_s > 10 for d in drivers)


def test_tick_spreads_pings_over_the_period() -> None:
    _, sent = _run(_fleet(n=100), seconds=1, tick_s=0.1)
    per_tick = Counter(item["ts"] for item in sent)
    assert len(per_tick) == 10 and max(per_tick.values()) <= 11


def test_advance_after_stall_skips_missed_pings_on_phase() -> None:
    d = _fleet(n=4, period_s=1.0)[1]  # due at 0.25
    after, item = advance(d, 30.6, NOW_MS, 1.0, SF, random.Random(9))
    assert item["seq"] == d.seq and after.seq == d.seq + 1 and after.t_s == 30.6
    assert after.due_s == pytest.approx(31.25)


def test_same_seed_same_fleet() -> None:
    assert _run(_fleet(seed=10), 5, 0.1, seed=11)[1] == _run(_fleet(seed=10), 5, 0.1, seed=11)[1]
    assert _run(_fleet(seed=10), 5, 0.1, seed=11)[1] != _run(_fleet(seed=12), 5, 0.1, seed=11)[1]


def test_waypoint_arrival_picks_a_new_one() -> None:
    d = _fleet(n=1)[0]
    d = Driver(d.driver_id, 0.0, 0.0, 0.0, 10.0, 0.0, ARRIVE_M / 2, 1, 0.0, 0.0)
    moved = step(d, 1.0, SF, random.Random(12))
    assert (moved.wx_m, moved.wy_m) != (0.0, ARRIVE_M / 2)


@pytest.mark.parametrize("n,sizes", [(0, []), (1, [1]), (200, [200]), (450, [200, 200, 50])])
def test_chunks(n: int, sizes: list[int]) -> None:
    items = [{"seq": i} for i in range(n)]
    parts = chunks(items, 200)  # type: ignore[arg-type]
    assert [len(p) for p in parts] == sizes and [x for p in parts for x in p] == items


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(13)
    delays = [backoff_s(a, rng) for a in range(1, 12)]
    assert 0.125 <= delays[0] <= 0.25 and all(d <= BACKOFF_MAX_S for d in delays)
    assert delays[-1] >= BACKOFF_MAX_S / 2 and delays[3] > delays[0]


def test_request_headers() -> None:
    assert "Authorization" not in request_headers()
    assert "Authorization" not in request_headers("")
    assert request_headers("abc.def.ghi")["Authorization"] == "Bearer abc.def.ghi"


def test_summary_line() -> None:
    before = FleetStats(sent=100, accepted=100)
    now = FleetStats(sent=300, accepted=280, failed=20, requests=5, retries=1, last_error="HTTP 400 bad")
    line = now.summary(before, 10.0, 20)
    assert "sent=300 accepted=280 failed=20" in line and "18.0 accepted/s" in line and "HTTP 400" in line
    assert "last error" not in now.summary(now, 10.0, 20)
