"""Socket.IO namespace /live: authenticated connections, subscribe with resume, acks, and the push side.

The fan-out itself is the server's client manager (gateway.manager.LiveManager).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import socketio
from socketio.exceptions import ConnectionRefusedError

from gateway.auth import Principal, Tokens, may_subscribe
from gateway.channels import CHANNEL_RE, FLEET, NAMESPACE, ChannelStore, update_from_push
from gateway.delivery import Connection
from gateway.errors import GatewayError, Unauthorized
from gateway.manager import LiveManager
from gateway.metrics import Metrics
from infra.clock import now_ms
from infra.producer import ProduceError

__all__ = ["LiveNamespace"]

log = logging.getLogger(__name__)
SWEEP_EVERY_MS = 60_000
Ack = dict[str, Any]
CHANNEL_ERROR = "channel must be driver:{id}, ride:{id}, cell:{h3} or fleet"


class LiveNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Clients subscribe to channels (resuming with `since`) and ack events; the bridge's updates fan out."""

    def __init__(self, store: ChannelStore, manager: LiveManager, metrics: Metrics, tokens: Tokens, *,
                 ack_priority: int, ride_rider: Callable[[str], str | None] = lambda ride_id: None,
                 decide: Callable[[Principal, str, str], Awaitable[None]] | None = None) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.manager = manager  # also the server's client manager: AsyncServer(client_manager=manager)
        self.metrics = metrics
        self.tokens = tokens
        self.ack_priority = ack_priority
        # ride id -> its rider's id; dispatch supplies it (until then riders may subscribe to nothing)
        self.ride_rider = ride_rider
        # A driver's answer to an offer, sent to where its reservation is decided (gateway.rides).
        self.decide = decide
        # Set once the bridge has replayed the history window: resumes before that would miss it
        # (the app shares the bridge's own event here).
        self.ready = asyncio.Event()

    # --- connections ------------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse a connection without a valid `auth: {token}`; the client sees the reason."""
        try:
            principal = self.tokens.verify(auth.get("token") if isinstance(auth, dict) else None)
        except Unauthorized as exc:
            self.metrics.refused.labels("connect").inc()
            raise ConnectionRefusedError(str(exc)) from None
        self.manager.add(sid, principal)

    # --- subscriptions ----------------------------------------------------------------------------

    async def on_subscribe(self, sid: str, data: Any) -> Ack:
        """`{channel, since?}` -> the ack: missed updates (or the snapshot), then live updates follow."""
        channel = _channel_of(data)
        since = data.get("since") if isinstance(data, dict) else None
        if channel is None:
            return {"ok": False, "error": CHANNEL_ERROR}
        if since is not None and (type(since) is not int or since < 0):
            return {"ok": False, "error": "since must be a seq (integer >= 0)"}
        conn = self.manager.connection(sid)
        if conn is None or not may_subscribe(conn.principal, channel, self.ride_rider):
            self.metrics.refused.labels("subscribe").inc()
            return {"ok": False, "error": f"not allowed: {channel}"}
        await self.ready.wait()
        # No await from here on: nothing of the channel can be fanned out between the history
        # read and the subscription, and python-socketio queues the ack before any later update.
        if self.manager.connection(sid) is not conn:
            return {"ok": False, "error": "disconnected"}
        now = now_ms()
        self.manager.subscribe(conn, channel)
        if channel == FLEET:
            return {"ok": True, "channel": channel, "seq": 0, "snapshot": None,
                    "drivers": [u.payload() for u in self.store.drivers(now)]}
        if since is None:
            snapshot = self.store.snapshot(channel, now)
            return {"ok": True, "channel": channel, "seq": self.store.head(channel),
                    "snapshot": snapshot.payload() if snapshot else None}
        return self._resume_ack(conn, channel, since, now)

    def _resume_ack(self, conn: Connection, channel: str, since: int, now: float) -> Ack:
        resume = self.store.resume(channel, since, now)
        self.metrics.resumed.labels("true" if resume.recovered else "false").inc()
        ack: Ack = {"ok": True, "channel": channel, "seq": resume.head, "recovered": resume.recovered}
        if not resume.recovered:
            ack["snapshot"] = resume.snapshot.payload() if resume.snapshot else None
            return ack
        ack["updates"] = [u.payload(skipped) for u, skipped in resume.updates]
        self.manager.sent_in_ack(conn, [u for u, _ in resume.updates], now)
        return ack

    async def on_unsubscribe(self, sid: str, data: Any) -> Ack:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": CHANNEL_ERROR}
        conn = self.manager.connection(sid)
        if conn is not None:
            self.manager.unsubscribe(conn, channel)
        return {"ok": True, "channel": channel}

    async def on_ack(self, sid: str, data: Any) -> None:
        """`{channel, seq}`: the client has every update of the channel up to seq (cumulative)."""
        channel = _channel_of(data)
        seq = data.get("seq") if isinstance(data, dict) else None
        conn = self.manager.connection(sid)
        if conn is not None and channel is not None and type(seq) is int:
            self.manager.ack(conn, channel, seq)

    async def on_accept(self, sid: str, data: Any) -> Ack:
        """A driver accepts an offer: `{"ride_id": ...}`; the outcome comes on its `driver:{id}` channel."""
        return await self._answer(sid, data, "ACCEPT")

    async def on_decline(self, sid: str, data: Any) -> Ack:
        return await self._answer(sid, data, "DECLINE")

    async def _answer(self, sid: str, data: Any, op: str) -> Ack:
        ride_id = data.get("ride_id") if isinstance(data, dict) else None
        conn = self.manager.connection(sid)
        if conn is None or self.decide is None or not isinstance(ride_id, str):
            return {"ok": False, "error": "send {\"ride_id\": ...} on a driver's connection"}
        try:
            await self.decide(conn.principal, ride_id, op)
        except GatewayError as exc:
            return {"ok": False, "error": str(exc)}
        except ProduceError:
            return {"ok": False, "error": "event log unavailable, retry", "retry": True}
        return {"ok": True, "ride_id": ride_id, "submitted": op.lower()}

    # --- the push side ----------------------------------------------------------------------------

    async def publish(self, batch: list[dict[str, Any]]) -> None:
        """Keep each decoded push message in its channel's history, then fan it out (the bridge's handler).

        Neither a malformed message nor a bug in the fan-out stops the batch: each is counted and logged,
        and the next message goes on (a failed fan-out's update is in the history: clients resume it)."""
        now = now_ms()
        for msg in batch:
            self.metrics.pushed.inc()
            try:
                update = update_from_push(msg, self.ack_priority)
            except Exception as exc:  # one producer's bad record must not stop the others
                self.metrics.bad_pushes.inc()
                channel = msg.get("channel") if isinstance(msg, dict) else None
                log.warning("push message on %r skipped: %s: %s", channel, type(exc).__name__, exc)
                continue
            if not self.store.offer(update):
                continue  # replayed or redelivered: subscribers already have it
            try:
                await self.manager.deliver(update, now)
            except Exception:
                self.metrics.delivery_errors.labels("update").inc()
                log.exception("fan-out of %s seq %d failed; the batch goes on", update.channel, update.seq)
                continue
            self.metrics.event_to_emit.observe(max(0.0, (now - update.ts) / 1000))

    async def run_ticker(self, tick_s: float) -> None:
        """Serve slow connections and retries every tick; trim histories by age now and then."""
        last_sweep = now_ms()
        while True:
            await asyncio.sleep(tick_s)
            now = now_ms()
            try:
                await self.manager.tick(now)
                if now - last_sweep >= SWEEP_EVERY_MS:
                    self.store.sweep(now)
                    last_sweep = now
            except Exception:  # a bug here must not end deliveries for good
                self.metrics.delivery_errors.labels("ticker").inc()
                log.exception("push ticker")


def _channel_of(data: Any) -> str | None:
    channel = data.get("channel") if isinstance(data, dict) else None
    return channel if isinstance(channel, str) and CHANNEL_RE.fullmatch(channel) else None
