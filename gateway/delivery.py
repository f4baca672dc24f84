"""Getting updates to connections: a shared frame for clients that keep up, a queue for slow ones, retries.

A connection whose Engine.IO queue holds `backlog` unsent frames (its socket
is not draining) is slow: its updates wait in its SendQueue instead, per
channel in seq order, events first, state updates coalesced to the latest,
expired ones dropped, and go out as the socket drains (served every tick).
Events (must_ack) are resent every `retry_ms` until the client acks them or
their TTL ends. The fan-out writes the frame built once per update straight
into each socket's queue: python-socketio's room emit makes a task per
recipient, which costs more than the write itself; a connection that keeps up
gets the update's WebSocket frame written straight to its transport
(gateway.direct), without Engine.IO's per-socket writer task.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import engineio
from engineio import exceptions as eio_exceptions

from gateway.auth import Principal
from gateway.channels import FLEET, Update
from gateway.direct import write_direct
from gateway.metrics import Metrics

__all__ = ["Connection", "Fanout", "SendQueue", "Unacked"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    update: Update
    skipped: int  # seqs of this channel left out just before this one


class SendQueue:
    """A slow connection's undelivered updates.

    Per channel in seq order, so a client never sees a channel's seqs out of
    order; channels holding an event are served first, the rest round-robin.
    A state update supersedes a queued one of the same type in its channel,
    which is dropped and counted in the `skipped` of the entry that follows
    it; an entry whose TTL has ended is dropped the same way.
    """

    def __init__(self) -> None:
        self._channels: OrderedDict[str, list[_Entry]] = OrderedDict()  # round-robin order
        self._urgent: OrderedDict[str, None] = OrderedDict()  # channels holding an event
        self._carry: dict[str, int] = {}  # skips the channel's next queued update must tell
        self.size = 0
        self.coalesced = 0
        self.expired = 0

    def __len__(self) -> int:
        return self.size

    def holds(self, channel: str) -> bool:
        """True when an update of `channel` must queue (behind others, or to tell a skip)."""
        return self.size > 0 or channel in self._carry

    def put(self, update: Update, skipped: int = 0) -> None:
        """Queue `update` behind its channel's entries, superseding a queued state update of its type."""
        channel = update.channel
        entries = self._channels.setdefault(channel, [])
        skipped += self._carry.pop(channel, 0)
        if not update.must_ack:
            for i, entry in enumerate(entries):
                if not entry.update.must_ack and entry.update.type == update.type:
                    del entries[i]  # at most one per type is ever queued
                    self.size -= 1
                    self.coalesced += 1
                    if i < len(entries):
                        entries[i].skipped += entry.skipped + 1
                    else:
                        skipped += entry.skipped + 1
                    break
        entries.append(_Entry(update, skipped))
        self.size += 1
        if update.must_ack:
            self._urgent[channel] = None

    def skip(self, channel: str) -> None:
        """The channel's next seq will never come (it expired on the way): the next queued update says so."""
        self._carry[channel] = self._carry.get(channel, 0) + 1

    def pop(self, now_ms: float) -> tuple[Update, int] | None:
        """The next update to send and the skips it tells; expired ones are dropped on the way."""
        while self.size:
            channel = next(iter(self._urgent or self._channels))
            entries = self._channels[channel]
            entry = entries.pop(0)
            self.size -= 1
            self._requeue(channel, entries)
            if not entry.update.expired(now_ms):
                return entry.update, entry.skipped
            self.expired += 1
            if entries:
                entries[0].skipped += entry.skipped + 1
            else:
                self._carry[channel] = self._carry.get(channel, 0) + entry.skipped + 1
        return None

    def _requeue(self, channel: str, entries: list[_Entry]) -> None:
        self._urgent.pop(channel, None)
        if not entries:
            del self._channels[channel]
            return
        self._channels.move_to_end(channel)
        if any(e.update.must_ack for e in entries):
            self._urgent[channel] = None

    def drop(self, channel: str) -> None:
        """Forget the channel (unsubscribed, or resubscribed: the ack carried what was missed)."""
        self.size -= len(self._channels.pop(channel, ()))
        self._urgent.pop(channel, None)
        self._carry.pop(channel, None)


class Unacked:
    """Events sent and not acked yet, each resent every retry_ms until acked or expired."""

    def __init__(self) -> None:
        self._due: dict[tuple[str, int], tuple[Update, float]] = {}
        self.acked: dict[str, int] = {}  # channel -> highest seq the client acked

    def __len__(self) -> int:
        return len(self._due)

    def sent(self, update: Update, retry_at_ms: float) -> None:
        if update.seq > self.acked.get(update.channel, 0):
            self._due[(update.channel, update.seq)] = (update, retry_at_ms)

    def ack(self, channel: str, seq: int) -> None:
        """The client has every seq of `channel` up to `seq` (acks are cumulative)."""
        if seq <= self.acked.get(channel, 0):
            return
        self.acked[channel] = seq
        for key in [k for k in self._due if k[0] == channel and k[1] <= seq]:
            del self._due[key]

    def due(self, now_ms: float, retry_ms: int) -> list[Update]:
        """Events to resend now (rescheduled); events whose TTL ended are given up."""
        out = []
        for key, (update, at) in list(self._due.items()):
            if update.expired(now_ms):
                del self._due[key]
            elif at <= now_ms:
                self._due[key] = (update, now_ms + retry_ms)
                out.append(update)
        return out

    def drop(self, channel: str) -> None:
        for key in [k for k in self._due if k[0] == channel]:
            del self._due[key]


@dataclass(eq=False, slots=True)
class Connection:
    """One /live client: who it is, what it watches, what it has not got yet."""

    sid: str
    eio_sid: str
    principal: Principal
    channels: set[str] = field(default_factory=set)
    queue: SendQueue = field(default_factory=SendQueue)
    unacked: Unacked = field(default_factory=Unacked)
    dropped: bool = False


class Fanout:
    """Subscriptions, and the delivery of updates to them, for one Engine.IO server."""

    def __init__(self, eio: engineio.AsyncServer, metrics: Metrics, *, backlog: int, pending_max: int,
                 retry_ms: int, drop: Callable[[str], Awaitable[None]]) -> None:
        self.eio = eio
        self.metrics = metrics
        self.backlog = backlog
        self.pending_max = pending_max
        self.retry_ms = retry_ms
        self._drop = drop  # disconnects a sid: a hopeless slow consumer resumes later with since
        self.conns: dict[str, Connection] = {}
        self.subscribers: dict[str, dict[str, Connection]] = {}
        self._slow: set[Connection] = set()
        self._waiting: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, conn: Connection) -> None:
        self.conns[conn.sid] = conn

    def remove(self, sid: str) -> None:
        conn = self.conns.pop(sid, None)
        if conn is None:
            return
        for channel in conn.channels:
            self._unlist(channel, sid)
        self._slow.discard(conn)
        self._waiting.discard(conn)

    def subscribe(self, conn: Connection, channel: str) -> None:
        """Live updates of `channel` go to `conn` from now on; whatever it had queued for it is dropped."""
        conn.queue.drop(channel)
        conn.unacked.drop(channel)
        conn.channels.add(channel)
        self.subscribers.setdefault(channel, {})[conn.sid] = conn

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        conn.queue.drop(channel)
        conn.unacked.drop(channel)
        conn.channels.discard(channel)
        self._unlist(channel, conn.sid)

    def _unlist(self, channel: str, sid: str) -> None:
        subs = self.subscribers.get(channel)
        if subs is not None:
            subs.pop(sid, None)
            if not subs:
                del self.subscribers[channel]

    def _targets(self, channel: str) -> list[Connection]:
        subs = self.subscribers.get(channel)
        targets = list(subs.values()) if subs else []
        if channel.startswith(("driver:", "ride:")):  # ops' `fleet` map shows every driver and every trip
            fleet = self.subscribers.get(FLEET)
            if fleet:
                targets.extend(c for sid, c in fleet.items() if not subs or sid not in subs)
        return targets

    async def deliver(self, update: Update, now_ms: float) -> None:
        """Send `update` to every subscriber; an expired one to none (the next delivery tells the skip)."""
        targets = self._targets(update.channel)
        if update.expired(now_ms):
            self.metrics.expired.inc()
            for conn in targets:
                conn.queue.skip(update.channel)
            return
        sent = 0
        for conn in targets:
            sent += await self._offer(conn, update, now_ms)
        self.metrics.emitted.inc(sent)

    async def _offer(self, conn: Connection, update: Update, now_ms: float) -> int:
        """Send at once when the connection keeps up, else queue; the number of frames sent."""
        socket = self._socket(conn)
        if socket is None:
            return 0
        if conn.queue.holds(update.channel) or socket.queue.qsize() >= self.backlog:
            conn.queue.put(update)
            self._slow.add(conn)
            return await self._flush(conn, socket, now_ms)
        return await self._send(conn, socket, update, 0, now_ms)

    async def _send(self, conn: Connection, socket: engineio.async_socket.AsyncSocket, update: Update,
                    skipped: int, now_ms: float) -> int:
        if not skipped and write_direct(socket, update.frame()):
            self.metrics.direct.inc()
            self._owe_ack(conn, update, now_ms)
            return 1
        try:
            await socket.send(update.packet(skipped))  # queues the frame; never waits for the network
        except eio_exceptions.SocketIsClosedError:
            return 0
        self._owe_ack(conn, update, now_ms)
        return 1

    def _owe_ack(self, conn: Connection, update: Update, now_ms: float) -> None:
        """An event is resent until acked: the retry tick watches `conn` from now on."""
        if update.must_ack:
            conn.unacked.sent(update, now_ms + self.retry_ms)
            self._waiting.add(conn)

    async def _flush(self, conn: Connection, socket: engineio.async_socket.AsyncSocket, now_ms: float) -> int:
        """Move queued updates into the socket while it has room; drop a connection too far behind."""
        sent = 0
        while socket.queue.qsize() < self.backlog:
            item = conn.queue.pop(now_ms)
            if item is None:
                break
            sent += await self._send(conn, socket, item[0], item[1], now_ms)
        if not conn.queue.size:
            self._slow.discard(conn)
        elif conn.queue.size > self.pending_max and not conn.dropped:
            conn.dropped = True
            log.info("dropping a /live client %d updates behind; it resumes with since", conn.queue.size)
            self.metrics.slow_dropped.inc()
            task = asyncio.get_running_loop().create_task(self._drop(conn.sid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return sent

    def _socket(self, conn: Connection) -> engineio.async_socket.AsyncSocket | None:
        socket = self.eio.sockets.get(conn.eio_sid)
        return None if socket is None or socket.closed else socket

    async def tick(self, now_ms: float) -> None:
        """Serve slow connections as their sockets drain, and resend events that are due."""
        sent = 0
        for conn in list(self._slow):
            socket = self._socket(conn)
            if socket is None:
                self._slow.discard(conn)
            else:
                sent += await self._flush(conn, socket, now_ms)
        for conn in list(self._waiting):
            sent += await self._retry(conn, now_ms)
        if sent:
            self.metrics.emitted.inc(sent)

    async def _retry(self, conn: Connection, now_ms: float) -> int:
        socket = self._socket(conn)
        if socket is None or not conn.unacked:
            self._waiting.discard(conn)
            return 0
        sent = 0
        for update in conn.unacked.due(now_ms, self.retry_ms):  # the client drops a seq it has, and acks again
            sent += await self._send(conn, socket, update, 0, now_ms)
        self.metrics.retried.inc(sent)
        return sent

    def ack(self, conn: Connection, channel: str, seq: int) -> None:
        conn.unacked.ack(channel, seq)

    def sent_in_ack(self, conn: Connection, updates: list[Update], now_ms: float) -> None:
        """Events a subscribe ack carried are owed an ack like any other."""
        for update in updates:
            self._owe_ack(conn, update, now_ms)
