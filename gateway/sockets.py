"""Socket.IO namespace /live: authenticated connections, subscribe with resume, acks, and the push fan-out."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import socketio
from socketio.exceptions import ConnectionRefusedError

from gateway.auth import Principal, Tokens, may_subscribe
from gateway.channels import CHANNEL_RE, FLEET, NAMESPACE, ChannelStore, update_from_push
from gateway.delivery import Connection, Fanout
from gateway.errors import GatewayError, Unauthorized
from gateway.metrics import Metrics
from infra.clock import now_ms
from infra.producer import ProduceError

__all__ = ["LiveNamespace"]

log = logging.getLogger(__name__)
SWEEP_EVERY_MS = 60_000
CHANNEL_ERROR = "channel must be driver:{id}, ride:{id}, cell:{h3} or fleet"


class LiveNamespace(socketio.AsyncNamespace):
    """Clients subscribe to channels (resuming with `since`) and ack events; the bridge's updates fan out."""

    def __init__(self, store: ChannelStore, fanout: Fanout, metrics: Metrics, tokens: Tokens, *,
                 ack_priority: int, ride_rider: Callable[[str], str | None] = lambda ride_id: None,
                 decide: Callable[[Principal, str, str], Awaitable[None]] | None = None) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.fanout = fanout
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
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        self.fanout.add(Connection(sid, eio_sid, principal))
        self.metrics.connected.inc()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        if sid in self.fanout.conns:
            self.fanout.remove(sid)
            self.metrics.connected.dec()

    # --- subscriptions ----------------------------------------------------------------------------

    async def on_subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """`{channel, since?}` -> the ack: missed updates (or the snapshot), then live updates follow."""
        channel = _channel_of(data)
        since = data.get("since") if isinstance(data, dict) else None
        if channel is None:
            return {"ok": False, "error": CHANNEL_ERROR}
        if since is not None and (type(since) is not int or since < 0):
            return {"ok": False, "error": "since must be a seq (integer >= 0)"}
        conn = self.fanout.conns.get(sid)
        if conn is None or not may_subscribe(conn.principal, channel, self.ride_rider):
            self.metrics.refused.labels("subscribe").inc()
            return {"ok": False, "error": f"not allowed: {channel}"}
        await self.ready.wait()
        # No await from here on: nothing of the channel can be fanned out between the history
        # read and the subscription, and python-socketio queues the ack before any later update.
        if self.fanout.conns.get(sid) is not conn:
            return {"ok": False, "error": "disconnected"}
        now = now_ms()
        self.fanout.subscribe(conn, channel)
        if channel == FLEET:
            return {"ok": True, "channel": channel, "seq": 0, "snapshot": None,
                    "drivers": [u.payload() for u in self.store.drivers(now)]}
        if since is None:
            snapshot = self.store.snapshot(channel, now)
            return {"ok": True, "channel": channel, "seq": self.store.head(channel),
                    "snapshot": snapshot.payload() if snapshot else None}
        return self._resume_ack(conn, channel, since, now)

    def _resume_ack(self, conn: Connection, channel: str, since: int, now: float) -> dict[str, Any]:
        resume = self.store.resume(channel, since, now)
        self.metrics.resumed.labels("true" if resume.recovered else "false").inc()
        ack: dict[str, Any] = {"ok": True, "channel": channel, "seq": resume.head, "recovered": resume.recovered}
        if not resume.recovered:
            ack["snapshot"] = resume.snapshot.payload() if resume.snapshot else None
            return ack
        ack["updates"] = [u.payload(skipped) for u, skipped in resume.updates]
        self.fanout.sent_in_ack(conn, [u for u, _ in resume.updates], now)
        return ack

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": CHANNEL_ERROR}
        conn = self.fanout.conns.get(sid)
        if conn is not None:
            self.fanout.unsubscribe(conn, channel)
        return {"ok": True, "channel": channel}

    async def on_ack(self, sid: str, data: Any) -> None:
        """`{channel, seq}`: the client has every update of the channel up to seq (cumulative)."""
        channel = _channel_of(data)
        seq = data.get("seq") if isinstance(data, dict) else None
        conn = self.fanout.conns.get(sid)
        if conn is not None and channel is not None and type(seq) is int:
            self.fanout.ack(conn, channel, seq)

    async def on_accept(self, sid: str, data: Any) -> dict[str, Any]:
        """A driver accepts an offer: `{"ride_id": ...}`; the outcome comes on its `driver:{id}` channel."""
        return await self._answer(sid, data, "ACCEPT")

    async def on_decline(self, sid: str, data: Any) -> dict[str, Any]:
        return await self._answer(sid, data, "DECLINE")

    async def _answer(self, sid: str, data: Any, op: str) -> dict[str, Any]:
        ride_id = data.get("ride_id") if isinstance(data, dict) else None
        conn = self.fanout.conns.get(sid)
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
        """Keep each decoded push message in its channel's history and fan it out (the bridge's handler)."""
        now = now_ms()
        for msg in batch:
            self.metrics.pushed.inc()
            try:
                update = update_from_push(msg, self.ack_priority)
            except (ValueError, KeyError) as exc:  # one producer's bad record must not stop the others
                self.metrics.bad_pushes.inc()
                log.warning("push message on %s skipped: %s", msg.get("channel"), type(exc).__name__)
                continue
            if not self.store.offer(update):
                continue  # replayed or redelivered: subscribers already have it
            await self.fanout.deliver(update, now)
            self.metrics.event_to_emit.observe(max(0.0, (now - update.ts) / 1000))

    async def run_ticker(self, tick_s: float) -> None:
        """Serve slow connections and retries every tick; trim histories by age now and then."""
        last_sweep = now_ms()
        while True:
            await asyncio.sleep(tick_s)
            now = now_ms()
            try:
                await self.fanout.tick(now)
                if now - last_sweep >= SWEEP_EVERY_MS:
                    self.store.sweep(now)
                    last_sweep = now
            except Exception:  # a bug here must not end deliveries for good
                log.exception("push ticker")


def _channel_of(data: Any) -> str | None:
    channel = data.get("channel") if isinstance(data, dict) else None
    return channel if isinstance(channel, str) and CHANNEL_RE.fullmatch(channel) else None
