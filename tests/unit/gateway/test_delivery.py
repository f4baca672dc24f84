"""gateway.delivery: a slow connection's queue (order, priority, coalescing, TTL), acks and retries;
and the fan-out over them (gateway.manager.LiveManager) to stand-in Engine.IO sockets."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import socketio

from gateway.auth import Principal
from gateway.channels import NAMESPACE, Update
from gateway.delivery import Connection, SendQueue, Unacked
from gateway.manager import LiveManager
from gateway.metrics import Metrics

T0 = 1_732_170_000_000


def _u(seq: int, channel: str = "driver:a", *, type: str = "driver.location", event: bool = False,
       ttl_ms: int = 10_000, sent: int = T0) -> Update:
    return Update(channel=channel, seq=seq, type=type, ts=sent, priority=7 if event else 3, sent_ts=sent,
                  ttl_ms=ttl_ms, data_json=json.dumps({"n": seq}), must_ack=event)


def _drain(q: SendQueue, now: float = T0) -> list[tuple[str, int, int]]:
    out = []
    while (item := q.pop(now)) is not None:
        out.append((item[0].channel, item[0].seq, item[1]))
    return out


# --- SendQueue -------------------------------------------------------------------------------------


def test_state_updates_coalesce_to_the_latest_and_declare_the_skips() -> None:
    q = SendQueue()
    for seq in range(1, 6):
        q.put(_u(seq))
    assert len(q) == 1 and q.coalesced == 4
    assert _drain(q) == [("driver:a", 5, 4)]


def test_events_are_never_coalesced_and_channels_keep_seq_order() -> None:
    q = SendQueue()
    q.put(_u(1))
    q.put(_u(2, type="ride.offer", event=True))
    q.put(_u(3))  # supersedes seq 1, which sits before the event: the event tells that skip
    q.put(_u(4, type="ride.offer", event=True))
    assert _drain(q) == [("driver:a", 2, 1), ("driver:a", 3, 0), ("driver:a", 4, 0)]


def test_channels_with_events_go_first_then_round_robin() -> None:
    q = SendQueue()
    q.put(_u(1, "driver:a"))
    q.put(_u(1, "driver:b"))
    q.put(_u(1, "ride:r", type="ride.status", event=True))
    q.put(_u(1, "driver:c"))
    assert [c for c, _, _ in _drain(q)] == ["ride:r", "driver:a", "driver:b", "driver:c"]


def test_an_event_pulls_its_channel_forward_in_order() -> None:
    q = SendQueue()
    q.put(_u(1, "driver:b"))
    q.put(_u(7, "driver:a"))
    q.put(_u(8, "driver:a", type="driver.status", event=True))
    assert _drain(q) == [("driver:a", 7, 0), ("driver:a", 8, 0), ("driver:b", 1, 0)]


def test_expired_entries_are_dropped_and_the_next_one_tells() -> None:
    q = SendQueue()
    q.put(_u(1, type="ride.offer", event=True, ttl_ms=1000))
    q.put(_u(2, ttl_ms=60_000))
    assert _drain(q, now=T0 + 5000) == [("driver:a", 2, 1)]
    assert q.expired == 1


def test_a_skip_with_nothing_queued_behind_is_told_by_the_next_update() -> None:
    q = SendQueue()
    q.put(_u(1, ttl_ms=1000))
    assert _drain(q, now=T0 + 5000) == []
    assert q.holds("driver:a") and not q.holds("driver:b")  # the fast path would not tell the skip
    q.skip("driver:a")  # seq 2 expired before it reached the gateway's fan-out
    q.put(_u(3))
    assert _drain(q) == [("driver:a", 3, 2)]
    assert not q.holds("driver:a")


def test_drop_forgets_a_channel() -> None:
    q = SendQueue()
    q.put(_u(1, "driver:a"))
    q.put(_u(2, "driver:a", type="ride.offer", event=True))
    q.skip("driver:a")
    q.put(_u(1, "driver:b"))
    q.drop("driver:a")
    assert len(q) == 1 and _drain(q) == [("driver:b", 1, 0)]
    assert not q.holds("driver:a")


# --- Unacked ---------------------------------------------------------------------------------------


def test_unacked_events_are_retried_until_acked() -> None:
    u = Unacked()
    u.sent(_u(1, event=True, ttl_ms=0), T0 + 1000)
    u.sent(_u(2, event=True, ttl_ms=0), T0 + 1000)
    assert u.due(T0 + 999, 1000) == []
    assert [x.seq for x in u.due(T0 + 1000, 1000)] == [1, 2]
    assert u.due(T0 + 1500, 1000) == []  # rescheduled a retry interval later
    u.ack("driver:a", 1)
    assert [x.seq for x in u.due(T0 + 2000, 1000)] == [2]
    u.ack("driver:a", 5)  # cumulative
    assert len(u) == 0
    u.sent(_u(3, event=True), T0)  # older than what the client acked: nothing owed
    assert len(u) == 0


def test_retries_end_with_the_ttl() -> None:
    u = Unacked()
    u.sent(_u(1, event=True, ttl_ms=3000), T0 + 1000)
    assert len(u.due(T0 + 1000, 1000)) == 1
    assert u.due(T0 + 3000, 1000) == [] and len(u) == 0


# --- the fan-out (LiveManager) over stand-in sockets ----------------------------------------------


class _Socket:
    """What the fan-out uses of an Engine.IO socket that is not a websocket: its queue (through send)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    async def send(self, pkt: Any) -> None:
        self.queue.put_nowait(pkt)

    def frames(self) -> list[dict[str, Any]]:
        out = []
        while not self.queue.empty():
            out.append(json.loads(self.queue.get_nowait().data[len('2/live,["update",'):-1]))
        return out


class _Eio:
    """The stand-in sockets of one real python-socketio server, by the name a test gives each."""

    def __init__(self, server: socketio.AsyncServer) -> None:
        self.server = server
        self.names: dict[str, str] = {}  # socket.io sid -> the test's name

    def __getitem__(self, name: str) -> _Socket:
        return self.server.eio.sockets[f"e-{name}"]  # type: ignore[no-any-return]


def _fanout(backlog: int = 3, pending_max: int = 100) -> tuple[LiveManager, _Eio, list[str]]:
    manager = LiveManager(Metrics(), backlog=backlog, pending_max=pending_max, retry_ms=1000)
    server = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
    eio = _Eio(server)
    dropped: list[str] = []

    async def disconnect(sid: str, namespace: str | None = None) -> None:
        dropped.append(eio.names[sid])

    server.disconnect = disconnect  # type: ignore[method-assign]
    return manager, eio, dropped


async def _connect(fanout: LiveManager, eio: _Eio, name: str, *channels: str) -> Connection:
    eio.server.eio.sockets[f"e-{name}"] = _Socket()
    sid = await fanout.pre_connect(f"e-{name}", NAMESPACE)
    conn = fanout.add(sid, Principal("ops", name))  # as the namespace's connect handler does
    await fanout.connect(sid, NAMESPACE)
    eio.names[sid] = name
    for channel in channels:
        fanout.subscribe(conn, channel)
    return conn


async def test_a_client_that_keeps_up_gets_the_shared_frame() -> None:
    fanout, eio, _ = _fanout()
    await _connect(fanout, eio, "a", "driver:x")
    await _connect(fanout, eio, "b", "driver:x")
    await _connect(fanout, eio, "ops", "fleet")
    await _connect(fanout, eio, "other", "driver:y")
    update = _u(1, "driver:x")
    await fanout.deliver(update, T0)
    sent = {sid: [p for p in list(eio[sid].queue._queue)] for sid in ("a", "b", "ops", "other")}
    assert sent["a"] == sent["b"] == sent["ops"] == [update.packet()] and sent["other"] == []


async def test_a_slow_client_gets_coalesced_updates_events_first() -> None:
    fanout, eio, _ = _fanout(backlog=2)
    conn = await _connect(fanout, eio, "slow", "driver:x", "ride:r")
    socket = eio["slow"]
    for seq in range(1, 6):
        await fanout.deliver(_u(seq, "driver:x"), T0)
    await fanout.deliver(_u(1, "ride:r", type="ride.status", event=True), T0)
    assert socket.queue.qsize() == 2 and len(conn.queue) == 2  # seq 3..5 coalesced to 5, behind the socket
    assert [(f["channel"], f["seq"]) for f in socket.frames()] == [("driver:x", 1), ("driver:x", 2)]
    await fanout.tick(T0)
    frames = socket.frames()
    assert [(f["channel"], f["seq"], f.get("skipped", 0)) for f in frames] == [("ride:r", 1, 0), ("driver:x", 5, 2)]
    assert frames[0]["ack"] is True
    await fanout.deliver(_u(6, "driver:x"), T0)  # drained: back on the fast path
    assert socket.frames() == [_u(6, "driver:x").payload()]


async def test_an_update_expired_on_arrival_is_not_sent_and_the_next_one_tells() -> None:
    fanout, eio, _ = _fanout()
    await _connect(fanout, eio, "a", "driver:x")
    await fanout.deliver(_u(1, "driver:x", ttl_ms=1000, sent=T0 - 5000), T0)
    await fanout.deliver(_u(2, "driver:x"), T0)
    assert [(f["seq"], f.get("skipped")) for f in eio["a"].frames()] == [(2, 1)]


async def test_unacked_events_are_resent_and_acks_stop_them() -> None:
    fanout, eio, _ = _fanout()
    conn = await _connect(fanout, eio, "a", "ride:r")
    socket = eio["a"]
    await fanout.deliver(_u(1, "ride:r", type="ride.offer", event=True, ttl_ms=10_000), T0)
    await fanout.deliver(_u(2, "ride:r"), T0)  # state: never retried
    assert [f["seq"] for f in socket.frames()] == [1, 2]
    await fanout.tick(T0 + 1000)
    assert [f["seq"] for f in socket.frames()] == [1]
    fanout.ack(conn, "ride:r", 1)
    await fanout.tick(T0 + 2000)
    assert socket.frames() == []


async def test_a_client_too_far_behind_is_dropped_to_resume_later() -> None:
    fanout, eio, dropped = _fanout(backlog=1, pending_max=3)
    await _connect(fanout, eio, "a", *(f"driver:{i}" for i in range(10)))
    for i in range(10):
        await fanout.deliver(_u(1, f"driver:{i}"), T0)
    await asyncio.sleep(0)
    assert dropped == ["a"]


async def test_unsubscribe_and_disconnect_stop_deliveries() -> None:
    fanout, eio, _ = _fanout()
    conn = await _connect(fanout, eio, "a", "driver:x", "driver:y")
    fanout.unsubscribe(conn, "driver:x")
    await fanout.deliver(_u(1, "driver:x"), T0)
    assert eio["a"].frames() == []
    await fanout.disconnect(conn.sid, NAMESPACE)
    await fanout.deliver(_u(1, "driver:y"), T0)
    assert eio["a"].frames() == [] and fanout.rooms == {} and fanout.conns == {}
