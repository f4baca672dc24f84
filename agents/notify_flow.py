"""A user's notifications (pure): what one `notification-requests` record does to one user's state.

Per op, against the user's NotificationUser (table `user_to_notifications`):

- REQUEST: a key seen within the dedupe window is a *duplicate* (audited, nothing else). Otherwise the
  notification joins the inbox with its ladder: the category's first step (now) and its escalation
  step (`escalation_ms` later, cancelled by an ack). Each due step is *fired* at once.
- TICK (the agent's timer, per user with a due step): fires every step whose time has come.
- ACK: cumulative, as the client acks `user:{id}` (every in-app notification up to `seq`), or one
  notification by id (a web push click): delivered, and its escalation cancelled.
- READ, PREFERENCES, SUBSCRIBE, RESULT (a web push 404/410 removes the subscription): state only.

Firing a step, channel by channel, in this order: expired (past `expires_at`: never sent late);
cancelled (an escalation after an ack); suppressed (opted out, no address, or over the channel's cap);
deferred (non-critical inside quiet hours: the step waits for the window's end, or its expiry if that
comes first, then fires again); sent: in-app as a PushMessage on `user:{id}` (seq owned here), the
others as a NotificationDelivery for the senders agent. Critical notifications bypass quiet hours and
caps. Every step is a NotificationAudit.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agents.quiet_hours import QuietHoursError, parse_quiet_hours, quiet_end
from schemas import typed
from schemas.records import NOTIFY_CHANNELS

__all__ = [
    "DEFAULT_LADDER", "LADDERS", "NotifyPolicy", "NotifyStep", "PreferencesError", "apply_notification",
    "new_user", "next_due", "notification_id", "parse_preferences", "user_channel",
]

User = typed.NotificationUser
Note = typed.UserNotification
Request = typed.NotificationRequest
Ladder = tuple[tuple[str, ...], tuple[str, ...]]  # channels now, channels on escalation

# Each category's ladder: the first step's channels, then the escalation's (after `escalation_ms`,
# unless the user acked in-app or clicked the web push first).
LADDERS: dict[str, Ladder] = {
    "ride.assigned": (("inapp", "webpush"), ("sms",)),
    "ride.driver_arriving": (("inapp", "webpush"), ("sms",)),
    "ride.started": (("inapp", "webpush"), ()),
    "ride.completed": (("inapp", "email"), ()),
    "ride.no_drivers": (("inapp", "webpush"), ("sms",)),
    "order.confirmed": (("inapp", "email"), ()),
    "order.courier_assigned": (("inapp", "webpush"), ()),
    "order.out_for_delivery": (("inapp", "webpush"), ()),
    "order.arriving": (("inapp", "webpush"), ("sms",)),
    "order.delivered": (("inapp", "email"), ()),
    "order.failed": (("inapp", "email"), ("sms",)),
    "driver.offer": (("inapp", "webpush"), ()),
}
DEFAULT_LADDER: Ladder = (("inapp", "webpush", "email"), ("sms",))
INAPP_PRIORITY = 8  # must-ack on /live: resent until the client acks it (its receipt)
CRITICAL_PRIORITY = 9
INBOX_PRIORITY = 1  # the inbox's state: the latest supersedes
INBOX_SHOWN = 20
SUBSCRIPTIONS_MAX = 5


class PreferencesError(ValueError):
    """Preferences that are not what PUT /v1/users/{id}/preferences takes."""


@dataclass(frozen=True)
class NotifyPolicy:
    escalation_ms: int
    dedupe_window_ms: int
    inbox_max: int
    caps: dict[str, int]  # channel -> non-critical sends per cap window (absent: no cap)
    cap_window_ms: int = 3_600_000
    seen_max: int = 256  # idempotency keys kept per user (the newest): the dedupe window is also bounded by it


@dataclass
class NotifyStep:
    """What one record did: the user after it (None: unchanged), in-app pushes, sends, audit steps."""

    outcome: str
    user: User | None = None
    pushes: list[typed.PushMessage] = field(default_factory=list)
    deliveries: list[typed.NotificationDelivery] = field(default_factory=list)
    audits: list[typed.NotificationAudit] = field(default_factory=list)
    refusal: str | None = None


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def notification_id(user_id: str, idempotency_key: str) -> str:
    """A notification's id: the same user and key always give the same id (and Message-ID, Topic)."""
    return hashlib.sha256(f"{user_id}\0{idempotency_key}".encode()).hexdigest()[:32]


def new_user(user_id: str) -> User:
    return {"user_id": user_id, "preferences": "{}", "subscriptions": [], "push_seq": 0, "inbox": [], "seen": {},
            "sends": []}


# --- preferences ---------------------------------------------------------------------------------

def parse_preferences(value: object) -> dict[str, Any]:
    """Preferences checked and normalised: `{email?, phone?, opt_out: {category|"*": [channel]},
    quiet_hours: {start, end, tz} | null, caps: {channel: n per hour}}`; PreferencesError otherwise."""
    if not isinstance(value, dict):
        raise PreferencesError("preferences are a JSON object")
    unknown = set(value) - {"email", "phone", "opt_out", "quiet_hours", "caps"}
    if unknown:
        raise PreferencesError(f"unknown preference(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"email": _text(value, "email", 254), "phone": _text(value, "phone", 20)}
    opt_out = value.get("opt_out") or {}
    if not isinstance(opt_out, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and set(v) <= set(NOTIFY_CHANNELS) for k, v in opt_out.items()):
        raise PreferencesError(f"opt_out maps a category (or *) to channels of {', '.join(NOTIFY_CHANNELS)}")
    out["opt_out"] = {k: sorted(set(v)) for k, v in opt_out.items()}
    try:
        parse_quiet_hours(value.get("quiet_hours"))
    except QuietHoursError as exc:
        raise PreferencesError(str(exc)) from None
    out["quiet_hours"] = value.get("quiet_hours") or None
    caps = value.get("caps") or {}
    if not isinstance(caps, dict) or not all(
            k in NOTIFY_CHANNELS and type(v) is int and v >= 0 for k, v in caps.items()):
        raise PreferencesError("caps maps a channel to a whole number of sends per hour")
    out["caps"] = caps
    return out


def _text(value: dict[str, Any], name: str, max_len: int) -> str | None:
    v = value.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not 0 < len(v) <= max_len:
        raise PreferencesError(f"{name} is a string of 1 to {max_len} characters")
    return v


def _prefs(user: User) -> dict[str, Any]:
    loaded = json.loads(user["preferences"])
    return loaded if isinstance(loaded, dict) else {}


# --- the decision --------------------------------------------------------------------------------

class _Decision:
    """The working copy of one user while one record is decided."""

    def __init__(self, user: User, policy: NotifyPolicy, now_ms: int) -> None:
        self.user: User = {**user, "inbox": [dict(n) for n in user["inbox"]],  # type: ignore[misc]
                           "seen": dict(user["seen"]), "sends": list(user["sends"]),
                           "subscriptions": list(user["subscriptions"])}
        self.policy = policy
        self.now = now_ms
        self.prefs = _prefs(user)
        self.step = NotifyStep("applied")
        self.inbox_changed = False

    def audit(self, n: Note, step: str, channel: str | None = None, reason: str | None = None) -> None:
        self.step.audits.append({
            "notification_id": n["notification_id"], "user_id": self.user["user_id"], "step": step, "ts": self.now,
            "channel": channel, "reason": reason, "provider": None, "idempotency_key": n["idempotency_key"],
            "category": n["category"]})

    def push(self, type_: str, priority: int, ttl_ms: int, data: dict[str, Any], event_ts: int) -> int:
        self.user["push_seq"] += 1
        seq = self.user["push_seq"]
        self.step.pushes.append({
            "channel": user_channel(self.user["user_id"]), "seq": seq, "type": type_, "priority": priority,
            "ttl_ms": ttl_ms, "sent_ts": self.now, "event_ts": event_ts, "data": json.dumps(data, separators=(",", ":"))})
        return seq

    def finish(self) -> NotifyStep:
        if self.inbox_changed:
            self.push_inbox()
        self.step.user = self.user
        return self.step

    def push_inbox(self) -> None:
        inbox = self.user["inbox"]
        unread = sum(1 for n in inbox if not n["read"] and n["seq"])
        items = [_view(n) for n in reversed(inbox) if n["seq"]][:INBOX_SHOWN]
        self.push("inbox", INBOX_PRIORITY, 0, {"unread": unread, "items": items, "preferences": self.prefs}, self.now)

    # --- firing -----------------------------------------------------------------------------------
    def fire_due(self) -> None:
        for n in self.user["inbox"]:
            if any(p["due_ms"] <= self.now for p in n["pending"]):
                kept = []
                for p in n["pending"]:
                    later = self.fire(n, p) if p["due_ms"] <= self.now else p
                    if later is not None:
                        kept.append(later)
                n["pending"] = kept

    def fire(self, n: Note, p: typed.PendingSend) -> typed.PendingSend | None:
        """Fire one due step of `n`; what is left of it for later (deferred), or None."""
        channels = list(p["channels"])
        if n["expires_at"] and self.now >= n["expires_at"]:
            for c in channels:
                self.audit(n, "expired", c)
            return None
        if p["escalation"] and n["acked"]:
            for c in channels:
                self.audit(n, "cancelled", c, "acked")
            return None
        channels = [c for c in channels if self.allowed(n, c)]
        critical = n["priority"] == "critical"
        if not critical and channels:
            end = quiet_end(_quiet(self.prefs), self.now)
            if end is not None:
                if not p["deferred"]:
                    for c in channels:
                        self.audit(n, "deferred", c, "quiet hours")
                due = min(end, n["expires_at"]) if n["expires_at"] else end
                return {"channels": channels, "due_ms": due, "escalation": p["escalation"], "deferred": True}
        for c in channels:
            if not critical and self.capped(c):
                self.audit(n, "suppressed", c, "rate cap")
                continue
            self.send(n, c)
        return None

    def allowed(self, n: Note, channel: str) -> bool:
        opted = self.prefs.get("opt_out") or {}
        if channel in opted.get(n["category"], ()) or channel in opted.get("*", ()):
            self.audit(n, "suppressed", channel, "preference")
            return False
        if channel in ("email", "sms") and not self.prefs.get("phone" if channel == "sms" else "email"):
            self.audit(n, "suppressed", channel, "no address")
            return False
        if channel == "webpush" and not self.user["subscriptions"]:
            self.audit(n, "suppressed", channel, "no subscription")
            return False
        return True

    def cap(self, channel: str) -> int | None:
        cap: int | None = (self.prefs.get("caps") or {}).get(channel, self.policy.caps.get(channel))
        return cap

    def capped(self, channel: str) -> bool:
        """Whether `channel` is at its cap; forgets the sends older than the cap window."""
        cap = self.cap(channel)
        since = self.now - self.policy.cap_window_ms
        self.user["sends"] = [s for s in self.user["sends"] if s["ts"] > since]
        return cap is not None and sum(1 for s in self.user["sends"] if s["channel"] == channel) >= cap

    def send(self, n: Note, channel: str) -> None:
        if n["priority"] != "critical" and self.cap(channel) is not None:  # only capped channels are counted
            self.user["sends"].append({"channel": channel, "ts": self.now})
        if channel == "inapp":
            ttl = max(1, n["expires_at"] - self.now) if n["expires_at"] else 0
            prio = CRITICAL_PRIORITY if n["priority"] == "critical" else INAPP_PRIORITY
            n["seq"] = self.push("notification", prio, ttl, _view(n), n["event_ts"])
            self.inbox_changed = True
            self.audit(n, "sent", channel)
            return
        addresses = self.user["subscriptions"] if channel == "webpush" else [
            self.prefs["phone" if channel == "sms" else "email"]]
        for address in addresses:
            self.step.deliveries.append({
                "notification_id": n["notification_id"], "idempotency_key": n["idempotency_key"],
                "user_id": self.user["user_id"], "channel": channel, "address": address, "category": n["category"],
                "priority": n["priority"], "title": n["title"], "body": n["body"], "data": n["data"],
                "expires_at": n["expires_at"], "event_ts": n["event_ts"], "decided_ts": self.now})

    # --- the ops ----------------------------------------------------------------------------------
    def request(self, r: Request) -> None:
        key, category = r["idempotency_key"], r["category"]
        if not key or not category or not r["title"]:
            self.step.refusal = "a REQUEST needs idempotency_key, category and title"
            return
        seen = self.user["seen"]
        horizon = self.now - self.policy.dedupe_window_ms
        for k in [k for k, ts in seen.items() if ts <= horizon]:
            del seen[k]
        nid = notification_id(self.user["user_id"], key)
        n: Note = {"notification_id": nid, "idempotency_key": key, "category": category, "priority": r["priority"],
                   "title": r["title"], "body": r["body"] or "", "data": r["data"], "created_ts": self.now,
                   "event_ts": r["ts"], "expires_at": r["expires_at"], "seq": 0, "acked": False, "read": False,
                   "pending": []}
        if key in seen or any(x["notification_id"] == nid for x in self.user["inbox"]):
            self.step.outcome = "duplicate"
            self.audit(n, "duplicate")
            return
        seen[key] = self.now
        if len(seen) > self.policy.seen_max:
            for k in sorted(seen, key=seen.__getitem__)[:len(seen) - self.policy.seen_max]:
                del seen[k]
        self.audit(n, "requested", reason=r["source"])
        now_channels, later = (tuple(r["channels"]), ()) if r["channels"] else LADDERS.get(category, DEFAULT_LADDER)
        n["pending"] = [{"channels": list(now_channels), "due_ms": self.now, "escalation": False, "deferred": False}]
        if later:
            n["pending"].append({"channels": list(later), "due_ms": self.now + self.policy.escalation_ms,
                                 "escalation": True, "deferred": False})
        self.user["inbox"].append(n)
        self.fire_due()
        self.trim_inbox()

    def trim_inbox(self) -> None:
        inbox = self.user["inbox"]
        excess = len(inbox) - self.policy.inbox_max
        if excess > 0:  # the oldest go, never one with a step still to send
            dropped = {n["notification_id"] for n in inbox if not n["pending"]}
            drop = [n["notification_id"] for n in inbox if n["notification_id"] in dropped][:excess]
            self.user["inbox"] = [n for n in inbox if n["notification_id"] not in set(drop)]

    def ack(self, r: Request) -> None:
        by_id, upto = r["notification_id"], r["seq"]
        for n in self.user["inbox"]:
            hit = n["notification_id"] == by_id if by_id else 0 < n["seq"] <= upto
            if hit and not n["acked"]:
                n["acked"] = True
                self.audit(n, "delivered", r["channel"] or "inapp", "acked")
                self.cancel_escalation(n)

    def cancel_escalation(self, n: Note) -> None:
        for p in n["pending"]:
            if p["escalation"]:
                for c in p["channels"]:
                    self.audit(n, "cancelled", c, "acked")
        n["pending"] = [p for p in n["pending"] if not p["escalation"]]

    def read(self, r: Request) -> None:
        for n in self.user["inbox"]:
            if (r["notification_id"] in ("*", n["notification_id"])) and not n["read"]:
                n["read"] = True
                self.inbox_changed = True

    def result(self, r: Request) -> None:
        gone = _endpoint(r["payload"]) if r["result"] == "gone" else None
        if gone is not None and any(_endpoint(s) == gone for s in self.user["subscriptions"]):
            self.user["subscriptions"] = [s for s in self.user["subscriptions"] if _endpoint(s) != gone]
            n = next((x for x in self.user["inbox"] if x["notification_id"] == r["notification_id"]), None)
            if n is not None:
                self.audit(n, "removed", "webpush", "subscription gone (404/410)")

    def preferences(self, r: Request) -> None:
        try:
            prefs = parse_preferences(json.loads(r["payload"] or ""))
        except (PreferencesError, ValueError) as exc:
            self.step.refusal = f"bad preferences: {exc}"
            return
        self.user["preferences"] = json.dumps(prefs, separators=(",", ":"), sort_keys=True)
        self.prefs = prefs
        self.inbox_changed = True

    def subscribe(self, r: Request) -> None:
        try:
            sub = json.loads(r["payload"] or "")
            endpoint, keys = sub["endpoint"], sub["keys"]
            if not isinstance(endpoint, str) or not isinstance(keys["p256dh"], str) or not isinstance(keys["auth"], str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.step.refusal = "a subscription is {endpoint, keys: {p256dh, auth}}"
            return
        subs = [s for s in self.user["subscriptions"] if _endpoint(s) != endpoint]
        subs.append(json.dumps({"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}},
                               separators=(",", ":"), sort_keys=True))
        self.user["subscriptions"] = subs[-SUBSCRIPTIONS_MAX:]


def _endpoint(subscription: str | None) -> str | None:
    try:
        endpoint = json.loads(subscription or "")["endpoint"]
    except (ValueError, KeyError, TypeError):
        return None
    return endpoint if isinstance(endpoint, str) else None


def _quiet(prefs: dict[str, Any]) -> Any:
    try:
        return parse_quiet_hours(prefs.get("quiet_hours"))
    except QuietHoursError:
        return None


def _view(n: Note) -> dict[str, Any]:
    return {"notification_id": n["notification_id"], "category": n["category"], "priority": n["priority"],
            "title": n["title"], "body": n["body"], "data": json.loads(n["data"]) if n["data"] else None,
            "ts": n["created_ts"], "event_ts": n["event_ts"], "expires_at": n["expires_at"], "read": n["read"],
            "acked": n["acked"]}


def apply_notification(user: User | None, r: Request, policy: NotifyPolicy, now_ms: int) -> NotifyStep:
    """What record `r` does to `user` (None: none yet)."""
    d = _Decision(user or new_user(r["user_id"]), policy, now_ms)
    op = r["op"]
    if op == "REQUEST":
        d.request(r)
    elif op == "TICK":
        d.fire_due()
    elif op == "ACK":
        d.ack(r)
    elif op == "READ":
        d.read(r)
    elif op == "RESULT":
        d.result(r)
    elif op == "PREFERENCES":
        d.preferences(r)
    elif op == "SUBSCRIBE":
        d.subscribe(r)
    if d.step.refusal is not None:
        return NotifyStep("refused", refusal=d.step.refusal)
    return d.finish()


def next_due(user: User) -> int:
    """When the user's next step is due (epoch ms), 0 for none."""
    dues = [p["due_ms"] for n in user["inbox"] for p in n["pending"]]
    return min(dues) if dues else 0
