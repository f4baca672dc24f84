"""Panes and windows (pure): what a partition saw of a cell in one pane, and windows as unions of panes.

Applying is idempotent, so a replayed batch (at-least-once) changes nothing:
a sighting whose seq is not above the last seq the pane holds for its driver
is a replay (or out of order) and is ignored; rides are a set of ride ids.
Values are decoded Avro dicts (CellPane, CellSighting, CellRequest).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from agents.features_math import Counts, FeaturePolicy, WindowSpec, segment

__all__ = ["Pane", "new_pane", "pane_start", "apply_sighting", "apply_request", "window_counts", "closing_windows"]

Pane = dict[str, Any]  # a decoded CellPane
Item = Mapping[str, Any]  # a decoded CellSighting or CellRequest


def new_pane() -> Pane:
    return {"drivers": {}, "rides": {}, "max_ts": 0}


def pane_start(ts: int, pane_ms: int) -> int:
    """Start (epoch ms) of the pane holding `ts`."""
    return ts - ts % pane_ms


def _trace(s: Item) -> dict[str, Any]:
    return {
        "first_seq": s["seq"], "first_ts": s["ts"], "first_lat": s["lat"], "first_lng": s["lng"],
        "last_seq": s["seq"], "last_ts": s["ts"], "last_lat": s["lat"], "last_lng": s["lng"],
        "dist_m": 0.0, "moving_ms": 0, "segments": 0, "available": s["available"],
    }


def apply_sighting(pane: Pane, s: Item, policy: FeaturePolicy) -> bool:
    """Add a sighting to `pane` in place; False when it is a replay (nothing changed but max_ts)."""
    pane["max_ts"] = max(pane["max_ts"], s["ts"])
    trace = pane["drivers"].get(s["driver_id"])
    if trace is None:
        pane["drivers"][s["driver_id"]] = _trace(s)
        return True
    if s["seq"] <= trace["last_seq"]:
        return False
    travel = segment(trace["last_ts"], trace["last_lat"], trace["last_lng"], s["ts"], s["lat"], s["lng"], policy)
    if travel is not None:
        trace["dist_m"] += travel[0]
        trace["moving_ms"] += travel[1]
        trace["segments"] += 1
    trace.update(last_seq=s["seq"], last_ts=s["ts"], last_lat=s["lat"], last_lng=s["lng"],
                 available=trace["available"] or s["available"])
    return True


def apply_request(pane: Pane, r: Item) -> bool:
    """Add a requested ride to `pane` in place; False when the pane already has it."""
    pane["max_ts"] = max(pane["max_ts"], r["ts"])
    if r["ride_id"] in pane["rides"]:
        return False
    pane["rides"][r["ride_id"]] = r["ts"]
    return True


def window_counts(panes: Sequence[Pane], policy: FeaturePolicy) -> Counts:
    """One cell's counts over a window, from its panes in time order: distinct available drivers,
    distinct rides, and travel inside panes plus between a driver's consecutive panes."""
    available: set[str] = set()
    rides: set[str] = set()
    dist, moving, segments = 0.0, 0, 0
    last: dict[str, Mapping[str, Any]] = {}
    for pane in panes:
        rides.update(pane["rides"])
        for driver, t in pane["drivers"].items():
            if t["available"]:
                available.add(driver)
            dist, moving, segments = dist + t["dist_m"], moving + t["moving_ms"], segments + t["segments"]
            prev = last.get(driver)
            if prev is not None and t["first_seq"] > prev["last_seq"]:
                travel = segment(prev["last_ts"], prev["last_lat"], prev["last_lng"], t["first_ts"], t["first_lat"],
                                 t["first_lng"], policy)
                if travel is not None:
                    dist, moving, segments = dist + travel[0], moving + travel[1], segments + 1
            last[driver] = t
    return Counts(len(available), len(rides), dist, moving, segments)


def closing_windows(specs: Iterable[WindowSpec], after_ms: int, until_ms: int) -> list[tuple[int, WindowSpec]]:
    """(end, spec) of every window ending in (after_ms, until_ms], by end, then size."""
    out = []
    for spec in specs:
        first = (after_ms // spec.step_ms + 1) * spec.step_ms
        out.extend((end, spec) for end in range(first, until_ms + 1, spec.step_ms))
    return sorted(out, key=lambda e: (e[0], e[1].size_ms, e[1].kind))
