"""agents.estimates and agents.candidates: fare, travel time, ranking, the candidate query."""
from __future__ import annotations

import h3
import pytest

from agents.candidates import candidates_in, ring_cells
from agents.estimates import (
    PRODUCTS, ROUTE_FACTOR, Candidate, constant_speed, fare_estimate, rank_candidates, travel_time_s,
)
from agents.geo import haversine_m

PICKUP = (37.7749, -122.4194)


def test_fare_is_base_plus_distance_plus_time_at_least_the_minimum() -> None:
    rate = PRODUCTS["standard"]
    assert fare_estimate(10_000, 1200, "standard") == round(rate.base + rate.per_km * 10 + rate.per_min * 20, 2)
    assert fare_estimate(10, 5, "standard") == rate.minimum
    assert fare_estimate(10_000, 1200, "premium") > fare_estimate(10_000, 1200, "xl") > fare_estimate(
        10_000, 1200, "standard")


def test_surge_multiplies_the_fare_and_cannot_discount_it() -> None:
    assert fare_estimate(10_000, 1200, "standard", surge=1.5) == pytest.approx(
        fare_estimate(10_000, 1200, "standard") * 1.5, abs=0.01)
    with pytest.raises(ValueError):
        fare_estimate(10_000, 1200, "standard", surge=0.5)
    with pytest.raises(KeyError):
        fare_estimate(10_000, 1200, "bicycle")


def test_travel_time_is_route_length_over_speed() -> None:
    dest = (37.80, -122.45)
    metres = haversine_m(*PICKUP, *dest) * ROUTE_FACTOR
    assert travel_time_s(*PICKUP, *dest, speed=constant_speed(10.0)) == pytest.approx(metres / 10)
    # A per-cell lookup that happens to be constant walks the cells and gives the same answer.
    assert travel_time_s(*PICKUP, *dest, speed=lambda _c: 10.0) == pytest.approx(metres / 10)
    assert travel_time_s(*PICKUP, *PICKUP, speed=constant_speed(10.0)) == 0.0
    with pytest.raises(ValueError):
        constant_speed(0)


def test_slow_cells_on_the_way_make_the_trip_longer() -> None:
    dest = (37.80, -122.45)
    slow = set(h3.grid_disk(h3.latlng_to_cell(*dest, 9), 3))
    fast = travel_time_s(*PICKUP, *dest, speed=lambda _c: 10.0)
    assert travel_time_s(*PICKUP, *dest, speed=lambda c: 2.0 if c in slow else 10.0) > fast


def _at(driver: str, metres_north: float, seen: int = 0) -> Candidate:
    return Candidate(driver, PICKUP[0] + metres_north / 111_195, PICKUP[1], seen)


def test_ranking_puts_the_nearest_first_with_its_eta() -> None:
    ranked = rank_candidates([_at("far", 2000), _at("near", 100), _at("mid", 700)], *PICKUP,
                             speed=constant_speed(10.0))
    assert [c.driver_id for c in ranked] == ["near", "mid", "far"]
    assert ranked[0].eta_s == pytest.approx(100 * ROUTE_FACTOR / 10, abs=0.2)


def test_acceptance_score_can_outweigh_distance() -> None:
    ranked = rank_candidates([_at("picky", 100), _at("keen", 300)], *PICKUP, speed=constant_speed(10.0),
                             acceptance=lambda d: 0.1 if d == "picky" else 1.0)
    assert [c.driver_id for c in ranked] == ["keen", "picky"]


def test_ties_go_to_the_most_recently_seen_then_the_id_and_only_the_best_few_are_kept() -> None:
    same = [_at("b", 100, seen=5), _at("a", 100, seen=5), _at("c", 100, seen=9)]
    assert [c.driver_id for c in rank_candidates(same, *PICKUP, speed=constant_speed(10.0))] == ["c", "a", "b"]
    many = [_at(f"d{i:02d}", 50 * i) for i in range(30)]
    assert [c.driver_id for c in rank_candidates(many, *PICKUP, speed=constant_speed(10.0), limit=3)] == [
        "d00", "d01", "d02"]


def test_candidates_are_fresh_available_drivers_of_the_ring_once_each() -> None:
    cell = h3.latlng_to_cell(*PICKUP, 9)
    neighbour = next(c for c in ring_cells(cell, 1) if c != cell)
    far = next(c for c in ring_cells(cell, 3) if h3.grid_distance(cell, c) == 3)
    available = {cell: {"a": 1000, "stale": 10}, neighbour: {"b": 990, "a": 900}, far: {"c": 1000}}
    found = candidates_in(available, ring_cells(cell, 1), now_ms=1000, max_age_ms=500, exclude={"x"})
    assert sorted((c.driver_id, c.seen_ts) for c in found) == [("a", 1000), ("b", 990)]
    assert {c.driver_id for c in candidates_in(available, ring_cells(cell, 3), now_ms=1000, max_age_ms=500,
                                               exclude={"a"})} == {"b", "c"}
