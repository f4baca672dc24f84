"""Fare, travel time and candidate ranking: pure functions of positions and two lookups.

The lookups are how marketplace features plug in: `SpeedLookup` (H3 cell -> travel speed in m/s)
and `SurgeLookup` (H3 cell -> surge multiplier). Until features provide them, a constant speed and
no surge (1.0) are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import h3

from agents.geo import cell_of, haversine_m

__all__ = [
    "PRODUCTS", "ROUTE_FACTOR", "Candidate", "ConstantSpeed", "Rate", "SpeedLookup", "SurgeLookup", "AcceptanceScore",
    "constant_speed", "no_surge", "any_acceptance", "travel_time_s", "fare_estimate", "rank_candidates",
]

SpeedLookup = Callable[[str], float]
SurgeLookup = Callable[[str], float]
AcceptanceScore = Callable[[str], float]  # driver id -> probability of accepting, (0, 1]
# Streets are not straight lines: a trip is about this much longer than the great circle.
ROUTE_FACTOR = 1.3
# Time per path cell is evaluated at the resolution pickups use; longer paths are sampled.
PATH_CELLS_MAX = 64
MIN_ACCEPTANCE = 0.05
RANK_LIMIT = 8


@dataclass(frozen=True)
class Rate:
    """A product's tariff (currency units)."""

    base: float
    per_km: float
    per_min: float
    minimum: float


PRODUCTS: dict[str, Rate] = {
    "standard": Rate(base=2.5, per_km=1.2, per_min=0.3, minimum=6.0),
    "xl": Rate(base=3.5, per_km=1.8, per_min=0.45, minimum=9.0),
    "premium": Rate(base=5.0, per_km=2.6, per_min=0.6, minimum=14.0),
}


@dataclass(frozen=True)
class ConstantSpeed:
    """The same travel speed everywhere (a SpeedLookup that needs no cells walked)."""

    mps: float

    def __call__(self, _cell: str) -> float:
        return self.mps


def constant_speed(mps: float) -> SpeedLookup:
    """The same travel speed everywhere."""
    if mps <= 0:
        raise ValueError("speed must be > 0")
    return ConstantSpeed(mps)


def no_surge(_cell: str) -> float:
    return 1.0


def any_acceptance(_driver_id: str) -> float:
    return 1.0


def _path_cells(a: str, b: str) -> list[str]:
    try:
        cells: list[str] = list(h3.grid_path_cells(a, b))
    except Exception:  # pentagons, faces apart: H3 has no path; treat as the two ends
        return [a, b]
    if len(cells) > PATH_CELLS_MAX:
        step = len(cells) / PATH_CELLS_MAX
        cells = [cells[int(i * step)] for i in range(PATH_CELLS_MAX)]
    return cells


def travel_time_s(
    lat1: float, lng1: float, lat2: float, lng2: float, *, speed: SpeedLookup, resolution: int = 9
) -> float:
    """Seconds to drive from one point to another: route length spread evenly over the H3 cells on
    the way, each crossed at its own speed."""
    metres = haversine_m(lat1, lng1, lat2, lng2) * ROUTE_FACTOR
    if metres == 0:
        return 0.0
    if isinstance(speed, ConstantSpeed):  # same answer as walking the cells, without the walk
        return metres / speed.mps
    cells = _path_cells(cell_of(lat1, lng1, resolution), cell_of(lat2, lng2, resolution))
    per_cell = metres / len(cells)
    return sum(per_cell / max(0.1, speed(c)) for c in cells)


def fare_estimate(distance_m: float, duration_s: float, product: str, *, surge: float = 1.0) -> float:
    """Fare of a trip: base + distance + time at the product's rate, times surge, at least the minimum."""
    rate = PRODUCTS[product]
    if surge < 1.0:
        raise ValueError("surge must be >= 1.0")
    raw = rate.base + rate.per_km * distance_m / 1000 + rate.per_min * duration_s / 60
    return round(max(rate.minimum, raw * surge), 2)


@dataclass(frozen=True)
class Candidate:
    """A driver who may be offered a ride: where it was last seen and when."""

    driver_id: str
    lat: float
    lng: float
    seen_ts: int
    eta_s: float = 0.0
    score: float = 0.0


def rank_candidates(
    candidates: Iterable[Candidate], pickup_lat: float, pickup_lng: float, *, speed: SpeedLookup,
    acceptance: AcceptanceScore = any_acceptance, resolution: int = 9, limit: int = RANK_LIMIT,
) -> list[Candidate]:
    """The best `limit`, best first: expected time until a driver is on the way, i.e. pickup ETA
    over the chance the driver accepts; ties go to the most recently seen, then to the id.

    Only the nearest 2 x `limit` by straight line are priced (travel time walks H3 cells, the
    costly part): under contention a ride is ranked again after every refusal.
    """
    by_distance = sorted(candidates, key=lambda c: (haversine_m(c.lat, c.lng, pickup_lat, pickup_lng), c.driver_id))
    ranked = []
    for c in by_distance[: 2 * limit]:
        eta = travel_time_s(c.lat, c.lng, pickup_lat, pickup_lng, speed=speed, resolution=resolution)
        p = min(1.0, max(MIN_ACCEPTANCE, acceptance(c.driver_id)))
        ranked.append(Candidate(c.driver_id, c.lat, c.lng, c.seen_ts, round(eta, 1), eta / p))
    ranked.sort(key=lambda c: (c.score, -c.seen_ts, c.driver_id))
    return ranked[:limit]
