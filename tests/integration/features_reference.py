"""A plain-Python reference for cell features, written from the README's definitions only.

It shares no code with the agents (only h3 for geometry): over a whole recorded
stream of accepted pings and ride requests it computes, per window and cell,
what the worker must emit.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import h3

__all__ = ["Params", "Ping", "Request", "Stream", "recorded_stream", "reference"]


@dataclass(frozen=True)
class Ping:
    driver: str
    seq: int
    ts: int
    lat: float
    lng: float


@dataclass(frozen=True)
class Request:
    ride: str
    ts: int
    lat: float
    lng: float


@dataclass
class Stream:
    pings: list[Ping] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # REQUESTED events, duplicates included
    others: list[Request] = field(default_factory=list)  # later events of the same rides (not demand)


@dataclass(frozen=True)
class Params:
    """The settings the reference needs (the worker's defaults unless a test changes them)."""

    resolution: int = 9
    windows_s: tuple[int, ...] = (60, 120, 240, 480)
    hop_s: int = 30
    weights: tuple[float, ...] = (1.0, 0.5)
    floor: float = 1.0
    cap: float = 3.0
    sensitivity: float = 0.5
    prior: float = 1.0
    default_speed: float = 8.0
    min_moving_s: float = 20.0
    min_mps: float = 0.5
    max_mps: float = 83.0
    max_gap_ms: int = 30_000


def _metres(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine, mean Earth radius (IUGG)."""
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lng2 - lng1) / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


def _offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / 111_195, lng + east_m / (111_195 * math.cos(math.radians(lat)))


def recorded_stream(base_ts: int, prefix: str, *, seed: int, minutes: int = 12, drivers: int = 24,
                    every_s: int = 3, rides: int = 150, centre: tuple[float, float] = (48.8566, 2.3522)) -> Stream:
    """Drivers wandering (and parking) within ~1.2 km of `centre`, and ride requests there."""
    rng = random.Random(seed)
    out = Stream()
    for d in range(drivers):
        lat, lng = _offset(*centre, rng.uniform(-800, 800), rng.uniform(-800, 800))
        heading, speed, parked = rng.uniform(0, 2 * math.pi), rng.uniform(3, 14), 0
        offset_ms = rng.randrange(every_s * 1000)
        for k in range(minutes * 60 // every_s):
            if parked:
                parked -= 1
            elif rng.random() < 0.03:
                parked = rng.randrange(3, 15)
            else:
                if rng.random() < 0.15 or _metres(lat, lng, *centre) > 1200:
                    heading = math.atan2(centre[1] - lng, centre[0] - lat) if rng.random() < 0.5 else rng.uniform(
                        0, 2 * math.pi)
                step = speed * every_s
                lat, lng = _offset(lat, lng, step * math.cos(heading), step * math.sin(heading))
            out.pings.append(Ping(f"{prefix}-d{d:02d}", k + 1, base_ts + k * every_s * 1000 + offset_ms, lat, lng))
    for i in range(rides):
        lat, lng = _offset(*centre, rng.uniform(-900, 900), rng.uniform(-900, 900))
        req = Request(f"{prefix}-r{i:03d}", base_ts + rng.randrange(minutes * 60_000), lat, lng)
        out.requests.append(req)
        if i % 15 == 0:
            out.requests.append(req)  # a producer retry: the same request again
        if i % 5 == 0:
            out.others.append(Request(req.ride, req.ts + 2_000, lat, lng))
    out.pings.sort(key=lambda p: p.ts)
    out.requests.sort(key=lambda r: r.ts)
    return out


def _rings(cell: str, k: int) -> list[set[str]]:
    disks = [set(h3.grid_disk(cell, d)) for d in range(k + 1)]
    return [disks[0]] + [disks[d] - disks[d - 1] for d in range(1, k + 1)]


def _specs(p: Params) -> list[tuple[str, int, int]]:
    out = []
    for size in p.windows_s:
        out.append(("TUMBLING", size * 1000, size * 1000))
        if p.hop_s != size:
            out.append(("HOPPING", size * 1000, p.hop_s * 1000))
    return out


def _travel(points: list[Ping], p: Params) -> tuple[float, int, int]:
    """Metres, ms and segments of travel between consecutive fixes (one driver, one cell, in order)."""
    dist, ms, segments = 0.0, 0, 0
    for a, b in zip(points, points[1:]):
        dt = b.ts - a.ts
        if dt <= 0 or dt > p.max_gap_ms:
            continue
        m = _metres(a.lat, a.lng, b.lat, b.lng)
        if p.min_mps <= m * 1000 / dt <= p.max_mps:
            dist, ms, segments = dist + m, ms + dt, segments + 1
    return dist, ms, segments


def _window(pings: list[Ping], requests: list[Request], cells_of: dict[Any, str], p: Params) -> dict[str, dict]:
    """Per cell with activity: supply, demand and travel in one window."""
    per: dict[str, dict] = {}

    def cell(c: str) -> dict:
        return per.setdefault(c, {"drivers": set(), "rides": set(), "dist": 0.0, "ms": 0, "segments": 0})

    tracks: dict[tuple[str, str], list[Ping]] = {}
    for x in pings:
        c = cells_of[x]
        cell(c)["drivers"].add(x.driver)
        tracks.setdefault((x.driver, c), []).append(x)
    for r in requests:
        cell(cells_of[r])["rides"].add(r.ride)
    for (_, c), points in tracks.items():
        dist, ms, segments = _travel(sorted(points, key=lambda x: x.seq), p)
        per[c]["dist"] += dist
        per[c]["ms"] += ms
        per[c]["segments"] += segments
    return per


def _features(c: str, per: dict[str, dict], p: Params) -> dict[str, Any]:
    k = len(p.weights) - 1
    rings = _rings(c, k)
    norm = sum(w * len(ring) for w, ring in zip(p.weights, rings))

    def smoothed(what: str) -> float:
        return sum(w * sum(len(per[n][what]) for n in ring if n in per) for w, ring in zip(p.weights, rings)) / norm

    s_supply, s_demand = smoothed("drivers"), smoothed("rides")
    ratio = (s_demand + p.prior) / (s_supply + p.prior)
    own = per.get(c, {"drivers": (), "rides": (), "dist": 0.0, "ms": 0, "segments": 0})
    if own["ms"] and own["ms"] >= p.min_moving_s * 1000:
        speed, source, segments = own["dist"] * 1000 / own["ms"], "CELL", own["segments"]
    else:
        speed, source, segments = p.default_speed, "DEFAULT", 0
    return {
        "supply": len(own["drivers"]), "demand": len(own["rides"]), "smoothed_supply": s_supply,
        "smoothed_demand": s_demand, "surge": min(p.cap, max(p.floor, 1 + p.sensitivity * (ratio - 1))),
        "speed_mps": speed, "speed_source": source, "speed_segments": segments,
    }


def reference(stream: Stream, p: Params = Params()) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """(cell, kind, size_s, start_ts) -> expected final features, for every window holding activity."""
    cells_of: dict[Any, str] = {x: h3.latlng_to_cell(x.lat, x.lng, p.resolution) for x in stream.pings}
    cells_of.update({r: h3.latlng_to_cell(r.lat, r.lng, p.resolution) for r in stream.requests})
    times = [x.ts for x in stream.pings] + [r.ts for r in stream.requests]
    first, last = min(times), max(times)
    out = {}
    for kind, size, step in _specs(p):
        end = (first // step + 1) * step
        while end - size <= last:
            pings = [x for x in stream.pings if end - size <= x.ts < end]
            requests = [r for r in stream.requests if end - size <= r.ts < end]
            if pings or requests:
                per = _window(pings, requests, cells_of, p)
                emitted = set().union(*(h3.grid_disk(c, len(p.weights) - 1) for c in per))
                for c in emitted:
                    out[(c, kind, size // 1000, end - size)] = _features(c, per, p)
            end += step
    return out
