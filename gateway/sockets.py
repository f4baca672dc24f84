"""Socket.IO namespace /live: authenticated connections, subscribe with resume, acks, and the push side.

The fan-out itself is the server's client manager (gateway.manager.LiveManager).
Every client event gets an answer it can read: an event without exactly one
payload, with a malformed one, or of a name the namespace does not serve
(`connect` and `disconnect` among them: those are python-socketio's own) gets
`{"ok": false, "error": ...}` back, never a traceback and a client left to
its timeout.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import socketio
from socketio.exceptions import ConnectionRefusedError

from gateway.auth import Principal, Tokens, may_subscribe
from gateway.channels import FLEET, NAMESPACE, ChannelStore, channel_problem, update_from_push
from gateway.delivery import Connection
from gateway.errors import GatewayError, Unauthorized
from gateway.limits import Buckets, LiveLimits, caller_of
from gateway.manager import LiveManager
from gateway.metrics import Metrics
from infra.clock import now_ms
from infra.producer import ProduceError

__all__ = ["LiveNamespace"]

log = logging.getLogger(__name__)
SWEEP_EVERY_MS = 60_000
Ack = dict[str, Any]
Handler = Callable[[str, Any], Awaitable[Ack | None]]


class LiveNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Clients subscribe to channels (resuming with `since`) and ack events; the bridge's updates fan out."""

    def __init__(self, store: ChannelStore, manager: LiveManager, metrics: Metrics, tokens: Tokens, *,
                 ack_priority: int, h3_resolution: int, ride_rider: Callable[[str], str | None] = lambda ride_id: None,
                 decide: Callable[[Principal, str, str], Awaitable[None]] | None = None,
                 order_customer: Callable[[str], str | None] = lambda order_id: None,
                 state_of: Callable[[str], Ack | None] = lambda channel: None,
                 set_status: Callable[[Principal, str, Any], Awaitable[None]] | None = None,
                 user_acked: Callable[[Principal, str, int], Awaitable[None]] | None = None,
                 limits: LiveLimits = LiveLimits()) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.manager = manager  # also the server's client manager: AsyncServer(client_manager=manager)
        self.metrics = metrics
        self.tokens = tokens
        self.ack_priority = ack_priority
        self.h3_resolution = h3_resolution
        # ride id -> its rider's id; dispatch supplies it (until then riders may subscribe to nothing)
        self.ride_rider = ride_rider
        self.order_customer = order_customer  # order id -> its customer's id (gateway.orders)
        # A channel's state where its push history has aged out (an order's, from gateway.orders).
        self.state_of = state_of
        self.user_acked = user_acked  # an ack of user:{id}: the in-app notifications' receipt (gateway.notifications)
        self.set_status = set_status  # a driver's own status (online, offline, break), to its desk
        # A driver's answer to an offer, sent to where its reservation is decided (gateway.rides).
        self.decide = decide
        # Set once the bridge has replayed the history window: resumes before that would miss it
        # (the app shares the bridge's own event here).
        self.ready = asyncio.Event()
        self.limits = limits
        self.event_rate = Buckets(limits.event_rate_per_s)  # per connection (sid)
        self._events: dict[str, Handler] = {
            "subscribe": self.on_subscribe, "unsubscribe": self.on_unsubscribe, "ack": self.on_ack,
            "accept": self.on_accept, "decline": self.on_decline, "status": self.on_status,
        }

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """python-socketio's dispatch: its own `connect` and `disconnect`, and the client's events, each
        with exactly one payload (python-socketio would call a handler with what the client sent)."""
        sid = args[0]
        if event == "connect" and self.manager.is_pre_connected(sid, self.namespace):
            return await self.on_connect(*args)
        if event == "disconnect" and not self.manager.is_connected(sid, self.namespace):
            self.event_rate.forget(sid)
            return None  # python-socketio's own (it marks the client as leaving first): LiveManager forgets it
        handler = self._events.get(event) if isinstance(event, str) else None
        if handler is None:
            # A client's `connect` or `disconnect` event lands here too: the namespace was already joined
            # (python-socketio would run the connect handler again, and it would refuse in a traceback).
            self.metrics.refused.labels("event").inc()
            return {"ok": False, "error": f"no event {event!r} on {NAMESPACE}: subscribe, unsubscribe, ack, "
                                          "accept, decline or status"}
        conn = self.manager.connection(sid)
        # Acks answer what the server sent (their rate is its own) and cost a lookup: not counted.
        limited = conn is not None and conn.caller is not None and event != "ack"
        retry_s = self.event_rate.take(sid) if limited else None
        if retry_s is not None:
            self.metrics.refused.labels("rate").inc()
            return {"ok": False, "error": f"over {self.limits.event_rate_per_s:g} events a second on this connection",
                    "retry_after_s": round(retry_s, 3)}
        if len(args) != 2:
            self.metrics.refused.labels("event").inc()
            return {"ok": False, "error": f"{event} takes one payload object, got {len(args) - 1}"}
        return await handler(sid, args[1])

    # --- connections ------------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse a connection without a valid `auth: {token}`; the client sees the reason."""
        try:
            principal = self.tokens.verify(auth.get("token") if isinstance(auth, dict) else None)
        except Unauthorized as exc:
            self.metrics.refused.labels("connect").inc()
            raise ConnectionRefusedError(str(exc)) from None
        caller = caller_of(principal)
        if caller is not None and self.manager.connections_of(caller) >= self.limits.max_connections:
            self.metrics.refused.labels("connections").inc()
            raise ConnectionRefusedError(f"this token already holds {self.limits.max_connections} connections")
        self.manager.add(sid, principal)

    # --- subscriptions ----------------------------------------------------------------------------

    async def on_subscribe(self, sid: str, data: Any) -> Ack:
        """`{channel, since?}` -> the ack: missed updates (or the snapshot), then live updates follow."""
        channel, problem = self._channel_of(data)
        if channel is None:
            return {"ok": False, "error": problem}
        since = data.get("since")
        if since is not None and (type(since) is not int or since < 0):
            return {"ok": False, "error": "since must be a seq (integer >= 0)"}
        conn = self.manager.connection(sid)
        if conn is None or not may_subscribe(conn.principal, channel, self.ride_rider, self.order_customer):
            self.metrics.refused.labels("subscribe").inc()
            return {"ok": False, "error": f"not allowed: {channel}"}
        if (conn.caller is not None and channel not in conn.channels
                and len(conn.channels) >= self.limits.max_subscriptions):
            self.metrics.refused.labels("subscriptions").inc()
            return {"ok": False, "error": f"a connection holds {self.limits.max_subscriptions} channels at most: "
                                          "unsubscribe from one first"}
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
            if snapshot is None and (state := self.state_of(channel)) is not None:
                return {"ok": True, "channel": channel, "seq": state["seq"], "snapshot": state}
            return {"ok": True, "channel": channel, "seq": self.store.head(channel),
                    "snapshot": snapshot.payload() if snapshot else None}
        return self._resume_ack(conn, channel, since, now)

    def _resume_ack(self, conn: Connection, channel: str, since: int, now: float) -> Ack:
        resume = self.store.resume(channel, since, now)
        self.metrics.resumed.labels("true" if resume.recovered else "false").inc()
        ack: Ack = {"ok": True, "channel": channel, "seq": resume.head, "recovered": resume.recovered}
        if not resume.recovered:
            ack["snapshot"] = resume.snapshot.payload() if resume.snapshot else None
            if resume.snapshot is None and (state := self.state_of(channel)) is not None:
                ack["seq"], ack["snapshot"] = state["seq"], state
            return ack
        ack["updates"] = [u.payload(skipped) for u, skipped in resume.updates]
        self.manager.sent_in_ack(conn, [u for u, _ in resume.updates], now)
        return ack

    async def on_unsubscribe(self, sid: str, data: Any) -> Ack:
        channel, problem = self._channel_of(data)
        if channel is None:
            return {"ok": False, "error": problem}
        conn = self.manager.connection(sid)
        if conn is not None:
            self.manager.unsubscribe(conn, channel)
        return {"ok": True, "channel": channel}

    async def on_ack(self, sid: str, data: Any) -> Ack | None:
        """`{channel, seq}`: the client has every update of the channel up to seq (cumulative).
        Clients send it without asking for an answer; a malformed one is answered to those that ask."""
        channel, problem = self._channel_of(data)
        if channel is None:
            return {"ok": False, "error": problem}
        seq = data.get("seq")
        if type(seq) is not int:
            return {"ok": False, "error": "seq must be an integer"}
        conn = self.manager.connection(sid)
        if conn is not None:
            self.manager.ack(conn, channel, seq)
            if self.user_acked is not None and channel.startswith("user:"):
                try:
                    await self.user_acked(conn.principal, channel, seq)
                except ProduceError:
                    return {"ok": False, "error": "event log unavailable, retry", "retry": True}
        return None

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
        return await _submitted(self.decide(conn.principal, ride_id, op), {"ride_id": ride_id, "submitted": op.lower()})

    async def on_status(self, sid: str, data: Any) -> Ack:
        """A driver's own status, `{"status": "online" | "offline" | "break"}`; the outcome comes on its
        `driver:{id}` channel (`driver.status`)."""
        status = data.get("status") if isinstance(data, dict) else None
        conn = self.manager.connection(sid)
        if conn is None or self.set_status is None or conn.principal.role != "driver":
            return {"ok": False, "error": "send {\"status\": ...} on a driver's connection"}
        return await _submitted(self.set_status(conn.principal, conn.principal.sub, status), {"submitted": status})

    def _channel_of(self, data: Any) -> tuple[str, None] | tuple[None, str]:
        """The request's channel, or None and why it cannot be subscribed to."""
        if not isinstance(data, dict):
            return None, "send an object: {\"channel\": ...}"
        channel = data.get("channel")
        problem = channel_problem(channel, self.h3_resolution)
        if problem is not None or not isinstance(channel, str):
            return None, problem or "channel must be a string"
        return channel, None

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


async def _submitted(sending: Awaitable[None], answer: Ack) -> Ack:
    """The ack of a command sent for the client: `answer` once Kafka has it, else why not."""
    try:
        await sending
    except GatewayError as exc:
        return {"ok": False, "error": str(exc)}
    except ProduceError:
        return {"ok": False, "error": "event log unavailable, retry", "retry": True}
    return {"ok": True, **answer}
