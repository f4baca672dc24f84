"""agents.panes and agents.features.admit: panes, windows as unions of panes, event-time admission."""
from __future__ import annotations

from typing import Any

import random

import pytest

from agents.features import FUTURE, LATE, ON_TIME, OUT_OF_ORDER, admit
from agents.features_math import HOPPING, TUMBLING, Counts, FeaturePolicy, WindowSpec, segment
from agents.geo import haversine_m
from agents.panes import (
    apply_presence,
    apply_request,
    apply_sighting,
    closing_windows,
    closing_windows_near,
    nested_counts,
    new_pane,
    pane_start,
    summarize,
)
from schemas.avro import codec_for
from schemas.records import CellPane

P = FeaturePolicy()
T0 = 1_732_170_000_000 - 1_732_170_000_000 % 480_000  # a multiple of every window
CELL = "891fb466257ffff"
LAT, LNG = 48.8566, 2.3522
STEP = 50 / 111_195  # 50 m north, in degrees


def s(driver: str, seq: int, ts: int, north: int = 0, available: bool = True) -> dict[str, Any]:
    """A decoded CellSighting: `north` steps of 50 m from the start."""
    return {"cell": CELL, "driver_id": driver, "seq": seq, "ts": ts, "lat": LAT + north * STEP, "lng": LNG,
            "available": available}


def r(ride: str, ts: int) -> dict[str, Any]:
    return {"cell": CELL, "ride_id": ride, "ts": ts}


def encodes(pane: dict[str, Any]) -> dict[str, Any]:
    codec = codec_for(CellPane)
    assert codec.loads(codec.dumps(pane)) == pane
    return pane


def test_sightings_make_one_trace_per_driver_with_its_travel() -> None:
    pane = new_pane()
    assert apply_sighting(pane, s("d1", 1, T0, 0), P)
    assert apply_sighting(pane, s("d1", 2, T0 + 5_000, 1), P)
    assert apply_sighting(pane, s("d1", 3, T0 + 10_000, 2, available=False), P)
    assert apply_sighting(pane, s("d1", 4, T0 + 20_000, 2), P)  # parked 10 s: not travel
    t = encodes(pane)["drivers"]["d1"]
    assert (t["first_seq"], t["last_seq"], t["segments"], t["moving_ms"]) == (1, 4, 2, 10_000)
    assert t["dist_m"] == pytest.approx(haversine_m(LAT, LNG, LAT + 2 * STEP, LNG))
    assert t["available"] is True


def test_a_replayed_or_older_sighting_changes_nothing() -> None:
    pane = new_pane()
    apply_sighting(pane, s("d1", 5, T0, 0, available=False), P)
    apply_sighting(pane, s("d1", 6, T0 + 5_000, 1, available=False), P)
    before = encodes({**pane, "drivers": {k: dict(v) for k, v in pane["drivers"].items()}})
    assert not apply_sighting(pane, s("d1", 6, T0 + 5_000, 1, available=True), P)
    assert not apply_sighting(pane, s("d1", 4, T0 + 1_000, 3, available=True), P)
    assert pane == before


def test_requests_are_a_set_of_rides() -> None:
    pane = new_pane()
    assert apply_request(pane, r("r1", T0 + 3))
    assert not apply_request(pane, r("r1", T0 + 3))
    assert apply_request(pane, r("r2", T0 + 9))
    assert encodes(pane)["rides"] == {"r1": T0 + 3, "r2": T0 + 9}


def test_summaries_link_a_drivers_consecutive_panes() -> None:
    a, b = new_pane(), new_pane()
    apply_sighting(a, s("d1", 1, T0 + 20_000, 0), P)
    apply_sighting(a, s("d1", 2, T0 + 25_000, 1), P)
    apply_sighting(a, s("d2", 1, T0 + 25_000, 0, available=False), P)
    apply_sighting(b, s("d1", 3, T0 + 30_000, 2), P)  # 5 s after the last in `a`: one more segment
    apply_sighting(b, s("d2", 2, T0 + 31_000, 0, available=True), P)  # parked: no segment
    apply_request(a, r("r1", T0 + 1))
    apply_request(b, r("r1", T0 + 31_000))
    apply_request(b, r("r2", T0 + 32_000))
    sa, sb = summarize(a, [], P), summarize(b, [(T0, a)], P)
    assert (sa.available, sa.segments, sa.links) == (frozenset({"d1"}), 1, ())
    assert sb.links == ((T0, pytest.approx(haversine_m(LAT, LNG, LAT + STEP, LNG)), 5_000, 1),)
    both = nested_counts([(T0 + 30_000, sb), (T0, sa)], T0 + 60_000, [30_000, 60_000])
    assert (both[60_000].supply, both[60_000].demand, both[60_000].segments, both[60_000].moving_ms) == (2, 2, 2, 10_000)
    assert both[60_000].dist_m == pytest.approx(2 * haversine_m(LAT, LNG, LAT + STEP, LNG))
    assert (both[30_000].supply, both[30_000].demand, both[30_000].segments) == (2, 2, 0)  # the link needs `a`
    assert nested_counts([(T0, sa)], T0 + 90_000, [30_000, 60_000, 120_000]).keys() == {120_000}


def _definition(fixes: list[dict[str, Any]], rides: list[dict[str, Any]], start: int, end: int) -> Counts:
    """One cell over [start, end) from the raw items: distinct available drivers and rides, travel
    between each driver's consecutive fixes."""
    inside = [f for f in fixes if start <= f["ts"] < end]
    dist, moving, segments = 0.0, 0, 0
    for driver in {f["driver_id"] for f in inside}:
        mine = sorted((f for f in inside if f["driver_id"] == driver), key=lambda f: f["seq"])
        for x, y in zip(mine, mine[1:]):
            travel = segment(x["ts"], x["lat"], x["lng"], y["ts"], y["lat"], y["lng"], P)
            if travel is not None:
                dist, moving, segments = dist + travel[0], moving + travel[1], segments + 1
    return Counts(len({f["driver_id"] for f in inside if f["available"]}),
                  len({q["ride_id"] for q in rides if start <= q["ts"] < end}), dist, moving, segments)


def test_nested_counts_over_summaries_equal_the_definition() -> None:
    rng = random.Random(4)
    fixes, rides = [], []
    for d in range(6):
        ts, seq, north = T0 + rng.randrange(20_000), 0, 0
        while ts < T0 + 600_000:
            seq += 1
            north += rng.choice((0, 0, 1, 2))
            fixes.append(s(f"d{d}", seq, ts, north, available=rng.random() < 0.7))
            ts += rng.choice((2_000, 5_000, 9_000, 25_000, 40_000))
    rides = [r(f"r{i % 30}", T0 + rng.randrange(600_000)) for i in range(60)]
    panes: dict[int, dict[str, Any]] = {}
    for item in sorted(fixes + rides, key=lambda x: x["ts"]):
        pane = panes.setdefault(pane_start(item["ts"], P.pane_ms), new_pane())
        (apply_sighting(pane, item, P) if "driver_id" in item else apply_request(pane, item))
    summaries = {start: summarize(pane, [(start - P.pane_ms, panes[start - P.pane_ms])]
                                  if start - P.pane_ms in panes else [], P) for start, pane in panes.items()}
    sizes = [60_000, 120_000, 240_000, 480_000]
    for end in range(T0 + 30_000, T0 + 630_000, 30_000):
        newest_first = [(st, summaries[st]) for st in sorted(summaries, reverse=True) if st < end]
        got = nested_counts(newest_first, end, sizes)
        for size in sizes:
            want = _definition(fixes, rides, end - size, end)
            if size not in got:
                assert want == Counts()
                continue
            c = got[size]
            assert (c.supply, c.demand, c.moving_ms, c.segments) == (
                want.supply, want.demand, want.moving_ms, want.segments), (end - T0, size)
            assert c.dist_m == pytest.approx(want.dist_m)


def test_closing_windows_are_the_ends_passed_by_size_then_kind() -> None:
    specs = [WindowSpec(TUMBLING, 60_000, 60_000), WindowSpec(HOPPING, 120_000, 30_000)]
    got = closing_windows(specs, T0, T0 + 60_000)
    assert [(e - T0, sp.kind, sp.size_ms) for e, sp in got] == [
        (30_000, HOPPING, 120_000), (60_000, TUMBLING, 60_000), (60_000, HOPPING, 120_000)]
    assert closing_windows(specs, T0 + 60_000, T0 + 60_000) == []
    assert closing_windows(specs, T0 + 1, T0 + 29_999) == []


def test_windows_near_panes_are_those_that_hold_one() -> None:
    specs = [WindowSpec(TUMBLING, 60_000, 60_000), WindowSpec(HOPPING, 120_000, 30_000)]
    panes = [T0, T0 + 30_000, T0 + 600_000]  # a gap of 9 minutes between the second and third
    after, until = T0 - 1, T0 + 900_000
    every = closing_windows(specs, after, until)
    holding = [(e, sp) for e, sp in every if any(e - sp.size_ms <= s < e for s in panes)]
    got = closing_windows_near(specs, panes, 120_000, after, until)
    assert set(holding) <= set(got) and len(got) < len(every)
    assert got == sorted(got, key=lambda e: (e[0], e[1].size_ms, e[1].kind)) and len(set(got)) == len(got)


def test_a_jump_of_years_in_event_time_closes_only_the_windows_near_panes() -> None:
    specs = [WindowSpec(TUMBLING, 480_000, 480_000), WindowSpec(HOPPING, 480_000, 30_000)]
    three_years = 3 * 365 * 24 * 3_600_000
    got = closing_windows_near(specs, [T0, T0 + three_years], 480_000, T0 - 1, T0 + three_years + 480_000)
    assert len(got) <= 2 * (1 + 480_000 // 30_000)  # around each pane, not every hop in between


def test_admission_against_the_watermark() -> None:
    now = T0 + 3_600_000
    wm = T0 + 100_000  # pane [90 s, 120 s) is open; [60 s, 90 s) closed at 90 s + grace 10 s
    assert admit(None, T0, now, P) == ON_TIME
    assert admit(wm, wm, now, P) == ON_TIME
    assert admit(wm, T0 + 95_000, now, P) == OUT_OF_ORDER
    assert admit(wm, T0 + 90_000, now, P) == OUT_OF_ORDER
    assert admit(wm, T0 + 89_999, now, P) == LATE
    assert admit(wm, T0 + 89_999, now, FeaturePolicy(grace_ms=10_001)) == OUT_OF_ORDER
    assert admit(wm, now + P.max_future_ms + 1, now, P) == FUTURE
    assert pane_start(T0 + 89_999, P.pane_ms) == T0 + 60_000


def test_presence_in_a_neighbours_cell_is_a_set_that_only_gains_availability() -> None:
    pane = new_pane()
    assert apply_presence(pane, s("d1", 1, T0, available=False))
    assert not apply_presence(pane, s("d1", 9, T0 + 5, available=False))
    assert apply_presence(pane, s("d1", 2, T0 + 9, available=True))
    assert not apply_presence(pane, s("d1", 3, T0 + 12, available=False))  # seen available stays so
    assert apply_presence(pane, s("d2", 1, T0 + 3, available=False))
    assert encodes(pane)["present"] == {"d1": True, "d2": False} and pane["drivers"] == {}
    summary = summarize(pane, [], P)
    assert (summary.available, summary.segments, summary.dist_m) == (frozenset({"d1"}), 0, 0.0)
