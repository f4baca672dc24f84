"""What the gateway knows per channel: a bounded history of updates, for snapshots and resume.

Seqs come from the agent that owns the channel's state (PushMessage.seq); the
gateway never makes one up, so every gateway node numbers a message alike and
a client may resume on any of them. A channel's history is contiguous in seq,
bounded by count and age, and rebuilt from the `push` topic when a gateway boots.
"""
from __future__ import annotations

import json
import math
import re
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import h3
import socketio
from engineio import packet as eio_packet

from gateway.direct import event_prefix, text_frame
from schemas.records import ID_PATTERN

__all__ = [
    "CHANNEL_RE", "FLEET", "NAMESPACE", "UPDATE_EVENT", "ChannelHistory", "ChannelStore", "Resume", "Update",
    "channel_problem", "update_from_push",
]

# driver:{id}, ride:{id}, order:{id}, user:{id} (a user's notifications), cell:{h3}, or the ops firehose `fleet` (the syntax; channel_problem
# says the rest).
CHANNEL_RE = re.compile(rf"(?:(?:driver|ride|order|user|cell):{ID_PATTERN}|fleet)\Z")
FLEET = "fleet"
NAMESPACE = "/live"
UPDATE_EVENT = "update"


def channel_problem(channel: object, h3_resolution: int) -> str | None:
    """Why `channel` cannot be subscribed to, or None. A cell must be an H3 cell of the resolution the
    agents push (`Settings.h3_resolution`), spelt as H3 spells it: any other would never get an update."""
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        return "channel must be driver:{id}, ride:{id}, order:{id}, user:{id}, cell:{h3} or fleet"
    if channel.startswith("cell:"):
        cell = channel[5:]
        if not h3.is_valid_cell(cell) or h3.int_to_str(h3.str_to_int(cell)) != cell:
            return f"{cell!r} is not an H3 cell index (lower-case hex, as H3 writes it)"
        if h3.get_resolution(cell) != h3_resolution:
            return f"cells are of H3 resolution {h3_resolution}, {cell!r} is of {h3.get_resolution(cell)}"
    return None


def _event_text(payload_json: str) -> str:
    """The Socket.IO EVENT packet `update` on /live carrying `payload_json` (already JSON text)."""
    prefix = event_prefix(NAMESPACE, UPDATE_EVENT)
    if prefix is not None:
        return prefix + payload_json + "]"
    # python-socketio's encoder no longer reads back as the shared prefix (gateway.direct reports it):
    # let it encode the whole packet.
    return str(socketio.packet.Packet(socketio.packet.EVENT, data=[UPDATE_EVENT, json.loads(payload_json)],
                                      namespace=NAMESPACE).encode())  # a str: JSON has no binary parts


@dataclass(slots=True, eq=True)
class Update:
    """One push message as the gateway holds it; `text` is the `update` event's payload, encoded once.

    `must_ack` marks an event (priority at or above the ack threshold: offers,
    status changes): acked by clients, retried until its TTL ends, never coalesced.
    Anything else is state, where the latest of a type supersedes the earlier ones.
    """

    channel: str
    seq: int
    type: str
    ts: int  # the event's time (gateway receipt of the ping), epoch ms
    priority: int
    sent_ts: int  # when the agent produced it, epoch ms: the TTL and the history age count from here
    ttl_ms: int  # 0: never expires
    data_json: str
    must_ack: bool = False
    text: str = field(init=False, compare=False, repr=False)
    _packet: eio_packet.Packet | None = field(init=False, compare=False, repr=False, default=None)
    _frame: bytes | None = field(init=False, compare=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.text = self.payload_json(0)

    @property
    def expires_ts(self) -> float:
        return self.sent_ts + self.ttl_ms if self.ttl_ms else math.inf

    def expired(self, now_ms: float) -> bool:
        return now_ms >= self.expires_ts

    def payload_json(self, skipped: int) -> str:
        """The payload as JSON text; `skipped` > 0 says that many seqs before this one were left out on purpose."""
        extra = ',"ack":true' if self.must_ack else ""
        if self.ttl_ms:
            extra += f',"expires_ts":{self.sent_ts + self.ttl_ms}'
        if skipped:
            extra += f',"skipped":{skipped}'
        # `data` is embedded as the JSON text it arrived as (validated in update_from_push).
        return (f'{{"channel":{json.dumps(self.channel)},"seq":{self.seq},"type":{json.dumps(self.type)},'
                f'"ts":{self.ts},"priority":{self.priority}{extra},"data":{self.data_json}}}')

    def payload(self, skipped: int = 0) -> dict[str, Any]:
        """The payload as a dict (acks and snapshots; the fan-out sends `packet`)."""
        return json.loads(self.text if not skipped else self.payload_json(skipped))  # type: ignore[no-any-return]

    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)  # type: ignore[no-any-return]

    def packet(self, skipped: int = 0) -> eio_packet.Packet:
        """The Engine.IO frame of the `update` event, built once and shared by every recipient."""
        if skipped:
            return eio_packet.Packet(eio_packet.MESSAGE, _event_text(self.payload_json(skipped)))
        if self._packet is None:
            self._packet = eio_packet.Packet(eio_packet.MESSAGE, _event_text(self.text))
        return self._packet

    def frame(self) -> bytes:
        """`packet()` as the WebSocket frame every uncompressed connection gets (gateway.direct), built once."""
        if self._frame is None:
            self._frame = text_frame(self.packet().encode())
        return self._frame


def update_from_push(msg: dict[str, Any], ack_priority: int) -> Update:
    """An Update from a decoded PushMessage dict; ValueError when its `data` is not a JSON object."""
    data_json = msg["data"]
    if not isinstance(json.loads(data_json), dict):  # embedded verbatim in every client's frame: must be sound
        raise ValueError("push data is not a JSON object")
    return Update(
        channel=msg["channel"], seq=msg["seq"], type=msg["type"], ts=msg["event_ts"], priority=msg["priority"],
        sent_ts=msg["sent_ts"], ttl_ms=msg["ttl_ms"], data_json=data_json,
        must_ack=msg["priority"] >= ack_priority,
    )


@dataclass(frozen=True)
class Resume:
    """What a `subscribe` with `since` gets: the missed updates (each with the seqs skipped before it),
    or, when the history cannot cover the gap, `recovered` False and the snapshot."""

    recovered: bool
    head: int
    updates: list[tuple[Update, int]]
    snapshot: Update | None = None


class ChannelHistory:
    """One channel: its latest seq, and its recent updates, contiguous in seq."""

    __slots__ = ("updates", "head", "latest", "latest_state")

    def __init__(self, max_len: int) -> None:
        self.updates: deque[Update] = deque(maxlen=max_len)  # the oldest falls out
        self.head = 0
        self.latest: Update | None = None
        self.latest_state: Update | None = None  # the newest non-event: a snapshot even once expired

    def append(self, update: Update) -> bool:
        """Keep `update`; False when its seq is not newer than the head (a replay or redelivery)."""
        if update.seq <= self.head:
            return False
        if self.updates and update.seq != self.head + 1:
            self.updates.clear()  # a hole (the replay window began mid-channel): only contiguous runs resume
        self.updates.append(update)
        self.head = update.seq
        self.latest = update
        if not update.must_ack:
            self.latest_state = update
        return True

    def trim(self, oldest_sent_ts: float) -> None:
        while self.updates and self.updates[0].sent_ts < oldest_sent_ts:
            self.updates.popleft()

    def snapshot(self, now_ms: float) -> Update | None:
        """The channel's current state: the latest update, unless it is an event whose TTL has ended."""
        latest = self.latest
        if latest is not None and latest.must_ack and latest.expired(now_ms):
            return self.latest_state
        return latest

    def after(self, since: int) -> list[Update] | None:
        """Every held update with seq > since, in order; None when the history does not reach back to since + 1."""
        if since >= self.head:
            return []
        if not self.updates or self.updates[0].seq > since + 1:
            return None
        return list(islice(self.updates, since + 1 - self.updates[0].seq, None))


class ChannelStore:
    """Every channel's history, bounded by count and age; snapshots and resume."""

    def __init__(self, *, max_len: int, max_age_ms: int) -> None:
        self.max_len = max_len
        self.max_age_ms = max_age_ms
        self._channels: dict[str, ChannelHistory] = {}

    def offer(self, update: Update) -> bool:
        """Record `update`; False when it is not newer than what is held (duplicate or old)."""
        history = self._channels.get(update.channel)
        if history is None:
            history = self._channels[update.channel] = ChannelHistory(self.max_len)
        return history.append(update)

    def head(self, channel: str) -> int:
        history = self._channels.get(channel)
        return history.head if history else 0

    def latest(self, channel: str) -> Update | None:
        history = self._channels.get(channel)
        return history.latest if history else None

    def snapshot(self, channel: str, now_ms: float) -> Update | None:
        history = self._channels.get(channel)
        return history.snapshot(now_ms) if history else None

    def drivers(self, now_ms: float) -> list[Update]:
        """The snapshot of every driver channel heard from within the history age (the `fleet` first paint)."""
        oldest = now_ms - self.max_age_ms
        snaps = (h.snapshot(now_ms) for c, h in self._channels.items() if c.startswith("driver:"))
        return [s for s in snaps if s is not None and s.sent_ts >= oldest]

    def resume(self, channel: str, since: int, now_ms: float) -> Resume:
        """What a client that has seen `since` missed: unexpired updates in order, or the snapshot."""
        history = self._channels.get(channel)
        if history is None:
            return Resume(True, 0, [])  # nothing within the history window: nothing missed that still matters
        history.trim(now_ms - self.max_age_ms)
        missed = history.after(since)
        if missed is None:
            return Resume(False, history.head, [], history.snapshot(now_ms))
        out: list[tuple[Update, int]] = []
        skipped = 0
        for update in missed:
            if update.expired(now_ms):
                skipped += 1  # never delivered late; the next one delivered says so
            else:
                out.append((update, skipped))
                skipped = 0
        return Resume(True, history.head, out)

    def sweep(self, now_ms: float) -> None:
        """Drop updates older than the history age from every channel (silent channels too)."""
        oldest = now_ms - self.max_age_ms
        for history in self._channels.values():
            history.trim(oldest)

    def __len__(self) -> int:
        return len(self._channels)
