"""agents.panes and agents.features.admit: panes, windows as unions of panes, event-time admission."""
from __future__ import annotations

from typing import Any

import pytest

from agents.features import FUTURE, LATE, ON_TIME, OUT_OF_ORDER, admit
from agents.features_math import HOPPING, TUMBLING, FeaturePolicy, WindowSpec
from agents.geo import haversine_m
from agents.panes import apply_request, apply_sighting, closing_windows, new_pane, pane_start, window_counts
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
    assert t["available"] is True and pane["max_ts"] == T0 + 20_000


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
    assert encodes(pane)["rides"] == {"r1": T0 + 3, "r2": T0 + 9} and pane["max_ts"] == T0 + 9


def test_window_counts_are_distinct_over_panes_and_link_a_drivers_consecutive_panes() -> None:
    a, b = new_pane(), new_pane()
    apply_sighting(a, s("d1", 1, T0 + 20_000, 0), P)
    apply_sighting(a, s("d1", 2, T0 + 25_000, 1), P)
    apply_sighting(a, s("d2", 1, T0 + 25_000, 0, available=False), P)
    apply_sighting(b, s("d1", 3, T0 + 30_000, 2), P)  # 5 s after the last in `a`: one more segment
    apply_sighting(b, s("d2", 2, T0 + 31_000, 0, available=True), P)  # parked: no segment
    apply_request(a, r("r1", T0 + 1))
    apply_request(b, r("r1", T0 + 31_000))
    apply_request(b, r("r2", T0 + 32_000))
    c = window_counts([a, b], P)
    assert (c.supply, c.demand, c.segments, c.moving_ms) == (2, 2, 2, 10_000)
    assert c.dist_m == pytest.approx(2 * haversine_m(LAT, LNG, LAT + STEP, LNG))
    only_a = window_counts([a], P)
    assert (only_a.supply, only_a.demand, only_a.segments) == (1, 1, 1)  # d2 was not available in `a`


def test_closing_windows_are_the_ends_passed_by_size_then_kind() -> None:
    specs = [WindowSpec(TUMBLING, 60_000, 60_000), WindowSpec(HOPPING, 120_000, 30_000)]
    got = closing_windows(specs, T0, T0 + 60_000)
    assert [(e - T0, sp.kind, sp.size_ms) for e, sp in got] == [
        (30_000, HOPPING, 120_000), (60_000, TUMBLING, 60_000), (60_000, HOPPING, 120_000)]
    assert closing_windows(specs, T0 + 60_000, T0 + 60_000) == []
    assert closing_windows(specs, T0 + 1, T0 + 29_999) == []


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
