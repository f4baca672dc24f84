"""python-socketio's client manager for the gateway, with the /live fan-out in it.

python-socketio lets an application replace the manager that keeps its
clients, rooms and emits (`AsyncServer(client_manager=...)`; its Redis and
Kafka managers are subclasses of the same kind). This one keeps, on top of
AsyncManager: a Connection per /live client (principal, slow-path queue,
unacked events), made by the namespace's connect handler and forgotten in
`disconnect`, which python-socketio calls on every way a client leaves; the
channels a client watches, as rooms of the namespace; and `deliver`, which
sends an update to its channel's room (and `fleet`'s, for driver and ride
channels).

Delivery, per connection: the update's WebSocket frame, built once, straight
to the transport when the socket keeps up (gateway.direct); else its Engine.IO
packet, also built once, into the socket's queue through Engine.IO's public
send_packet; once that queue holds `backlog` frames, the connection's
SendQueue (coalesced, events first), served by `tick` as the socket drains;
beyond `pending_max` queued, the client is disconnected to resume later with
`since`. python-socketio's own room emit makes a task per recipient, which
costs more than the write itself: `deliver` writes in a plain loop instead.

A bug that fails one connection is logged and counted
(`livetrack_push_delivery_errors`) and the other connections still get the
update; the failed one sees a seq gap on its next update and resumes.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import socketio
from engineio import exceptions as eio_exceptions

from gateway.auth import Principal
from gateway.channels import FLEET, NAMESPACE, UPDATE_EVENT, Update
from gateway.delivery import Connection
from gateway.direct import Engine
from gateway.limits import caller_of
from gateway.metrics import Metrics

__all__ = ["LiveManager"]

log = logging.getLogger(__name__)

_FLEET_KINDS = ("driver:", "ride:")  # ops' `fleet` map shows every driver and every trip


class LiveManager(socketio.AsyncManager):  # type: ignore[misc]
    """AsyncManager plus the /live fan-out: connections, channels as rooms, delivery, retries."""

    def __init__(self, metrics: Metrics, *, backlog: int, pending_max: int, retry_ms: int,
                 namespace: str = NAMESPACE) -> None:
        super().__init__()
        self.metrics = metrics
        self.namespace = namespace
        self.backlog = backlog
        self.pending_max = pending_max
        self.retry_ms = retry_ms
        self.conns: dict[str, Connection] = {}
        self.callers: Counter[str] = Counter()  # limited caller -> its open connections
        self._engine: Engine | None = None
        self._slow: set[Connection] = set()
        self._waiting: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frames_direct = metrics.frames.labels("direct")
        self._frames_queued = metrics.frames.labels("queued")
        self._frames_fallback = metrics.frames.labels("fallback")

    def set_server(self, server: socketio.AsyncServer) -> None:
        """python-socketio hands the manager its server: reach that server's Engine.IO sockets from now on."""
        super().set_server(server)
        self._engine = Engine(server.eio, namespace=self.namespace, event=UPDATE_EVENT,
                              on_missing=lambda name: self.metrics.internals_missing.labels(name).set(1))

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("LiveManager is not the client manager of a server yet")
        return self._engine

    # --- connections ------------------------------------------------------------------------------

    def add(self, sid: str, principal: Principal) -> Connection:
        """Register a client being accepted on the namespace (its connect handler calls this)."""
        eio_sid = self.eio_sid_from_sid(sid, self.namespace)
        if eio_sid is None:
            raise ValueError(f"{sid} is not connecting to {self.namespace}")
        conn = self.conns[sid] = Connection(sid, eio_sid, principal, caller_of(principal))
        if conn.caller is not None:
            self.callers[conn.caller] += 1
        self.metrics.connected.inc()
        return conn

    def connections_of(self, caller: str) -> int:
        """How many connections `caller` (gateway.limits.caller_of) holds now."""
        return self.callers.get(caller, 0)

    def connection(self, sid: str) -> Connection | None:
        return self.conns.get(sid)

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        """Every way out of a namespace ends here (client, server, transport, refused connect)."""
        if namespace == self.namespace:
            self._forget(sid)
        return await super().disconnect(sid, namespace, **kwargs)

    def _forget(self, sid: str) -> None:
        conn = self.conns.pop(sid, None)
        if conn is None:
            return
        self._slow.discard(conn)
        self._waiting.discard(conn)
        if conn.caller is not None:
            self.callers[conn.caller] -= 1
            if self.callers[conn.caller] <= 0:
                del self.callers[conn.caller]
        self.metrics.connected.dec()

    # --- subscriptions: rooms of the namespace ----------------------------------------------------

    def subscribe(self, conn: Connection, channel: str) -> None:
        """Live updates of `channel` go to `conn` from now on; whatever it had queued for it is dropped."""
        conn.queue.drop(channel)
        conn.unacked.drop(channel)
        conn.channels.add(channel)
        self.basic_enter_room(conn.sid, self.namespace, channel)

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        conn.queue.drop(channel)
        conn.unacked.drop(channel)
        conn.channels.discard(channel)
        self.basic_leave_room(conn.sid, self.namespace, channel)

    def _targets(self, channel: str) -> list[Connection]:
        rooms: str | list[str] = [channel, FLEET] if channel.startswith(_FLEET_KINDS) else channel
        conns = self.conns
        return [conn for sid, _ in self.get_participants(self.namespace, rooms)
                if (conn := conns.get(sid)) is not None]

    # --- delivery ---------------------------------------------------------------------------------

    async def deliver(self, update: Update, now_ms: float) -> None:
        """Send `update` to every subscriber; an expired one to none (the next delivery tells the skip)."""
        targets = self._targets(update.channel)
        if not targets:
            return
        channel = update.channel
        if update.expired(now_ms):
            self.metrics.expired.inc()
            for conn in targets:
                conn.queue.skip(channel)
            return
        engine = self.engine
        links = engine.links
        frame = update.frame()
        direct = sent = failed = 0
        for conn in targets:
            try:
                link = links.get(conn.eio_sid)
                if link is not None and not conn.queue.holds(channel):
                    try:
                        written = link.write(frame)
                    except AttributeError as exc:
                        engine.broken(link, exc)
                        written = False
                    if written:
                        direct += 1
                        if update.must_ack:
                            self._owe_ack(conn, update, now_ms)
                        continue
                sent += await self._offer(conn, update, now_ms)
            except Exception:
                failed += 1
                if failed == 1:
                    log.exception("fan-out of %s seq %d failed for a /live client; the others still get it",
                                  channel, update.seq)
        if direct:
            self._frames_direct.inc(direct)
            self.metrics.direct.inc(direct)
        if direct or sent:
            self.metrics.emitted.inc(direct + sent)
        if failed:
            self.metrics.delivery_errors.labels("connection").inc(failed)

    async def _offer(self, conn: Connection, update: Update, now_ms: float) -> int:
        """The socket is busy or slow: Engine.IO's queue while it has room, else the connection's SendQueue."""
        backlog = self.engine.backlog(conn.eio_sid)
        if backlog is None:
            return 0  # closed: the client resumes with since on its next connection
        if conn.queue.holds(update.channel) or backlog >= self.backlog:
            conn.queue.put(update)
            self._slow.add(conn)
            return await self._flush(conn, now_ms)
        return await self._send(conn, update, 0, now_ms)

    async def _send(self, conn: Connection, update: Update, skipped: int, now_ms: float) -> int:
        """One frame: direct if it can be, else queued in Engine.IO; the number of frames sent."""
        engine = self.engine
        if not skipped:
            link = engine.links.get(conn.eio_sid)
            if link is not None and engine.write(link, update.frame()):
                self._frames_direct.inc()
                self.metrics.direct.inc()
                self._owe_ack(conn, update, now_ms)
                return 1
        try:
            await engine.send(conn.eio_sid, update.packet(skipped))  # queues the frame; never waits for the network
        except eio_exceptions.SocketIsClosedError:
            return 0
        (self._frames_fallback if engine.degraded else self._frames_queued).inc()
        self._owe_ack(conn, update, now_ms)
        return 1

    def _owe_ack(self, conn: Connection, update: Update, now_ms: float) -> None:
        """An event is resent until acked: the retry tick watches `conn` from now on."""
        if update.must_ack:
            conn.unacked.sent(update, now_ms + self.retry_ms)
            self._waiting.add(conn)

    async def _flush(self, conn: Connection, now_ms: float) -> int:
        """Move queued updates into the socket while it has room; drop a connection too far behind."""
        sent = 0
        while True:
            backlog = self.engine.backlog(conn.eio_sid)
            if backlog is None:
                self._slow.discard(conn)
                return sent
            if backlog >= self.backlog:
                break
            item = conn.queue.pop(now_ms)
            if item is None:
                break
            sent += await self._send(conn, item[0], item[1], now_ms)
        if not conn.queue.size:
            self._slow.discard(conn)
        elif conn.queue.size > self.pending_max and not conn.dropped:
            conn.dropped = True
            log.info("dropping a /live client %d updates behind; it resumes with since", conn.queue.size)
            self.metrics.slow_dropped.inc()
            task = asyncio.get_running_loop().create_task(self.server.disconnect(conn.sid, namespace=self.namespace))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return sent

    async def tick(self, now_ms: float) -> None:
        """Serve slow connections as their sockets drain, and resend events that are due."""
        sent = failed = 0
        for conn in list(self._slow):
            try:
                sent += await self._flush(conn, now_ms)
            except Exception:
                failed += 1
                log.exception("serving a slow /live client failed")
        for conn in list(self._waiting):
            try:
                sent += await self._retry(conn, now_ms)
            except Exception:
                failed += 1
                log.exception("resending events to a /live client failed")
        if sent:
            self.metrics.emitted.inc(sent)
        if failed:
            self.metrics.delivery_errors.labels("tick").inc(failed)

    async def _retry(self, conn: Connection, now_ms: float) -> int:
        if not conn.unacked or self.engine.backlog(conn.eio_sid) is None:
            self._waiting.discard(conn)
            return 0
        sent = 0
        for update in conn.unacked.due(now_ms, self.retry_ms):  # the client drops a seq it has, and acks again
            sent += await self._send(conn, update, 0, now_ms)
        self.metrics.retried.inc(sent)
        return sent

    def ack(self, conn: Connection, channel: str, seq: int) -> None:
        conn.unacked.ack(channel, seq)

    def sent_in_ack(self, conn: Connection, updates: list[Update], now_ms: float) -> None:
        """Events a subscribe ack carried are owed an ack like any other."""
        for update in updates:
            self._owe_ack(conn, update, now_ms)
