"""Notifications agent (topic `notification-requests`, partitioned by user): each record decided by
agents.notify_flow.

The only writer of `user_to_notifications` and the numberer of the `user:{id}` channel. Outputs and
state go together (TOGETHER): a replay after a crash decides the same records against the same state
(a REQUEST already applied is then a duplicate; one not applied decides the same seqs and sends),
so in-app messages keep their seqs (the gateway drops a seq it has) and a send decided twice reaches
the senders agent twice under one ledger key (it sends it once). Its timer asks, by a TICK on its own
topic, each user whose step is due to fire it: deferred sends and escalations are in the table, so
they survive restarts, and a timer that was down catches up on the first tick.
"""
from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Callable, Sequence

import faust

from agents.commands import notification_request
from agents.errors import Rejected
from agents.notify_flow import NotifyPolicy, apply_notification, next_due
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from infra.producer import AsyncProducer
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.topics import NOTIFICATION_DELIVERIES, NOTIFICATION_REQUESTS, NOTIFICATIONS_AUDIT, PUSH
from tables.table import Table
from tables.transaction import TOGETHER, Transaction, commit

__all__ = ["NotificationsAgent", "register"]

log = logging.getLogger(__name__)


class NotificationsAgent:
    """Applies NotificationRequest records to `user_to_notifications`; in-app pushes, sends and audit out."""

    name = "notifications"
    order = TOGETHER

    def __init__(self, *, users: Table[typed.NotificationUser], dead_letters: DeadLetters, policy: NotifyPolicy,
                 clock_ms: Callable[[], int]) -> None:
        self.users = users
        self.dead_letters = dead_letters
        self.policy = policy
        self.clock_ms = clock_ms
        self.request_codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.push_codec = typed_codec(records.PushMessage, typed.PushMessage)
        self.delivery_codec = typed_codec(records.NotificationDelivery, typed.NotificationDelivery)
        self.audit_codec = typed_codec(records.NotificationAudit, typed.NotificationAudit)
        self.due: dict[str, int] = {}  # user id -> when its next step is due (ms): the timer's memory
        self.outcomes: Counter[str] = Counter()

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        r: typed.NotificationRequest = decode(self.request_codec, record)
        if record.key is not None and record.key != r["user_id"].encode():
            raise Rejected("record key is not the request's user_id")
        user = self.users.get(r["user_id"], record.partition)
        if user is None and r["op"] in ("TICK", "ACK", "READ", "RESULT"):
            return  # nothing of this user's to act on
        step = apply_notification(user, r, self.policy, self.clock_ms())
        self.outcomes[f"{r['op']}:{step.outcome}"] += 1
        if step.refusal is not None:
            raise Rejected(step.refusal)
        tx.join(self.users, r["user_id"])
        if step.user is not None and step.user != user:
            tx.put(self.users, r["user_id"], step.user, record.partition)
            tx.committed.append(functools.partial(self._track, r["user_id"], next_due(step.user)))
        for p in step.pushes:
            tx.send(PUSH.name, self.push_codec.dumps(p), key=p["channel"].encode())
        for d in step.deliveries:
            tx.send(NOTIFICATION_DELIVERIES.name, self.delivery_codec.dumps(d), key=d["user_id"].encode())
        for a in step.audits:
            tx.send(NOTIFICATIONS_AUDIT.name, self.audit_codec.dumps(a), key=a["notification_id"].encode())

    def end(self, tx: Transaction) -> None:
        return None

    def aborted(self) -> None:
        return None

    def _track(self, user_id: str, due: int) -> None:
        if due:
            self.due[user_id] = due
        else:
            self.due.pop(user_id, None)

    async def fire_due(self, producer: AsyncProducer) -> int:
        """A TICK for every user whose next step is due (the timer); how many."""
        now = self.clock_ms()
        due = [user_id for user_id, at in self.due.items() if at <= now]
        if not due:
            return 0
        tx = Transaction(TOGETHER, "notification-ticks")
        for user_id in due:
            del self.due[user_id]  # the TICK fires it; the user's new state sets the next one
            tx.send(NOTIFICATION_REQUESTS.name, self.request_codec.dumps(notification_request("TICK", user_id, now)),
                    key=user_id.encode())
        try:
            await commit(tx, producer)
        except Exception:
            for user_id in due:  # not sent: the next tick tries again
                self.due.setdefault(user_id, now)
            raise
        return len(due)

    def rebuild_due(self) -> None:
        """After recovery or a rebalance: the due steps of the users this worker now owns, from the table."""
        self.due.clear()
        for user_id, user in self.users.stored():
            self._track(user_id, next_due(user))


def register(app: faust.App, agent: NotificationsAgent, producer: AsyncProducer, *, tick_s: float) -> None:
    """Attach the notifications agent's timer and its table-recovery hook to `app`."""

    @app.timer(interval=tick_s, name="notification_ticks")  # type: ignore[untyped-decorator]  # faust's timer
    async def notification_ticks() -> None:
        try:
            await agent.fire_due(producer)
        except Exception:  # Kafka hiccup: the due steps stay, the next tick tries again
            log.exception("firing due notifications")

    async def on_recover() -> None:
        agent.rebuild_due()

    agent.users.faust.on_recover(on_recover)
