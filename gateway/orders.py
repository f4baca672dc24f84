"""The gateway's side of orders: its view of them, the systems' API, and the old polling shape.

Every gateway node follows the compacted `orders` topic (each order as the orders agent last
decided it) into an `OrderView`, and `orders-dlq` for the events the agent refused. That is how
any node answers `GET /v1/orders/{id}` (with an ETag: a poller that has the current version gets
304), authorises `order:{id}` subscriptions (the order's customer), snapshots a channel whose push
history has aged out, and learns what became of an event it sent (applied, late, duplicate, or
refused and why). Decisions are never taken here: a system's request becomes an OrderEvent on
`order-events`, decided by the orders agent (agents.order_flow).

Idempotency: an `Idempotency-Key` names the event (`event_id` derived from the system and the
key), so a retry is the same event, which the agent drops as a duplicate; the node that answered
remembers its answer and returns it again without producing anything, and any other node that
already sees the event in the order's timeline answers from there.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from agents.commands import order_event
from agents.order_flow import FINAL, order_view
from gateway.auth import Principal
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.rides import point_of
from gateway.waiters import Waiters
from infra.clock import now_ms
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.tail import TopicTail
from schemas import records, typed
from schemas.avro import codec_for, typed_codec
from schemas.records import ID_MAX_LEN, ID_PATTERN, ORDER_STATUSES
from schemas.topics import ORDER_EVENTS, ORDERS, ORDERS_DLQ

__all__ = ["OrderDesk", "OrderView", "etag_of", "legacy_shape", "parse_order", "parse_order_event"]

ID_RE = re.compile(ID_PATTERN)
ORDER_FIELDS = frozenset({"order_id", "customer_id", "pickup", "dropoff", "courier_id", "dispatch", "event_id", "ts"})
EVENT_FIELDS = frozenset({"status", "event_id", "ts", "courier_id", "reason"})
EVENT_STATUSES = tuple(s for s in ORDER_STATUSES if s != "CREATED")
EVENT_ID_MAX = 128
REASON_MAX = 500
FUTURE_SLACK_MS = 5 * 60_000  # a source clock this far ahead is wrong, not early
WRITERS = ("system", "ops")
LAG_GRACE_S = 0.3  # an order this node has not seen yet may just be on its way through `orders`
SWEEP_EVERY = 10_000  # orders applied between sweeps of the finished ones


def _problem(field: str, reason: str) -> dict[str, Any]:
    return {"field": field, "reason": reason}


def _an_id(body: dict[str, Any], name: str, problems: list[dict[str, Any]], *, required: bool) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not (isinstance(v, str) and ID_RE.fullmatch(v)):
        problems.append(_problem(name, f"must be an id: 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -"))
        return None
    return v


def _common(body: Any, allowed: frozenset[str], now: int) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The body as an object, the problems found so far (unknown fields, event_id, ts) and the event time."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", [_problem("", "must be a JSON object")])
    problems = [_problem(k, "unknown field") for k in body if k not in allowed]
    event_id = body.get("event_id")
    if event_id is not None and not (isinstance(event_id, str) and 0 < len(event_id) <= EVENT_ID_MAX):
        problems.append(_problem("event_id", f"must be a string of 1-{EVENT_ID_MAX} characters"))
    ts = body.get("ts", now)
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        problems.append(_problem("ts", "must be epoch milliseconds (an integer >= 0)"))
        ts = now
    elif ts > now + FUTURE_SLACK_MS:
        problems.append(_problem("ts", "is more than 5 minutes in the future"))
    return body, problems, ts


def parse_order(body: Any, source: str, now: int) -> tuple[typed.OrderEvent, str | None]:
    """A `POST /v1/orders` body as its CREATED event (order_id "" when the server is to name it) and
    the courier to assign at once, if named; InvalidInput naming every bad field."""
    body, problems, ts = _common(body, ORDER_FIELDS, now)
    order_id = _an_id(body, "order_id", problems, required=False) or ""
    customer = _an_id(body, "customer_id", problems, required=True)
    courier = _an_id(body, "courier_id", problems, required=False)
    pickup, dropoff = point_of(body, "pickup", problems), point_of(body, "dropoff", problems)
    dispatch = body.get("dispatch", False)
    if not isinstance(dispatch, bool):
        problems.append(_problem("dispatch", "must be true or false"))
    if problems:
        raise InvalidInput(f"{len(problems)} invalid field(s)", problems)
    assert pickup is not None and dropoff is not None
    ev = order_event(order_id, body.get("event_id") or "", source, "CREATED", ts, customer_id=customer,
                     pickup_lat=pickup[0], pickup_lng=pickup[1], dropoff_lat=dropoff[0], dropoff_lng=dropoff[1],
                     dispatch=dispatch)
    return ev, courier


def parse_order_event(body: Any, order_id: str, source: str, now: int) -> typed.OrderEvent:
    """A `POST /v1/orders/{id}/events` body as its OrderEvent; InvalidInput naming every bad field."""
    body, problems, ts = _common(body, EVENT_FIELDS, now)
    status = body.get("status")
    if status not in EVENT_STATUSES:
        problems.append(_problem("status", f"must be one of {', '.join(EVENT_STATUSES)}"))
    courier = _an_id(body, "courier_id", problems, required=status == "COURIER_ASSIGNED")
    reason = body.get("reason")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= REASON_MAX):
        problems.append(_problem("reason", f"must be a string of at most {REASON_MAX} characters"))
    if problems:
        raise InvalidInput(f"{len(problems)} invalid field(s)", problems)
    ev = order_event(order_id, body.get("event_id") or "", source, str(status), ts, courier_id=courier, reason=reason)
    return ev


def etag_of(order: typed.Order) -> str:
    """The order's version as a strong ETag: it changes with every change of what GET returns."""
    return f'"{order["order_id"]}.{order["version"]}"'


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def legacy_shape(view: dict[str, Any]) -> dict[str, Any]:
    """An order as the legacy platform's `GET /v1/orders/{id}` returned it (a row of its `orders` table:
    id, customer_id, status, courier_id, pickup, dropoff, updated_at), plus what livetrack knows more
    (courier position, ETA, timeline) under names the old clients do not read."""
    courier = view["courier"]
    return {
        "id": view["order_id"], "customer_id": view["customer_id"], "status": view["status"],
        "courier_id": courier["id"] if courier else None, "pickup": view["pickup"], "dropoff": view["dropoff"],
        "updated_at": _iso(view["updated_ts"]),
        "courier_position": {"lat": courier["lat"], "lng": courier["lng"]} if courier and courier["lat"] is not None
        else None,
        "eta_s": view["eta_s"], "version": view["version"],
        "timeline": [{"status": s["status"], "at": _iso(s["ts"]), "source": s["source"], "late": s["late"]}
                     for s in view["timeline"]],
    }


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


class OrderView:
    """Latest state of each order seen on `orders`, what was refused on `orders-dlq`, and waiters."""

    def __init__(self, *, keep_final_ms: int = 30 * 24 * 3600 * 1000) -> None:
        self.orders: dict[str, typed.Order] = {}
        self.keep_final_ms = keep_final_ms  # a finished order is forgotten this long after its last change
        self._applied = 0
        self.refused: OrderedDict[str, str] = OrderedDict()  # event_id -> the agent's reason
        self._waiters = Waiters()
        self._event_codec = typed_codec(records.OrderEvent, typed.OrderEvent)

    def customer_of(self, order_id: str) -> str | None:
        """The customer of an order (may_subscribe's `order_customer`)."""
        order = self.orders.get(order_id)
        return order["customer_id"] if order else None

    def get(self, order_id: str) -> typed.Order | None:
        return self.orders.get(order_id)

    def state_of(self, channel: str) -> dict[str, Any] | None:
        """An `order:{id}` channel's state as a snapshot payload, for a subscriber whose channel's push
        history has aged out (a quiet order); None for any other channel or an unknown order."""
        kind, _, order_id = channel.partition(":")
        order = self.orders.get(order_id) if kind == "order" else None
        if order is None:
            return None
        return {"channel": channel, "seq": order["push_seq"], "type": "order.status", "ts": order["updated_ts"],
                "priority": 0, "data": order_view(order)}

    async def apply(self, batch: list[typed.Order]) -> None:
        """Take decoded Orders (the tail's handler); a version already seen is a replay."""
        for order in batch:
            held = self.orders.get(order["order_id"])
            if held is None or order["version"] > held["version"]:
                self.orders[order["order_id"]] = order
                self._waiters.wake(order["order_id"])
        self._applied += len(batch)
        if self._applied >= SWEEP_EVERY:
            self._applied = 0
            self.sweep(now_ms())

    def sweep(self, now: int) -> int:
        """Forget finished orders older than `keep_final_ms` (memory stays bounded); how many."""
        old = [k for k, o in self.orders.items() if o["status"] in FINAL and o["updated_ts"] < now - self.keep_final_ms]
        for k in old:
            del self.orders[k]
        return len(old)

    async def apply_refused(self, batch: list[dict[str, Any]]) -> None:
        """Take decoded DeadLetters of `orders-dlq`: the refused event's id and the reason."""
        for letter in batch:
            try:
                ev = self._event_codec.loads(letter["value"])
            except Exception:  # the letter of an undecodable record: no event id to answer for
                continue
            self.refused[ev["event_id"]] = letter["reason"]
            while len(self.refused) > 10_000:
                self.refused.popitem(last=False)
            self._waiters.wake(ev["order_id"])

    def outcome(self, order_id: str, event_id: str) -> tuple[str, str | None] | None:
        """What became of an event: ("applied" | "late", None), ("refused", reason), or None (not yet)."""
        if event_id in self.refused:
            return "refused", self.refused[event_id]
        order = self.orders.get(order_id)
        step = next((s for s in order["timeline"] if s["event_id"] == event_id), None) if order else None
        if step is None:
            return None
        return ("late" if step["late"] else "applied"), None

    async def known(self, order_id: str, timeout_s: float) -> typed.Order | None:
        """The order once this node's view has it (it may be on its way through `orders`), or None."""
        return await self._waiters.until(order_id, lambda: self.orders.get(order_id), timeout_s)

    async def wait_for(self, order_id: str, event_id: str, timeout_s: float) -> tuple[str, str | None] | None:
        """The event's outcome once known, or None after timeout_s."""
        return await self._waiters.until(order_id, lambda: self.outcome(order_id, event_id), timeout_s)


class OrderDesk:
    """What the orders API does: validate, name the event, produce it, answer with its outcome."""

    def __init__(self, settings: Settings, view: OrderView) -> None:
        self.settings = settings
        self.view = view
        self.producer: AsyncProducer | None = None  # set while the app runs (gateway.main)
        self.tails: list[TopicTail[Any]] = []
        self.event_codec = typed_codec(records.OrderEvent, typed.OrderEvent)
        self.answers: OrderedDict[tuple[str, str], tuple[str, int, dict[str, Any]]] = OrderedDict()
        self.timeout_s = settings.order_reply_timeout_s

    async def start(self, producer: AsyncProducer) -> None:
        self.producer = producer
        order_codec, dlq_codec = typed_codec(records.Order, typed.Order), codec_for(records.DeadLetter)
        s = self.settings
        self.tails = [
            TopicTail(s.bootstrap, ORDERS.name, lambda _k, v: order_codec.loads(v), self.view.apply,
                      replay_ms=s.order_view_replay_ms, client_id=f"{s.app_id}-orders"),
            TopicTail(s.bootstrap, ORDERS_DLQ.name, lambda _k, v: dlq_codec.loads(v), self.view.apply_refused,
                      replay_ms=s.push_history_age_ms, client_id=f"{s.app_id}-orders-dlq"),
        ]
        for tail in self.tails:
            await tail.start()

    async def stop(self) -> None:
        for tail in self.tails:
            await tail.stop()

    @property
    def ready(self) -> bool:
        return bool(self.tails) and all(t.ready.is_set() for t in self.tails)

    # --- the API ------------------------------------------------------------------------------------
    async def create(self, principal: Principal, body: Any, key: str | None) -> tuple[int, dict[str, Any]]:
        """POST /v1/orders: 201 with the order once created, 202 if not known in time, 409 if refused."""
        self._writer(principal)
        ev, courier = parse_order(body, principal.sub, now_ms())
        if not ev["order_id"]:
            ev["order_id"] = "o-" + (_digest(principal.sub, key) if key else uuid.uuid4().hex[:24])
        fingerprint = _digest(json.dumps(body, sort_keys=True))
        return await self._submit(principal, ev, key, fingerprint, created=True, courier=courier)

    async def add_event(self, principal: Principal, order_id: str, body: Any,
                        key: str | None) -> tuple[int, dict[str, Any]]:
        """POST /v1/orders/{id}/events: 200 with the order once applied, 202 if not known in time, 409 if
        refused (illegal transition, unknown order), 404 if this node has never heard of the order."""
        self._writer(principal)
        if not ID_RE.fullmatch(order_id):
            raise InvalidInput("bad order id", [_problem("order_id", f"must be an id of 1-{ID_MAX_LEN} characters")])
        ev = parse_order_event(body, order_id, principal.sub, now_ms())
        fingerprint = _digest(order_id, json.dumps(body, sort_keys=True))
        return await self._submit(principal, ev, key, fingerprint, created=False)

    def get(self, principal: Principal, order_id: str) -> typed.Order:
        """The order for GET /v1/orders/{id}: its customer, systems and ops; 404 when unknown here."""
        order = self.view.get(order_id)
        if order is None:
            raise NotFound(f"unknown order {order_id!r}")
        if principal.role not in WRITERS and not (principal.role == "customer" and
                                                  order["customer_id"] == principal.sub):
            raise Forbidden(f"this token may not read order {order_id!r}")
        return order

    # --- how ----------------------------------------------------------------------------------------
    @staticmethod
    def _writer(principal: Principal) -> None:
        if principal.role not in WRITERS:
            raise Forbidden(f"a {principal.role} token may not write orders (system or ops tokens may)")

    async def _submit(self, principal: Principal, ev: typed.OrderEvent, key: str | None, fingerprint: str, *,
                      created: bool, courier: str | None = None) -> tuple[int, dict[str, Any]]:
        remembered = self._remembered(principal, key, fingerprint)
        if remembered is not None:
            return remembered
        if not ev["event_id"]:  # a retry with the same key is the same event
            ev["event_id"] = f"{principal.sub}:" + (_digest(principal.sub, key, ev["order_id"]) if key
                                                    else uuid.uuid4().hex[:24])
        if not created and await self.view.known(ev["order_id"], LAG_GRACE_S) is None:
            raise NotFound(f"unknown order {ev['order_id']!r}")
        known = self.view.outcome(ev["order_id"], ev["event_id"])
        events = [ev]
        if courier is not None:  # named at creation: confirmed and assigned in the same breath
            events += [order_event(ev["order_id"], f"{ev['event_id']}:c", ev["source"], "CONFIRMED", ev["ts"]),
                       order_event(ev["order_id"], f"{ev['event_id']}:a", ev["source"], "COURIER_ASSIGNED", ev["ts"],
                                   courier_id=courier)]
        if known is None:
            await self._produce(events)
            known = await self.view.wait_for(ev["order_id"], events[-1]["event_id"], self.timeout_s)
        answer = self._answer(ev, known, created)
        if key:
            self.answers[(principal.sub, key)] = (fingerprint, *answer)
            while len(self.answers) > self.settings.idempotency_keys_max:
                self.answers.popitem(last=False)
        return answer

    def _remembered(self, principal: Principal, key: str | None, fingerprint: str) -> tuple[int, dict[str, Any]] | None:
        if not key:
            return None
        if len(key) > 255:
            raise InvalidInput("bad Idempotency-Key", [_problem("Idempotency-Key", "at most 255 characters")])
        held = self.answers.get((principal.sub, key))
        if held is None:
            return None
        if held[0] != fingerprint:
            raise Conflict("this Idempotency-Key was used with another request")
        return held[1], held[2]

    async def _produce(self, events: list[typed.OrderEvent]) -> None:
        assert self.producer is not None, "the order desk runs with the app"
        group = self.producer.group()
        for ev in events:
            self.producer.send(group, ORDER_EVENTS.name, self.event_codec.dumps(ev), key=ev["order_id"].encode())
        await group.wait()

    def _answer(self, ev: typed.OrderEvent, known: tuple[str, str | None] | None,
                created: bool) -> tuple[int, dict[str, Any]]:
        base = {"order_id": ev["order_id"], "event_id": ev["event_id"], "status": ev["type"]}
        if known is None:
            return 202, {**base, "outcome": "pending"}
        outcome, reason = known
        if outcome == "refused":
            raise Conflict(f"refused: {reason}")
        order = self.view.get(ev["order_id"])
        assert order is not None
        return (201 if created else 200), {**base, "outcome": outcome, "order": order_view(order)}
