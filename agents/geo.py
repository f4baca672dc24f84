"""Distances and H3 cells."""
from __future__ import annotations

import math

import h3

__all__ = ["EARTH_RADIUS_M", "haversine_m", "cell_of"]

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def cell_of(lat: float, lng: float, resolution: int) -> str:
    """The H3 cell (hex string) containing a point."""
    cell: str = h3.latlng_to_cell(lat, lng, resolution)
    return cell
