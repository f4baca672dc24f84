"""gateway.manager + gateway.direct on a real python-socketio server and clients: the fast path is
taken with the pinned versions; each internal, renamed as an upgrade would, falls back to Engine.IO's
public send, counted, and the client still gets every update in order; a failure stays local."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import socketio

from gateway import direct
from gateway.channels import NAMESPACE, Update
from gateway.direct import event_prefix
from tests.unit.gateway.live_server import Client, Live, push, running

N = 40
RENAMED = "_renamed_by_an_upgrade"


async def _publish_all(live: Live, channel: str, n: int = N, *, burst: int = 5, paced: Client | None = None) -> None:
    """`n` updates of `channel` through the bridge's handler, `burst` per batch; `paced`: each batch once
    that client has the one before (python-engineio's client takes at most 16 packets per polling response)."""
    for start in range(1, n + 1, burst):
        await live.namespace.publish([push(channel, seq) for seq in range(start, min(start + burst, n + 1))])
        await (paced.wait_for(start - 1) if paced else asyncio.sleep(0))


async def test_with_the_pinned_versions_a_client_that_keeps_up_gets_direct_frames(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        for seq in range(1, N + 1):  # one at a time: the socket has always caught up
            await live.namespace.publish([push("driver:d-1", seq)])
            await client.wait_for(seq)
        assert live.frames() == {"direct": N, "queued": 0, "fallback": 0}
        assert live.counter("livetrack_push_direct_emits") == N  # bench.push reads this one
        await _publish_all(live, "driver:d-1", 2 * N)  # bursts (seqs 1..N again are duplicates: dropped)
        await client.wait_for(2 * N)
        assert client.seqs("driver:d-1") == list(range(1, 2 * N + 1))
        assert live.frames()["fallback"] == 0 and live.frames()["direct"] >= N
        assert live.manager.engine.missing == set()


# Each name gateway.direct reads when a websocket opens: renamed, no Link is made.
@pytest.mark.parametrize("name", ["HANDLER_SOCKET", "WS_RESPONSE", "WS_WRITER", "SOCKET_QUEUE", "QUEUE_GETTERS",
                                  "SOCKET_UPGRADED", "SOCKET_CLOSED", "ASYNC_DRIVERS"])
async def test_a_missing_internal_sends_every_update_through_engineio_counted_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    monkeypatch.setattr(direct, name, RENAMED)  # as if the library had renamed it
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        await _publish_all(live, "driver:d-1")
        await client.wait_for(N)
        missing = live.manager.engine.missing
    assert client.seqs("driver:d-1") == list(range(1, N + 1))
    assert live.frames() == {"direct": 0, "queued": 0, "fallback": N}
    assert len(missing) == 1 and RENAMED in next(iter(missing))
    assert live.counter("livetrack_push_internals_missing", name=next(iter(missing))) == 1
    assert [r.levelno for r in caplog.records if r.name == "gateway.direct"] == [logging.WARNING]  # once


async def test_without_the_server_s_socket_table_a_polling_client_still_gets_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engineio.AsyncServer.sockets is read for sockets without a websocket (here: long-polling)."""
    monkeypatch.setattr(direct, "SERVER_SOCKETS", RENAMED)
    async with running(tmp_path) as live:
        client = await live.client(transports=("polling",))
        assert (await client.subscribe("driver:d-1"))["ok"]
        await _publish_all(live, "driver:d-1", paced=client)
        await client.wait_for(N)
    assert client.seqs("driver:d-1") == list(range(1, N + 1))
    assert live.frames() == {"direct": 0, "queued": 0, "fallback": N}
    assert live.manager.engine.missing == {f"engineio.AsyncServer.{RENAMED}"}


async def test_a_polling_client_with_the_pinned_versions_is_queued_not_fallback(tmp_path: Path) -> None:
    async with running(tmp_path, push_send_backlog=N) as live:  # never slow: nothing coalesced
        client = await live.client(transports=("polling",))
        assert (await client.subscribe("driver:d-1"))["ok"]
        await _publish_all(live, "driver:d-1", paced=client)
        await client.wait_for(N)
    assert client.seqs("driver:d-1") == list(range(1, N + 1))
    assert live.frames() == {"direct": 0, "queued": N, "fallback": 0}


class _Without:
    """`obj` minus one attribute: what a socket object of a later engineio could look like."""

    def __init__(self, obj: Any, name: str) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, name: str) -> Any:
        if name == self._name:
            raise AttributeError(name=name, obj=self)
        return getattr(self._obj, name)


async def test_a_socket_that_loses_an_attribute_on_the_way_is_unlinked_and_served_by_engineio(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        await live.namespace.publish([push("driver:d-1", 1)])
        await client.wait_for(1)
        (link,) = live.manager.engine.links.values()
        link.socket = _Without(link.socket, "upgraded")
        await _publish_all(live, "driver:d-1", N)
        await client.wait_for(N)
        assert live.manager.engine.links == {}
    assert client.seqs("driver:d-1") == list(range(1, N + 1))
    assert live.frames() == {"direct": 1, "queued": 0, "fallback": N - 1}
    assert live.manager.engine.missing == {"_Without.upgraded"}


async def test_an_encoder_that_no_longer_reads_back_as_the_shared_prefix_encodes_whole_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EVENT prefix is derived from python-socketio's encoder; one it cannot derive is reported and
    the library encodes each update's packet itself (clients read it alike; frames are still shared)."""
    assert event_prefix(NAMESPACE, "update") == '2/live,["update",'  # what the pinned version encodes
    encode = socketio.packet.Packet.encode
    monkeypatch.setattr(socketio.packet.Packet, "encode", lambda self: encode(self) + " ")
    event_prefix.cache_clear()
    try:
        assert event_prefix(NAMESPACE, "update") is None
        async with running(tmp_path) as live:
            client = await live.client()
            assert (await client.subscribe("driver:d-1"))["ok"]
            await _publish_all(live, "driver:d-1")
            await client.wait_for(N)
            missing = live.manager.engine.missing
        update = Update("driver:d-1", 1, "driver.location", 0, 3, 0, 0, '{"n":1}')
        assert update.packet().data == encode(socketio.packet.Packet(
            socketio.packet.EVENT, data=["update", update.payload()], namespace=NAMESPACE)) + " "
    finally:
        event_prefix.cache_clear()
    assert client.seqs("driver:d-1") == list(range(1, N + 1))
    assert missing == {direct.EVENT_ENCODING}
    assert live.frames()["direct"] > 0


async def test_one_connection_failing_does_not_stop_the_others(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path) as live:
        broken, fine = await live.client(sub="broken"), await live.client(sub="fine")
        for client in (broken, fine):
            assert (await client.subscribe("driver:d-1"))["ok"]
        conn = next(c for c in live.manager.conns.values() if c.principal.sub == "broken")

        def holds(channel: str) -> bool:
            raise RuntimeError("a bug")

        conn.queue.holds = holds  # type: ignore[method-assign]
        await _publish_all(live, "driver:d-1", 10)
        await fine.wait_for(10)
    assert fine.seqs("driver:d-1") == list(range(1, 11)) and broken.updates == []
    assert live.counter("livetrack_push_delivery_errors", where="connection") == 10
    assert sum(r.exc_info is not None for r in caplog.records) == 10  # one traceback per update, not per client


async def test_a_failed_fan_out_is_counted_and_the_batch_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        deliver = live.manager.deliver

        async def flaky(update: Update, now_ms: float) -> None:
            if update.seq == 2:
                raise RuntimeError("a bug")
            await deliver(update, now_ms)

        monkeypatch.setattr(live.manager, "deliver", flaky)
        await live.namespace.publish([push("driver:d-1", seq) for seq in (1, 2, 3)])
        await client.wait_for(2)
        resumed = await client.subscribe("driver:d-1", since=1)  # the history has it: stored before the fan-out
    assert client.seqs("driver:d-1") == [1, 3]
    assert [u["seq"] for u in resumed["updates"]] == [2, 3]
    assert live.counter("livetrack_push_delivery_errors", where="update") == 1


async def test_malformed_push_messages_are_skipped_counted_and_the_batch_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        not_json = {**push("driver:d-1", 2), "data": "{not json"}
        not_object = {**push("driver:d-1", 3), "data": "[1, 2]"}
        no_seq = {k: v for k, v in push("driver:d-1", 4).items() if k != "seq"}
        no_data = {**push("driver:d-1", 5), "data": None}
        await live.namespace.publish([push("driver:d-1", 1), not_json, not_object, no_seq, no_data,
                                      push("driver:d-1", 6)])
        await client.wait_for(2)
    assert client.seqs("driver:d-1") == [1, 6]
    assert live.counter("livetrack_push_bad") == 4 and live.counter("livetrack_push_messages") == 6
