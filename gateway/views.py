"""HTTP views: thin; domain errors are raised and mapped to HTTP in middlewares.py."""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.order_flow import order_view
from gateway.auth import may_publish, may_subscribe, principal_of
from gateway.errors import Forbidden, InvalidInput, NotFound
from gateway.ingest import parse_locations
from gateway.keys import BATCHER, BRIDGE, LIVE, METRICS, NOTIFY, ORDERS, RIDES, SETTINGS, STORE
from gateway.orders import etag_of, legacy_shape
from infra.clock import now_ms
from schemas.records import LocationEvent

__all__ = [
    "post_locations", "get_driver", "post_driver_status", "post_ride", "get_ride", "ride_action", "post_order",
    "post_order_event", "get_order", "post_notification", "post_push_subscription", "get_preferences",
    "put_preferences", "get_notifications", "read_notifications", "ack_notification", "healthz", "metrics", "index",
    "track",
]


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


async def post_driver_status(request: web.Request) -> web.Response:
    """The driver goes online, offline or on a break (its app): 202 once Kafka has it; the outcome
    reaches `driver:{id}` (`driver.status`)."""
    body = await _json_body(request)
    status = body.get("status") if isinstance(body, dict) else None
    driver_id = request.match_info["driver_id"]
    await request.app[RIDES].set_status(principal_of(request), driver_id, status)
    return web.json_response({"driver_id": driver_id, "submitted": status}, status=202)


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


async def post_order(request: web.Request) -> web.Response:
    """A system creates an order: 201 with it once the orders agent has it (202 if slow, 409 refused)."""
    status, body = await request.app[ORDERS].create(
        principal_of(request), await _json_body(request), request.headers.get("Idempotency-Key"))
    return web.json_response(body, status=status, headers={"Location": f"/v1/orders/{body['order_id']}"})


async def post_order_event(request: web.Request) -> web.Response:
    """A system reports a status of an order: 200 with the order once applied (202 if slow, 409 refused)."""
    status, body = await request.app[ORDERS].add_event(
        principal_of(request), request.match_info["order_id"], await _json_body(request),
        request.headers.get("Idempotency-Key"))
    return web.json_response(body, status=status)


async def get_order(request: web.Request) -> web.Response:
    """The order, in the shape the legacy platform's pollers read, with an ETag: 304 when unchanged."""
    order = request.app[ORDERS].get(principal_of(request), request.match_info["order_id"])
    etag = etag_of(order)
    unchanged = request.headers.get("If-None-Match") == etag
    request.app[METRICS].order_reads.labels("304" if unchanged else "200").inc()
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if unchanged:
        return web.Response(status=304, headers=headers)
    return web.json_response(legacy_shape(order_view(order)), headers=headers)


async def healthz(request: web.Request) -> web.Response:
    ready = request.app[BRIDGE].ready.is_set() and request.app[RIDES].ready and request.app[ORDERS].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def track(request: web.Request) -> web.FileResponse:
    """The customer's tracking page of one order (the order id and token are read by the page)."""
    return web.FileResponse(STATIC / "track.html")


# --- notifications (gateway.notifications) ---------------------------------------------------------

async def post_notification(request: web.Request) -> web.Response:
    """A system's notification request; 202 once Kafka has it (the same idempotency_key is one notification)."""
    answer = await request.app[NOTIFY].request(principal_of(request), await _json_body(request))
    return web.json_response(answer, status=202)


async def post_push_subscription(request: web.Request) -> web.Response:
    answer = await request.app[NOTIFY].subscribe(principal_of(request), await _json_body(request))
    return web.json_response(answer, status=202)


async def get_preferences(request: web.Request) -> web.Response:
    inbox = request.app[NOTIFY].inbox(principal_of(request), request.match_info["user_id"])
    return web.json_response({"user_id": request.match_info["user_id"], "preferences": inbox.get("preferences")})


async def put_preferences(request: web.Request) -> web.Response:
    answer = await request.app[NOTIFY].put_preferences(principal_of(request), request.match_info["user_id"],
                                                       await _json_body(request))
    return web.json_response(answer, status=202)


async def get_notifications(request: web.Request) -> web.Response:
    return web.json_response(request.app[NOTIFY].inbox(principal_of(request), request.match_info["user_id"]))


async def read_notifications(request: web.Request) -> web.Response:
    answer = await request.app[NOTIFY].read(principal_of(request), request.match_info["user_id"],
                                            await _json_body(request))
    return web.json_response(answer, status=202)


async def ack_notification(request: web.Request) -> web.Response:
    answer = await request.app[NOTIFY].clicked(principal_of(request), request.match_info["user_id"],
                                               request.match_info["notification_id"])
    return web.json_response(answer, status=202)
