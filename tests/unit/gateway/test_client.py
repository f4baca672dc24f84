"""gateway.client.LiveClient without a network: dedupe by seq, gap repair, declared skips, acks, resume acks."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.client import LiveClient


class _Wire:
    """Stands in for python-socketio's emit: records what the client sends; acks subscribes on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.callbacks: list[Any] = []

    async def emit(self, event: str, data: dict[str, Any], namespace: str | None = None, callback: Any = None) -> None:
        self.sent.append((event, data))
        if callback is not None:
            self.callbacks.append(callback)


def _client() -> tuple[LiveClient, _Wire, list[tuple[int, int]], list[Any]]:
    got: list[tuple[int, int]] = []
    snapshots: list[Any] = []
    client = LiveClient("http://127.0.0.1:1", "t", on_update=lambda u: got.append((u["seq"], u.get("skipped", 0))),
                        on_snapshot=lambda c, s: snapshots.append(s))
    wire = _Wire()
    client.sio.emit = wire.emit  # type: ignore[method-assign]
    return client, wire, got, snapshots


def _u(seq: int, channel: str = "driver:a", **extra: Any) -> dict[str, Any]:
    return {"channel": channel, "seq": seq, "type": "driver.location", "ts": 0, "data": {}, **extra}


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def _subscribed(client: LiveClient, wire: _Wire, ack: dict[str, Any]) -> dict[str, Any]:
    pending = asyncio.ensure_future(client.subscribe(ack["channel"]))
    await _settle()
    wire.callbacks.pop(0)({"ok": True, **ack})
    return await pending


async def test_first_subscribe_paints_the_snapshot_and_starts_at_the_head() -> None:
    client, wire, got, snapshots = _client()
    ack = await _subscribed(client, wire, {"channel": "driver:a", "seq": 7, "snapshot": _u(7)})
    assert wire.sent == [("subscribe", {"channel": "driver:a"})] and ack["seq"] == 7
    assert snapshots == [_u(7)] and client.last == {"driver:a": 7}
    client._on_update(_u(8))
    assert got == [(8, 0)]


async def test_duplicates_are_dropped_and_events_acked_again() -> None:
    client, wire, got, _ = _client()
    await _subscribed(client, wire, {"channel": "driver:a", "seq": 0, "snapshot": None})
    for seq in (1, 2, 2, 1, 3):
        client._on_update(_u(seq))
    client._on_update(_u(3, ack=True))  # a retried event: the ack was lost
    await _settle()
    assert got == [(1, 0), (2, 0), (3, 0)] and client.stats.duplicates == 3
    assert wire.sent[-1] == ("ack", {"channel": "driver:a", "seq": 3})


async def test_declared_skips_are_not_gaps() -> None:
    client, wire, got, _ = _client()
    await _subscribed(client, wire, {"channel": "driver:a", "seq": 2, "snapshot": None})
    client._on_update(_u(5, skipped=2))
    assert got == [(5, 2)] and client.stats.gaps == 0 and client.stats.skipped == 2


async def test_a_gap_resubscribes_from_the_last_seq_and_the_ack_fills_it() -> None:
    client, wire, got, _ = _client()
    await _subscribed(client, wire, {"channel": "driver:a", "seq": 2, "snapshot": None})
    client._on_update(_u(5))  # 3 and 4 never came
    client._on_update(_u(6))  # still resyncing: no second resubscribe
    await _settle()
    assert client.stats.gaps == 1 and wire.sent[-1] == ("subscribe", {"channel": "driver:a", "since": 2})
    wire.callbacks.pop(0)({"ok": True, "channel": "driver:a", "seq": 6, "recovered": True,
                           "updates": [_u(3), _u(4), _u(5), _u(6)]})
    client._on_update(_u(7))
    assert got == [(3, 0), (4, 0), (5, 0), (6, 0), (7, 0)] and client.stats.resets == 0


async def test_an_unrecoverable_resume_takes_the_snapshot_and_counts_a_reset() -> None:
    client, wire, got, snapshots = _client()
    await _subscribed(client, wire, {"channel": "driver:a", "seq": 2, "snapshot": None})
    await client._on_connect()  # a reconnection
    await _settle()
    assert wire.sent[-1] == ("subscribe", {"channel": "driver:a", "since": 2})
    wire.callbacks.pop(0)({"ok": True, "channel": "driver:a", "seq": 900, "recovered": False, "snapshot": _u(900)})
    client._on_update(_u(901))
    assert snapshots[-1] == _u(900) and got == [(901, 0)] and client.stats.resets == 1


async def test_fleet_snapshots_skip_channels_watched_alone() -> None:
    client, wire, got, _ = _client()
    await _subscribed(client, wire, {"channel": "driver:a", "seq": 3, "snapshot": None})
    await _subscribed(client, wire, {"channel": "fleet", "seq": 0, "snapshot": None,
                                     "drivers": [_u(9, "driver:a"), _u(4, "driver:b")]})
    assert got == [(4, 0)] and client.last["driver:a"] == 3 and client.stats.gaps == 0
    client._on_update(_u(6, "driver:b"))  # fleet-only channels take the latest, no repair
    assert got[-1] == (6, 0) and client.stats.gaps == 0


async def test_a_refused_subscription_raises_with_the_reason() -> None:
    from gateway.client import SubscribeRefused

    client, wire, _, _ = _client()
    pending = asyncio.ensure_future(client.subscribe("fleet"))
    await _settle()
    wire.callbacks.pop(0)({"ok": False, "error": "not allowed: fleet"})
    with pytest.raises(SubscribeRefused, match="not allowed: fleet"):
        await pending
    assert "fleet" not in client.channels
