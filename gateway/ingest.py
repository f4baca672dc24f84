"""Turn an ingest request body into LocationEvents, or into every reason it is refused."""
from __future__ import annotations

from typing import Any

from gateway.errors import InvalidInput, PayloadTooLarge
from schemas.records import LocationEvent
from schemas.validation import field_errors

__all__ = ["parse_locations"]

# The API names the device's fix time `ts`; the server stamps `received_ts`.
_API_NAMES = {"fix_ts": "ts"}
_SERVER_FIELDS = frozenset({"received_ts"})


def parse_locations(body: Any, *, max_items: int, received_ts: int) -> list[LocationEvent]:
    """All events of a request, or InvalidInput naming every bad item (all-or-nothing)."""
    items = body if isinstance(body, list) else [body]
    if len(items) > max_items:
        raise PayloadTooLarge(f"at most {max_items} locations per request, got {len(items)}")
    if not items:
        raise InvalidInput("no locations", [{"index": None, "field": "", "reason": "empty array"}])
    problems = [
        {"index": i, "field": e.field, "reason": e.reason}
        for i, item in enumerate(items)
        for e in field_errors(LocationEvent, item, skip=_SERVER_FIELDS, names=_API_NAMES)
    ]
    if problems:
        raise InvalidInput(f"{len({p['index'] for p in problems})} invalid location(s)", problems)
    return [
        LocationEvent(
            driver_id=item["driver_id"], seq=item["seq"], lat=float(item["lat"]), lng=float(item["lng"]),
            fix_ts=item["ts"], received_ts=received_ts, accuracy=_opt_float(item.get("accuracy")),
            speed=_opt_float(item.get("speed")), bearing=_opt_float(item.get("bearing")),
        )
        for item in items
    ]


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
