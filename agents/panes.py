"""Panes and windows (pure): what a partition saw of a cell in one pane, and windows as unions of panes.

Applying is idempotent, so a replayed batch (at-least-once) changes nothing:
a sighting whose seq is not above the last seq the pane holds for its driver
is a replay (or out of order) and is ignored; presence in a neighbour's cell
and rides are sets.
Values are decoded Avro dicts (CellPane, CellSighting, CellRequest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from agents.features_math import Counts, FeaturePolicy, WindowSpec, segment
from schemas import typed

__all__ = [
    "Pane", "PaneSummary", "new_pane", "pane_start", "apply_sighting", "apply_presence", "apply_request", "summarize",
    "nested_counts", "closing_windows", "closing_windows_near",
]

Pane = typed.CellPane


def new_pane() -> Pane:
    return {"drivers": {}, "present": {}, "rides": {}}


def pane_start(ts: int, pane_ms: int) -> int:
    """Start (epoch ms) of the pane holding `ts`."""
    return ts - ts % pane_ms


def _trace(s: typed.CellSighting) -> typed.PaneTrace:
    return {
        "first_seq": s["seq"], "first_ts": s["ts"], "first_lat": s["lat"], "first_lng": s["lng"],
        "last_seq": s["seq"], "last_ts": s["ts"], "last_lat": s["lat"], "last_lng": s["lng"],
        "dist_m": 0.0, "moving_ms": 0, "segments": 0, "available": s["available"],
    }


def apply_sighting(pane: Pane, s: typed.CellSighting, policy: FeaturePolicy) -> bool:
    """Add a sighting to `pane` in place; False when it is a replay (nothing changed)."""
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
    trace["last_seq"], trace["last_ts"], trace["last_lat"], trace["last_lng"] = s["seq"], s["ts"], s["lat"], s["lng"]
    trace["available"] = trace["available"] or s["available"]
    return True


def apply_presence(pane: Pane, s: typed.CellSighting) -> bool:
    """Note that a driver was in a neighbour's cell (available or not) in place; False when known."""
    held = pane["present"].get(s["driver_id"])
    if held is True or held == s["available"]:
        return False
    pane["present"][s["driver_id"]] = s["available"]
    return True


def apply_request(pane: Pane, r: typed.CellRequest) -> bool:
    """Add a requested ride to `pane` in place; False when the pane already has it."""
    if r["ride_id"] in pane["rides"]:
        return False
    pane["rides"][r["ride_id"]] = r["ts"]
    return True


@dataclass(frozen=True)
class PaneSummary:
    """A closed pane reduced to what windows add up: who was available, which rides, travel inside it,
    and travel into it from each earlier pane (prev pane start -> metres, ms, segments)."""

    available: frozenset[str]
    rides: frozenset[str]
    dist_m: float
    moving_ms: int
    segments: int
    links: tuple[tuple[int, float, int, int], ...]


def summarize(pane: Pane, earlier: Sequence[tuple[int, Pane]], policy: FeaturePolicy) -> PaneSummary:
    """Summary of `pane`; `earlier` are the cell's panes that a segment could come from, nearest first
    (a driver links to the nearest one holding it)."""
    links: dict[int, list[Any]] = {}
    dist, moving, segments = 0.0, 0, 0
    for driver, t in pane["drivers"].items():
        dist, moving, segments = dist + t["dist_m"], moving + t["moving_ms"], segments + t["segments"]
        for start, prev_pane in earlier:
            prev = prev_pane["drivers"].get(driver)
            if prev is None:
                continue
            travel = None if t["first_seq"] <= prev["last_seq"] else segment(
                prev["last_ts"], prev["last_lat"], prev["last_lng"], t["first_ts"], t["first_lat"], t["first_lng"],
                policy)
            if travel is not None:
                link = links.setdefault(start, [0.0, 0, 0])
                link[0], link[1], link[2] = link[0] + travel[0], link[1] + travel[1], link[2] + 1
            break
    return PaneSummary(
        available=frozenset([*(d for d, t in pane["drivers"].items() if t["available"]),
                             *(d for d, available in pane["present"].items() if available)]),
        rides=frozenset(pane["rides"]), dist_m=dist, moving_ms=moving, segments=segments,
        links=tuple((start, d, m, n) for start, (d, m, n) in sorted(links.items())),
    )


def nested_counts(summaries: Sequence[tuple[int, PaneSummary]], end_ms: int,
                  sizes_ms: Sequence[int]) -> dict[int, Counts]:
    """One cell's counts for the windows [end - size, end) of every size (ascending), in one pass over
    its panes newest first; a size whose window holds none of the cell's panes is left out."""
    available: set[str] = set()
    rides: set[str] = set()
    dist, moving, segments = 0.0, 0, 0
    pending: dict[int, list[Any]] = {}  # links from an earlier pane into the panes already in
    out: dict[int, Counts] = {}
    sizes = iter(sizes_ms)
    size = next(sizes, None)
    taken = False
    for start, s in summaries:
        while size is not None and start < end_ms - size:
            if taken:
                out[size] = Counts(len(available), len(rides), dist, moving, segments)
            size = next(sizes, None)
        if size is None:
            break
        taken = True
        available |= s.available
        rides |= s.rides
        dist, moving, segments = dist + s.dist_m, moving + s.moving_ms, segments + s.segments
        link = pending.pop(start, None)
        if link is not None:
            dist, moving, segments = dist + link[0], moving + link[1], segments + link[2]
        for prev, d, m, n in s.links:
            acc = pending.setdefault(prev, [0.0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + d, acc[1] + m, acc[2] + n
    while size is not None:
        if taken:
            out[size] = Counts(len(available), len(rides), dist, moving, segments)
        size = next(sizes, None)
    return out


def closing_windows_near(
    specs: Iterable[WindowSpec], pane_starts: Iterable[int], max_window_ms: int, after_ms: int, until_ms: int
) -> list[tuple[int, WindowSpec]]:
    """closing_windows, but only the windows that hold a pane: a window ending at e holds the pane
    starting at s when e is in (s, s + size]. Event time may jump (a device with an old clock, a
    replay): walking every hop between two far-apart panes would block the worker for seconds."""
    specs = list(specs)
    spans: list[list[int]] = []
    for start in sorted(pane_starts):
        lo, hi = max(after_ms, start), min(until_ms, start + max_window_ms)
        if lo >= hi:
            continue
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    # Spans are disjoint and ascending, so their windows come out in closing_windows' order.
    return [w for lo, hi in spans for w in closing_windows(specs, lo, hi)]


def closing_windows(specs: Iterable[WindowSpec], after_ms: int, until_ms: int) -> list[tuple[int, WindowSpec]]:
    """(end, spec) of every window ending in (after_ms, until_ms], by end, then size."""
    out: list[tuple[int, WindowSpec]] = []
    for spec in specs:
        first = (after_ms // spec.step_ms + 1) * spec.step_ms
        out.extend((end, spec) for end in range(first, until_ms + 1, spec.step_ms))
    return sorted(out, key=lambda e: (e[0], e[1].size_ms, e[1].kind))
