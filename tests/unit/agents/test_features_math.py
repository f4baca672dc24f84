"""agents.features_math: window specs, k-ring smoothing, surge, travel speed and the dispatch lookups."""
from __future__ import annotations

import h3
import pytest

from agents.features_math import (
    CELL,
    DEFAULT,
    HOPPING,
    TUMBLING,
    Counts,
    FeaturePolicy,
    WindowSpec,
    kring,
    rings,
    segment,
    smooth,
    surge,
    surge_of,
    travel_speed,
    travel_speed_of,
    window_features,
)
from agents.geo import haversine_m
from infra.settings import Settings

CELL_ID = h3.latlng_to_cell(48.8566, 2.3522, 9)
T0 = 1_732_170_000_000
P = FeaturePolicy()


def test_default_windows_are_tumbling_and_hopping_of_1_2_4_8_minutes_on_30_s_panes() -> None:
    assert P.pane_ms == 30_000
    assert [(s.kind, s.size_s, s.step_ms) for s in P.specs] == [
        (TUMBLING, 60, 60_000), (HOPPING, 60, 30_000), (TUMBLING, 120, 120_000), (HOPPING, 120, 30_000),
        (TUMBLING, 240, 240_000), (HOPPING, 240, 30_000), (TUMBLING, 480, 480_000), (HOPPING, 480, 30_000),
    ]
    assert P.primary == WindowSpec(HOPPING, 120_000, 30_000) and P.primary in P.specs
    assert (P.k, P.max_window_ms, P.primary.label) == (1, 480_000, "hopping-120s")


def test_a_hop_equal_to_a_size_gives_one_window_not_two() -> None:
    p = FeaturePolicy(windows_s=(60, 120), hop_s=60, primary_window_s=60)
    assert [(s.kind, s.size_s) for s in p.specs] == [(TUMBLING, 60), (TUMBLING, 120), (HOPPING, 120)]
    assert p.primary == WindowSpec(TUMBLING, 60_000, 60_000) and p.pane_ms == 60_000


def test_policy_from_settings() -> None:
    s = Settings(features_windows_s="60,180", features_hop_s=60, features_primary_window_s=180,
                 features_ring_weights="1,0.5,0.25", features_grace_ms=5, h3_resolution=8, max_speed_mps=40.0)
    p = FeaturePolicy.from_settings(s)
    assert (p.windows_s, p.hop_s, p.primary_window_s, p.ring_weights, p.k, p.grace_ms, p.resolution,
            p.max_speed_mps) == ((60, 180), 60, 180, (1.0, 0.5, 0.25), 2, 5, 8, 40.0)


def test_rings_are_the_cells_at_each_grid_distance() -> None:
    r = rings(CELL_ID, 2)
    assert [len(x) for x in r] == [1, 6, 12] and r[0] == (CELL_ID,)
    assert all(h3.grid_distance(CELL_ID, c) == d for d, ring in enumerate(r) for c in ring)
    assert kring(CELL_ID, 2) == frozenset(c for ring in r for c in ring)


def test_smoothing_keeps_a_uniform_field_and_spreads_a_peak() -> None:
    disk = kring(CELL_ID, 3)
    assert smooth(CELL_ID, {c: 4 for c in disk}, (1.0, 0.5)) == pytest.approx(4.0)
    assert smooth(CELL_ID, {c: 4 for c in disk}, (1.0, 0.5, 0.25)) == pytest.approx(4.0)
    neighbour = rings(CELL_ID, 1)[1][0]
    assert smooth(CELL_ID, {CELL_ID: 8}, (1.0, 0.5)) == pytest.approx(8 / (1 + 6 * 0.5))
    assert smooth(CELL_ID, {neighbour: 8}, (1.0, 0.5)) == pytest.approx(0.5 * 8 / 4)
    assert smooth(CELL_ID, {neighbour: 8}, (1.0, 0.0)) == 0.0  # weight 0: neighbours do not count
    far = rings(CELL_ID, 2)[2][0]
    assert smooth(CELL_ID, {far: 100}, (1.0, 0.5)) == 0.0


@pytest.mark.parametrize(("demand", "supply", "expected"), [
    (0.0, 0.0, 1.0),  # nothing happening: no surge
    (3.0, 3.0, 1.0),
    (1.0, 9.0, 1.0),  # more drivers than riders: the floor
    (5.0, 2.0, 1.0 + 0.5 * (6 / 3 - 1)),
    (40.0, 1.0, 3.0),  # capped
])
def test_surge_formula(demand: float, supply: float, expected: float) -> None:
    assert surge(demand, supply, P) == pytest.approx(expected)


def test_surge_floor_and_cap_are_settings() -> None:
    p = FeaturePolicy(surge_floor=0.8, surge_cap=1.5, surge_sensitivity=1.0, surge_prior=0.5)
    assert surge(0.0, 9.5, p) == pytest.approx(0.8)
    assert surge(1.0, 1.0, p) == pytest.approx(1.0)
    assert surge(2.5, 1.5, p) == pytest.approx(1.5)


def test_segment_is_travel_only() -> None:
    lat, lng = 48.8566, 2.3522
    north_100m = lat + 100 / 111_195
    d = haversine_m(lat, lng, north_100m, lng)
    assert segment(T0, lat, lng, T0 + 10_000, north_100m, lng, P) == (pytest.approx(d), 10_000)
    assert segment(T0, lat, lng, T0 + 40_000, north_100m, lng, P) is None  # gap over 30 s
    assert segment(T0, lat, lng, T0 + 10_000, lat + 1 / 111_195, lng, P) is None  # 0.1 m/s: parked
    assert segment(T0, lat, lng, T0 + 1_000, lat + 0.01, lng, P) is None  # 1.1 km in 1 s: impossible
    assert segment(T0, lat, lng, T0, north_100m, lng, P) is None


def test_travel_speed_falls_back_to_the_default_where_thin() -> None:
    assert travel_speed(200.0, 20_000, P) == (10.0, CELL)
    assert travel_speed(50.0, 5_000, P) == (P.default_speed_mps, DEFAULT)
    assert travel_speed(0.0, 0, FeaturePolicy(speed_min_moving_s=0)) == (P.default_speed_mps, DEFAULT)


def test_window_features_smooth_over_neighbours_and_pick_the_speed_source() -> None:
    neighbour = rings(CELL_ID, 1)[1][0]
    counts = {CELL_ID: Counts(2, 6, 100.0, 10_000, 2), neighbour: Counts(4, 0, 300.0, 30_000, 5)}
    spec = WindowSpec(HOPPING, 120_000, 30_000)
    own, near = window_features([CELL_ID, neighbour], counts, spec, T0 + 120_000, P, final=True, emitted_ts=T0 + 1)
    assert (own["supply"], own["demand"], own["start_ts"], own["end_ts"], own["kind"], own["size_s"]) == (
        2, 6, T0, T0 + 120_000, HOPPING, 120)
    assert own["smoothed_supply"] == pytest.approx((2 + 0.5 * 4) / 4)
    assert own["smoothed_demand"] == pytest.approx(6 / 4)
    assert own["surge"] == pytest.approx(surge(6 / 4, 1.0, P))
    assert (own["speed_mps"], own["speed_source"], own["speed_segments"]) == (P.default_speed_mps, DEFAULT, 0)
    assert (near["speed_mps"], near["speed_source"], near["speed_segments"]) == (pytest.approx(10.0), CELL, 5)
    assert near["smoothed_demand"] == pytest.approx(0.5 * 6 / 4)
    assert own["final"] is True and own["emitted_ts"] == T0 + 1


def _latest(end_ts: int, surge_: float = 1.7, speed: float = 11.0) -> dict:
    return {"push_seq": 3, "features": {"end_ts": end_ts, "surge": surge_, "speed_mps": speed}}


def test_dispatch_lookups_fall_back_when_unknown_or_stale() -> None:
    now = T0 + 60_000
    assert (surge_of(_latest(T0), now, P), travel_speed_of(_latest(T0), now, P)) == (1.7, 11.0)
    assert surge_of(_latest(T0)["features"], now, P) == 1.7  # a CellFeatures dict works too
    stale = now + P.stale_ms + 1
    assert (surge_of(_latest(T0), stale, P), travel_speed_of(_latest(T0), stale, P)) == (1.0, 8.0)
    assert (surge_of(None, now, P), travel_speed_of(None, now, P)) == (1.0, 8.0)
    assert surge_of({"features": None, "push_seq": 4}, now, P) == 1.0
