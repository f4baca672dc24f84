"""gateway.sockets.LiveNamespace with real python-socketio clients: every event is answered, with an
error for a missing or malformed payload; a client's `connect` or `disconnect` event is refused
quietly; cell channels are H3 cells of the configured resolution."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h3
import pytest

try:
    from gateway.channels import channel_problem
except ImportError:
    channel_problem = None  # type: ignore
from tests.unit.gateway.live_server import Client, Live, push, running

EVENTS = ("subscribe", "unsubscribe", "ack", "accept", "decline")
CELL = h3.latlng_to_cell(37.7749, -122.4194, 9)


async def _still_served(live: Live, client: Client, channel: str = "driver:d-1") -> None:
    """The connection still works: it subscribes and gets an update."""
    assert (await client.subscribe(channel))["ok"]
    before = len(client.updates)
    await live.namespace.publish([push(channel, live.namespace.store.head(channel) + 1)])
    await client.wait_for(before + 1)


@pytest.mark.parametrize("event", EVENTS)
async def test_an_event_without_a_payload_gets_an_error_ack(tmp_path: Path, event: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        ack = await client.call(event)  # before: TypeError in the handler, no ack, the client's timeout
        assert ack == {"ok": False, "error": f"{event} takes one payload object, got 0"}
        ack = await client.call(event, ({"channel": "fleet"}, {"seq": 1}))
        assert ack == {"ok": False, "error": f"{event} takes one payload object, got 2"}
        await _still_served(live, client)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("payload", ["fleet", 7, True, [], ["fleet"], {}, {"channel": 7}, {"channel": "nope"},
                                     {"ride_id": 7}])
async def test_a_malformed_payload_gets_an_error_ack(tmp_path: Path, event: str, payload: Any) -> None:
    async with running(tmp_path) as live:
        client = await live.client("driver", "d-1")
        ack = await client.call(event, payload)
        assert ack["ok"] is False and isinstance(ack["error"], str) and ack["error"]


async def test_a_malformed_seq_gets_an_error_ack(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client("driver", "d-1")
        assert await client.call("ack", {"channel": "driver:d-1", "seq": "1"}) == {
            "ok": False, "error": "seq must be an integer"}
        assert await client.subscribe("driver:d-1", since=-1) == {
            "ok": False, "error": "since must be a seq (integer >= 0)"}


async def test_well_formed_events_are_answered_as_before(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        assert (await client.subscribe("driver:d-1"))["ok"]
        assert await client.call("ack", {"channel": "driver:d-1", "seq": 1}) is None  # clients do not ask
        assert await client.call("unsubscribe", {"channel": "driver:d-1"}) == {"ok": True, "channel": "driver:d-1"}
        # No dispatch wired in: refused with the reason (gateway.rides answers for real).
        assert (await client.call("accept", {"ride_id": "r-1"}))["ok"] is False


@pytest.mark.parametrize("event", ["connect", "disconnect"])
async def test_a_client_event_named_like_a_lifecycle_event_is_refused_quietly(
    tmp_path: Path, event: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        token = live.tokens.mint("ops", "again")
        for payload in ({"token": token}, None, "x"):
            ack = await client.call(event, payload)
            assert ack["ok"] is False and f"no event {event!r}" in ack["error"]
        assert len(live.manager.conns) == 1  # not registered twice, nor forgotten
        await _still_served(live, client)
        assert live.counter("livetrack_live_refused", what="event") == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # before: a traceback per call


async def test_an_unknown_event_is_answered(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        ack = await client.call("subscribe_all", {"channel": "fleet"})
        assert ack["ok"] is False and "subscribe, unsubscribe, ack, accept, decline or status" in ack["error"]


async def test_connections_are_still_refused_without_a_valid_token(tmp_path: Path) -> None:
    async with running(tmp_path) as live:
        for token in ("", "garbage"):
            client = await live.client(token=token, connect=False)
            with pytest.raises(Exception):
                await client.connect()
        assert live.manager.conns == {} and live.counter("livetrack_live_refused", what="connect") == 2


@pytest.mark.parametrize("channel, problem", [
    ("cell:zzzz", "'zzzz' is not an H3 cell index"),
    (f"cell:{CELL.upper()}", "is not an H3 cell index"),  # never what the agents push
    (f"cell:0{CELL}", "is not an H3 cell index"),
    (f"cell:{h3.cell_to_parent(CELL, 8)}", "cells are of H3 resolution 9"),
    (f"cell:{h3.cell_to_children(CELL, 10)[0]}", "cells are of H3 resolution 9"),
    ("cell:8928308280fffff ", "channel must be"),
])
async def test_cells_must_be_h3_cells_of_the_configured_resolution(tmp_path: Path, channel: str,
                                                                   problem: str) -> None:
    async with running(tmp_path) as live:
        client = await live.client()
        ack = await client.subscribe(channel)
        assert ack["ok"] is False and problem in ack["error"], ack
        assert (await client.call("unsubscribe", {"channel": channel}))["ok"] is False
        assert (await client.subscribe(f"cell:{CELL}"))["ok"]


def test_the_resolution_is_the_configured_one() -> None:
    assert channel_problem(f"cell:{CELL}", 9) is None
    assert channel_problem(f"cell:{h3.cell_to_parent(CELL, 7)}", 7) is None
    assert channel_problem(f"cell:{CELL}", 7) == f"cells are of H3 resolution 7, {CELL!r} is of 9"
    assert [c for c in ("driver:d-1", "ride:r_1", "fleet") if channel_problem(c, 9)] == []
