"""Cell feature math: window specs, k-ring smoothing, surge, travel speed (pure: no Faust, no Kafka).

Dispatch imports this module for the fare (`surge_of`) and the ETA
(`travel_speed_of`) from a cell's latest features (table
`cell_to_features`); the features agent uses the rest. Formulas (README
"Features"):

    smoothed(c) = sum_d w_d * sum_{n in ring(c, d)} x(n) / sum_d w_d * |ring(c, d)|,  d = 0..k
    ratio       = (smoothed_demand + prior) / (smoothed_supply + prior)
    surge       = min(cap, max(floor, 1 + sensitivity * (ratio - 1)))
    speed       = moving distance / moving time of the cell's drivers, or the default where that is thin
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterable, Mapping, Optional, cast

import h3

from agents.geo import haversine_m
from infra.settings import Settings, number_list
from schemas import typed

__all__ = [
    "TUMBLING", "HOPPING", "CELL", "DEFAULT",
    "WindowSpec", "FeaturePolicy", "Counts", "rings", "kring", "smooth", "surge", "segment", "travel_speed",
    "window_features", "surge_of", "travel_speed_of",
]

TUMBLING, HOPPING = "TUMBLING", "HOPPING"
CELL, DEFAULT = "CELL", "DEFAULT"


@dataclass(frozen=True)
class WindowSpec:
    """Windows [start, start + size) whose starts are the multiples of `step` (epoch ms)."""

    kind: str
    size_ms: int
    step_ms: int

    @property
    def size_s(self) -> int:
        return self.size_ms // 1000

    @property
    def label(self) -> str:
        return f"{self.kind.lower()}-{self.size_s}s"


@dataclass(frozen=True)
class FeaturePolicy:
    """Windows, smoothing, surge and speed parameters, taken from settings once."""

    resolution: int = 9
    windows_s: tuple[int, ...] = (60, 120, 240, 480)
    hop_s: int = 30
    grace_ms: int = 10_000
    max_future_ms: int = 120_000
    ring_weights: tuple[float, ...] = (1.0, 0.5)
    primary_window_s: int = 120
    surge_floor: float = 1.0
    surge_cap: float = 3.0
    surge_sensitivity: float = 0.5
    surge_prior: float = 1.0
    default_speed_mps: float = 8.0
    speed_min_moving_s: float = 20.0
    speed_min_mps: float = 0.5
    speed_max_gap_ms: int = 30_000
    max_speed_mps: float = 83.0
    running_ms: int = 0
    stale_ms: int = 600_000

    @classmethod
    def from_settings(cls, s: Settings) -> "FeaturePolicy":
        """From settings (validated there: the hop divides every size, the primary is one of them)."""
        return cls(
            resolution=s.h3_resolution, windows_s=tuple(number_list(s.features_windows_s, int)),
            hop_s=s.features_hop_s, grace_ms=s.features_grace_ms, max_future_ms=s.features_max_future_ms,
            ring_weights=tuple(number_list(s.features_ring_weights, float)),
            primary_window_s=s.features_primary_window_s,
            surge_floor=s.features_surge_floor, surge_cap=s.features_surge_cap,
            surge_sensitivity=s.features_surge_sensitivity, surge_prior=s.features_surge_prior,
            default_speed_mps=s.dispatch_speed_mps, speed_min_moving_s=s.features_speed_min_moving_s,
            speed_min_mps=s.features_speed_min_mps, speed_max_gap_ms=s.features_speed_max_gap_ms,
            max_speed_mps=s.max_speed_mps, running_ms=s.features_running_ms, stale_ms=s.features_stale_ms,
        )

    @property
    def k(self) -> int:
        return len(self.ring_weights) - 1

    @cached_property
    def pane_ms(self) -> int:
        """The slice every window is a whole number of: gcd of the hop and the sizes."""
        return math.gcd(self.hop_s, *self.windows_s) * 1000

    @cached_property
    def specs(self) -> tuple[WindowSpec, ...]:
        """A tumbling and a hopping window per size (one only where the hop equals the size)."""
        out = []
        for size in sorted(self.windows_s):
            out.append(WindowSpec(TUMBLING, size * 1000, size * 1000))
            if self.hop_s != size:
                out.append(WindowSpec(HOPPING, size * 1000, self.hop_s * 1000))
        return tuple(out)

    @cached_property
    def primary(self) -> WindowSpec:
        kind = HOPPING if self.hop_s != self.primary_window_s else TUMBLING
        return WindowSpec(kind, self.primary_window_s * 1000, self.hop_s * 1000)

    @property
    def max_window_ms(self) -> int:
        return max(self.windows_s) * 1000


@dataclass(frozen=True)
class Counts:
    """One cell over one window: distinct available drivers, distinct requested rides, travel."""

    supply: int = 0
    demand: int = 0
    dist_m: float = 0.0
    moving_ms: int = 0
    segments: int = 0


NOTHING = Counts()


@lru_cache(maxsize=1 << 16)
def rings(cell: str, k: int) -> tuple[tuple[str, ...], ...]:
    """The cells at grid distance exactly 0, 1, ..., k from `cell` (pentagons have fewer)."""
    out: list[tuple[str, ...]] = []
    inner: set[str] = set()
    for d in range(k + 1):
        disk = set(h3.grid_disk(cell, d))
        out.append(tuple(sorted(disk - inner)))
        inner = disk
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def kring(cell: str, k: int) -> frozenset[str]:
    """Every cell within grid distance k of `cell`, itself included."""
    return frozenset(h3.grid_disk(cell, k))


def smooth(cell: str, values: Mapping[str, float], weights: tuple[float, ...]) -> float:
    """Weighted mean of `values` over the k-ring (missing cells count 0): a uniform field stays itself."""
    total = norm = 0.0
    for w, ring in zip(weights, rings(cell, len(weights) - 1)):
        total += w * sum(values.get(n, 0) for n in ring)
        norm += w * len(ring)
    return total / norm


def surge(smoothed_demand: float, smoothed_supply: float, policy: FeaturePolicy) -> float:
    """The multiplier: 1 when demand and supply balance, up with the demand/supply ratio, floor to cap."""
    ratio = (smoothed_demand + policy.surge_prior) / (smoothed_supply + policy.surge_prior)
    return min(policy.surge_cap, max(policy.surge_floor, 1.0 + policy.surge_sensitivity * (ratio - 1.0)))


def segment(a_ts: int, a_lat: float, a_lng: float, b_ts: int, b_lat: float, b_lng: float,
            policy: FeaturePolicy) -> Optional[tuple[float, int]]:
    """(metres, ms) travelled between two consecutive fixes, or None when it is not travel:
    too far apart in time, parked (slower than speed_min_mps) or impossible (over max_speed_mps)."""
    dt = b_ts - a_ts
    if dt <= 0 or dt > policy.speed_max_gap_ms:
        return None
    dist = haversine_m(a_lat, a_lng, b_lat, b_lng)
    mps = dist * 1000.0 / dt
    if mps < policy.speed_min_mps or mps > policy.max_speed_mps:
        return None
    return dist, dt


def travel_speed(dist_m: float, moving_ms: int, policy: FeaturePolicy) -> tuple[float, str]:
    """(m/s, source): the cell's own when its drivers moved long enough in the window, else the default."""
    if moving_ms > 0 and moving_ms >= policy.speed_min_moving_s * 1000.0:
        return dist_m * 1000.0 / moving_ms, CELL
    return policy.default_speed_mps, DEFAULT


def window_features(cells: Iterable[str], counts: Mapping[str, Counts], spec: WindowSpec, end_ms: int,
                    policy: FeaturePolicy, *, final: bool, emitted_ts: int) -> list[typed.CellFeatures]:
    """CellFeatures of `cells` for the window ending at `end_ms`, given every cell's counts
    (cells absent from `counts` saw nothing)."""
    supply = {c: n.supply for c, n in counts.items()}
    demand = {c: n.demand for c, n in counts.items()}
    out: list[typed.CellFeatures] = []
    for cell in cells:
        own = counts.get(cell, NOTHING)
        speed, source = travel_speed(own.dist_m, own.moving_ms, policy)
        smoothed_supply = smooth(cell, supply, policy.ring_weights)
        smoothed_demand = smooth(cell, demand, policy.ring_weights)
        out.append({
            "cell": cell, "kind": spec.kind, "size_s": spec.size_s, "start_ts": end_ms - spec.size_ms,
            "end_ts": end_ms, "final": final, "supply": own.supply, "demand": own.demand,
            "smoothed_supply": smoothed_supply, "smoothed_demand": smoothed_demand,
            "surge": surge(smoothed_demand, smoothed_supply, policy), "speed_mps": speed,
            "speed_source": source, "speed_segments": own.segments if source == CELL else 0,
            "emitted_ts": emitted_ts,
        })
    return out


Latest = typed.CellLatest | typed.CellFeatures | None


def _fresh(latest: Latest, now_ms: int, policy: FeaturePolicy) -> typed.CellFeatures | None:
    """The features inside a CellLatest (or a CellFeatures dict) when recent enough, else None."""
    if not latest:
        return None
    features: typed.CellFeatures | None
    if "push_seq" in latest:  # a CellLatest
        features = cast("typed.CellLatest", latest)["features"]
    else:
        features = latest
    if not features or now_ms - features["end_ts"] > policy.stale_ms:
        return None
    return features


def surge_of(latest: Latest, now_ms: int, policy: FeaturePolicy) -> float:
    """Surge for a fare: the cell's latest features, or the floor when there are none or they are stale."""
    features = _fresh(latest, now_ms, policy)
    return float(features["surge"]) if features else policy.surge_floor


def travel_speed_of(latest: Latest, now_ms: int, policy: FeaturePolicy) -> float:
    """Travel speed (m/s) for an ETA: the cell's latest, or the default when none or stale."""
    features = _fresh(latest, now_ms, policy)
    return float(features["speed_mps"]) if features else policy.default_speed_mps
