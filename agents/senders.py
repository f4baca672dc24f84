"""Senders agent (topic `notification-deliveries`, partitioned by user): each send through its channel's
providers (infra.notify), once, as the delivery ledger `delivery_to_receipt` says.

`prepare` (which may wait) sends every record of the batch whose ledger key has no receipt, at most
`concurrency` at a time, with the channel's retries and failover; `step` then decides what each
outcome leaves: a receipt (sent, or unknown: an SMS that timed out is never sent blindly again), the
audit step, a dead letter on `notifications-dlq` for a permanent failure (re-drivable: `livetrack
notifications redrive`), a RESULT back to the user's agent when a web push subscription is gone.
Receipts and outputs commit together (TOGETHER) before the input offsets: a crash after a provider
accepted and before that commit sends once more on the replay (the documented duplicate window),
with the same Message-ID / web push Topic.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from typing import Callable, Mapping, Sequence

from agents.commands import notification_request
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from infra.notify.providers import Channel, Outcome
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.topics import NOTIFICATION_REQUESTS, NOTIFICATIONS_AUDIT
from tables.table import Table
from tables.transaction import TOGETHER, Transaction

__all__ = ["SendersAgent", "ledger_key"]

log = logging.getLogger(__name__)
OUTCOMES_MAX = 100_000
Where = tuple[str, int, int]


def ledger_key(d: typed.NotificationDelivery) -> str:
    address = hashlib.sha256(d["address"].encode()).hexdigest()[:12]
    return f"{d['notification_id']}:{d['channel']}:{address}"


class SendersAgent:
    """Sends NotificationDelivery records; the ledger, audit, dead letters and results out."""

    name = "senders"
    order = TOGETHER

    def __init__(self, *, ledger: Table[typed.Receipt], channels: Mapping[str, Channel], dead_letters: DeadLetters,
                 clock_ms: Callable[[], int], concurrency: int) -> None:
        self.ledger = ledger
        self.channels = channels
        self.dead_letters = dead_letters
        self.clock_ms = clock_ms
        self.limit = asyncio.Semaphore(concurrency)
        self.codec = typed_codec(records.NotificationDelivery, typed.NotificationDelivery)
        self.audit_codec = typed_codec(records.NotificationAudit, typed.NotificationAudit)
        self.request_codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.outcomes: dict[Where, Outcome] = {}  # sent in prepare, decided in step
        self.counts: Counter[str] = Counter()

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        todo: dict[str, tuple[Where, typed.NotificationDelivery]] = {}
        for record in batch:
            where = (record.topic, record.partition, record.offset)
            if where in self.outcomes:
                continue  # sent already (the batch is decided again without a stopped partition)
            try:
                d = decode(self.codec, record)
            except Exception:
                continue  # step dead-letters it
            key = ledger_key(d)
            if key not in todo and self.ledger.get(key, record.partition) is None:
                todo[key] = (where, d)
        if len(self.outcomes) > OUTCOMES_MAX:
            self.outcomes.clear()
        results = await asyncio.gather(*(self._send(d) for _, d in todo.values()))
        for (where, _), outcome in zip(todo.values(), results):
            self.outcomes[where] = outcome

    async def _send(self, d: typed.NotificationDelivery) -> Outcome:
        channel = self.channels.get(d["channel"])
        if channel is None:
            return Outcome("failed", reason=f"no {d['channel']} provider configured")
        async with self.limit:
            try:
                return await channel.send(d, self.clock_ms)
            except Exception as exc:  # a provider library's surprise: a failed send, never a stopped partition
                log.exception("%s send raised", d["channel"])
                return Outcome("failed", reason=f"{type(exc).__name__}")

    def step(self, tx: Transaction, record: Inbound) -> None:
        d: typed.NotificationDelivery = decode(self.codec, record)
        outcome = self.outcomes.pop((record.topic, record.partition, record.offset), None)
        if outcome is None:
            return  # in the ledger already: sent before (a replay, a re-drive)
        key = ledger_key(d)
        if self.ledger.get(key, record.partition) is not None:
            return
        self.counts[f"{d['channel']}:{outcome.status}"] += 1
        tx.join(self.ledger, key)
        if outcome.status in ("sent", "unknown"):
            receipt: typed.Receipt = {"status": outcome.status, "provider": outcome.provider, "ts": self.clock_ms()}
            tx.put(self.ledger, key, receipt, record.partition)
        step = {"sent": "sent", "unknown": "unknown", "expired": "expired"}.get(outcome.status, "failed")
        self._audit(tx, d, step, outcome)
        if outcome.status == "failed":
            self.dead_letters.send(tx, record, f"{d['channel']}: {outcome.reason}")
        elif outcome.status == "gone":
            r = notification_request("RESULT", d["user_id"], self.clock_ms(), result="gone", channel=d["channel"],
                                     notification_id=d["notification_id"], payload=d["address"])
            tx.send(NOTIFICATION_REQUESTS.name, self.request_codec.dumps(r), key=d["user_id"].encode())

    def _audit(self, tx: Transaction, d: typed.NotificationDelivery, step: str, o: Outcome) -> None:
        a: typed.NotificationAudit = {
            "notification_id": d["notification_id"], "user_id": d["user_id"], "step": step, "ts": self.clock_ms(),
            "channel": d["channel"], "reason": o.reason or (f"{o.attempts} attempt(s)" if o.attempts else None),
            "provider": o.provider or None, "idempotency_key": d["idempotency_key"], "category": d["category"]}
        tx.send(NOTIFICATIONS_AUDIT.name, self.audit_codec.dumps(a), key=d["notification_id"].encode())

    def end(self, tx: Transaction) -> None:
        return None

    def aborted(self) -> None:
        return None  # outcomes stay: a batch decided again must not send again
