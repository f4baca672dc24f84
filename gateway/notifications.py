"""What the notifications API does: check who may, validate, produce to `notification-requests`.

- POST /v1/notifications (system, ops): a notification for a user, with its idempotency_key.
- GET/PUT /v1/users/{id}/preferences, GET /v1/users/{id}/notifications, POST .../notifications/read,
  POST .../notifications/{nid}/ack (a web push click), POST /v1/push-subscriptions: the user itself, or ops.
- An ack of `user:{id}` on /live from the user itself: the in-app receipt (ACK with the seq).

Reads come from the `user:{id}` channel's state (its `inbox` message: unread count, the latest items,
the preferences), which the notifications agent pushes after each change. Each caller has a token
bucket (`notify_api_rate_per_s`).
"""
from __future__ import annotations

import json
from typing import Any, Callable

from agents.commands import notification_request
from agents.notify_flow import PreferencesError, parse_preferences, user_channel
from gateway.auth import Principal
from gateway.channels import ChannelStore
from gateway.errors import Forbidden, InvalidInput, NotFound, TooManyRequests
from gateway.limits import Buckets
from infra.clock import now_ms
from infra.producer import AsyncProducer
from infra.settings import Settings
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.records import NOTIFY_CHANNELS, NotificationRequest
from schemas.topics import NOTIFICATION_REQUESTS
from schemas.validation import field_errors

__all__ = ["NotifyDesk", "may_act_for"]

FORWARDED_MAX = 100_000  # users whose last forwarded ack is remembered
REQUEST_FIELDS = frozenset({"user_id", "idempotency_key", "category", "priority", "expires_at", "title", "body",
                            "data", "channels"})


def may_act_for(principal: Principal, user_id: str) -> bool:
    """A user's own notifications: the user itself (any role's subject), or ops."""
    return principal.role == "ops" or principal.sub == user_id


class NotifyDesk:
    def __init__(self, settings: Settings, store: ChannelStore) -> None:
        self.store = store
        self.producer: AsyncProducer | None = None  # set while the app runs (gateway.main)
        self.codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.limits = Buckets(settings.notify_api_rate_per_s)
        self.forwarded: dict[str, int] = {}  # user id -> highest in-app seq forwarded (acks are cumulative)

    async def start(self, producer: AsyncProducer) -> None:
        self.producer = producer

    async def _produce(self, r: typed.NotificationRequest) -> None:
        assert self.producer is not None, "the notify desk runs with the app"
        group = self.producer.group()
        self.producer.send(group, NOTIFICATION_REQUESTS.name, self.codec.dumps(r), key=r["user_id"].encode())
        await group.wait()

    def _limit(self, principal: Principal) -> None:
        """The notification API's own rate, for every role (ops included): each call may fan out."""
        retry_s = self.limits.take(f"{principal.role}:{principal.sub}")
        if retry_s is not None:
            raise TooManyRequests("notification API rate limit", retry_s)

    def _check(self, principal: Principal, user_id: str) -> None:
        self._limit(principal)
        if not may_act_for(principal, user_id):
            raise Forbidden(f"this token may not act for user {user_id!r}")

    # --- the API ----------------------------------------------------------------------------------
    async def request(self, principal: Principal, body: Any) -> dict[str, Any]:
        """POST /v1/notifications: a system's (or ops') request; 202 once Kafka has it."""
        self._limit(principal)
        if principal.role not in ("system", "ops"):
            raise Forbidden("only system and ops tokens may request notifications")
        if not isinstance(body, dict):
            raise InvalidInput("body is a JSON object", [{"index": None, "field": "", "reason": "not an object"}])
        unknown = [k for k in body if k not in REQUEST_FIELDS]
        data = body.get("data")
        fields = {**{k: v for k, v in body.items() if k in REQUEST_FIELDS}, "op": "REQUEST", "ts": now_ms(),
                  "source": principal.sub[:64], "data": json.dumps(data) if data is not None else None}
        problems = [{"index": None, "field": e.field, "reason": e.reason}
                    for e in field_errors(NotificationRequest, fields)]
        problems += [{"index": None, "field": k, "reason": "unknown field"} for k in unknown]
        for name in ("idempotency_key", "category", "title"):
            if not fields.get(name):
                problems.append({"index": None, "field": name, "reason": "is required"})
        channels = fields.get("channels") or []
        if not isinstance(channels, list) or not set(channels) <= set(NOTIFY_CHANNELS):
            problems.append({"index": None, "field": "channels", "reason": f"a list of {', '.join(NOTIFY_CHANNELS)}"})
        if problems:
            raise InvalidInput("not a notification request", problems)
        r = notification_request(
            "REQUEST", fields["user_id"], fields["ts"], idempotency_key=fields["idempotency_key"],
            category=fields["category"], priority=fields.get("priority") or "normal",
            expires_at=int(fields.get("expires_at") or 0), title=fields["title"], body=fields.get("body"),
            data=fields["data"], channels=list(channels), source=fields["source"])
        await self._produce(r)
        return {"user_id": r["user_id"], "idempotency_key": r["idempotency_key"], "accepted": True}

    async def put_preferences(self, principal: Principal, user_id: str, body: Any) -> dict[str, Any]:
        self._check(principal, user_id)
        try:
            prefs = parse_preferences(body)
        except PreferencesError as exc:
            raise InvalidInput("not preferences", [{"index": None, "field": "", "reason": str(exc)}]) from None
        await self._produce(notification_request("PREFERENCES", user_id, now_ms(), payload=json.dumps(prefs)))
        return {"user_id": user_id, "preferences": prefs, "accepted": True}

    def inbox(self, principal: Principal, user_id: str) -> dict[str, Any]:
        """The user's inbox state as last pushed (unread, items, preferences)."""
        self._check(principal, user_id)
        latest = self.store.snapshot(user_channel(user_id), now_ms())
        if latest is None or latest.type != "inbox":
            state = self.store.latest(user_channel(user_id))
            if state is None:
                raise NotFound(f"no notifications for user {user_id!r} within the history window")
            latest = state
        data: dict[str, Any] = latest.data()
        return {**data, "channel_seq": latest.seq}

    async def read(self, principal: Principal, user_id: str, body: Any) -> dict[str, Any]:
        self._check(principal, user_id)
        nid = body.get("notification_id") if isinstance(body, dict) else None
        if not isinstance(nid, str) or not 0 < len(nid) <= 64:
            raise InvalidInput("send {\"notification_id\": id or \"*\"}",
                               [{"index": None, "field": "notification_id", "reason": "is required"}])
        await self._produce(notification_request("READ", user_id, now_ms(), notification_id=nid))
        return {"user_id": user_id, "read": nid}

    async def clicked(self, principal: Principal, user_id: str, nid: str) -> dict[str, Any]:
        """A web push notification clicked (the service worker's `notificationclick`): its receipt."""
        self._check(principal, user_id)
        await self._produce(notification_request("ACK", user_id, now_ms(), notification_id=nid[:64],
                                                 channel="webpush"))
        return {"user_id": user_id, "acked": nid}

    async def subscribe(self, principal: Principal, body: Any) -> dict[str, Any]:
        """POST /v1/push-subscriptions: `{user_id?, subscription: {endpoint, keys: {p256dh, auth}}}`."""
        user_id = body.get("user_id", principal.sub) if isinstance(body, dict) else principal.sub
        sub = body.get("subscription") if isinstance(body, dict) else None
        self._check(principal, str(user_id))
        ok = (isinstance(sub, dict) and isinstance(sub.get("endpoint"), str)
              and str(sub["endpoint"]).startswith(("https://", "http://")) and isinstance(sub.get("keys"), dict)
              and all(isinstance(sub["keys"].get(k), str) for k in ("p256dh", "auth")))
        if not ok or not isinstance(sub, dict):
            raise InvalidInput("not a push subscription", [{"index": None, "field": "subscription",
                                                            "reason": "{endpoint, keys: {p256dh, auth}}"}])
        await self._produce(notification_request("SUBSCRIBE", str(user_id), now_ms(), payload=json.dumps(sub)))
        return {"user_id": user_id, "subscribed": True}

    async def acked(self, principal: Principal, channel: str, seq: int) -> None:
        """A /live ack of `user:{id}` by the user itself: the in-app receipt up to `seq` (forwarded once)."""
        user_id = channel.partition(":")[2]
        if principal.sub != user_id or seq <= self.forwarded.get(user_id, 0):
            return
        if len(self.forwarded) > FORWARDED_MAX:
            self.forwarded.clear()
        self.forwarded[user_id] = seq
        await self._produce(notification_request("ACK", user_id, now_ms(), seq=seq, channel="inapp"))
