"""HTTP views: thin; domain errors are raised and mapped to HTTP in middlewares.py."""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auth import may_publish, may_subscribe, principal_of
from gateway.errors import Forbidden, InvalidInput, NotFound
from gateway.ingest import parse_locations
from gateway.keys import BATCHER, BRIDGE, LIVE, METRICS, RIDES, SETTINGS, STORE
from infra.clock import now_ms
from schemas.records import LocationEvent

__all__ = ["post_locations", "get_driver", "post_ride", "get_ride", "ride_action", "healthz", "metrics", "index"]

STATIC = Path(__file__).parent / "static"


async def _json_body(request: web.Request) -> object:
    raw = await request.read()  # over client_max_size aiohttp raises 413 itself
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("body is not JSON", [{"index": None, "field": "", "reason": str(exc)}]) from None


async def post_locations(request: web.Request) -> web.Response:
    """Accept one ping or a batch; 202 once Kafka has acked every one of them."""
    app = request.app
    events = parse_locations(
        await _json_body(request), max_items=app[SETTINGS].ingest_max_items,
        received_ts=now_ms(),
    )
    _check_publisher(request, events)
    await app[BATCHER].submit(events)
    app[METRICS].ingested.inc(len(events))
    return web.json_response({"accepted": len(events)}, status=202)


def _check_publisher(request: web.Request, events: list[LocationEvent]) -> None:
    """All-or-nothing: one ping for a driver the caller may not speak for refuses the request."""
    principal = principal_of(request)
    problems = [
        {"index": i, "field": "driver_id", "reason": f"a {principal.role} token may not publish for this driver"}
        for i, e in enumerate(events) if not may_publish(principal, e.driver_id)
    ]
    if problems:
        raise Forbidden(f"{len(problems)} location(s) for drivers this token does not speak for", problems)


async def get_driver(request: web.Request) -> web.Response:
    """The driver as subscribers last saw it (the snapshot of `driver:{id}`)."""
    driver_id = request.match_info["driver_id"]
    request.app[METRICS].driver_reads.inc()  # what polling costs (bench-push compares it with pushing)
    if not may_subscribe(principal_of(request), f"driver:{driver_id}", request.app[LIVE].ride_rider):
        raise Forbidden(f"this token may not read driver {driver_id!r}")
    update = request.app[STORE].latest(f"driver:{driver_id}")
    if update is None:
        raise NotFound(f"unknown driver {driver_id!r}")
    return web.json_response({**update.data(), "channel_seq": update.seq})


async def post_ride(request: web.Request) -> web.Response:
    """Request a ride: 201 with the server's fare estimate and pickup ETA (202 if dispatch is slow)."""
    status, body = await request.app[RIDES].request(
        principal_of(request), await _json_body(request), request.headers.get("Idempotency-Key"))
    return web.json_response(body, status=status, headers={"Location": f"/v1/rides/{body['ride_id']}"})


async def get_ride(request: web.Request) -> web.Response:
    """The ride as this node's view of `rides` has it, for its rider, its drivers and ops."""
    return web.json_response(await request.app[RIDES].get(principal_of(request), request.match_info["ride_id"]))


async def ride_action(request: web.Request) -> web.Response:
    """cancel (rider, assigned driver, ops), accept / decline (the offered driver), start / complete
    (the assigned driver): 200 with the ride once done, 202 if the outcome is not known in time."""
    desk, principal = request.app[RIDES], principal_of(request)
    ride_id, action = request.match_info["ride_id"], request.match_info["action"]
    if action == "cancel":
        body = await _json_body(request) if request.can_read_body else {}
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and not (isinstance(reason, str) and len(reason) <= 200):
            raise InvalidInput("bad reason", [{"field": "reason", "reason": "must be a string of at most 200"}])
        status, out = await desk.cancel(principal, ride_id, reason)
    elif action in ("accept", "decline"):
        status, out = await desk.answer(principal, ride_id, action.upper())
    elif action in ("start", "complete"):
        status, out = await desk.by_driver(principal, ride_id, action.upper())
    else:
        raise NotFound(f"no action {action!r}: cancel, accept, decline, start or complete")
    return web.json_response(out, status=status)


async def healthz(request: web.Request) -> web.Response:
    ready = request.app[BRIDGE].ready.is_set() and request.app[RIDES].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")
