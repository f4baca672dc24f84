"""What the gateway knows per channel: the latest message, the subscribe snapshot."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas.records import ID_PATTERN

__all__ = ["CHANNEL_RE", "Update", "ChannelStore", "update_from_push"]

# driver:{id}, ride:{id}, cell:{h3}, or the ops firehose `fleet`.
CHANNEL_RE = re.compile(rf"(?:(?:driver|ride|cell):{ID_PATTERN}|fleet)\Z")


@dataclass(frozen=True)
class Update:
    """One push message as clients receive it (`update` event)."""

    channel: str
    seq: int
    type: str
    ts: int
    priority: int
    ttl_ms: int
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"channel": self.channel, "seq": self.seq, "type": self.type, "ts": self.ts, "data": self.data}


def update_from_push(msg: dict[str, Any]) -> Update:
    """An Update from a decoded PushMessage dict."""
    return Update(
        channel=msg["channel"], seq=msg["seq"], type=msg["type"], ts=msg["event_ts"],
        priority=msg["priority"], ttl_ms=msg["ttl_ms"], data=json.loads(msg["data"]),
    )


class ChannelStore:
    """Latest update per channel; a replayed or redelivered older seq never overwrites a newer one."""

    def __init__(self) -> None:
        self._latest: dict[str, Update] = {}

    def offer(self, update: Update) -> bool:
        """Record `update`; False when it is not newer than what is held (duplicate or old)."""
        held = self._latest.get(update.channel)
        if held is not None and held.seq >= update.seq:
            return False
        self._latest[update.channel] = update
        return True

    def latest(self, channel: str) -> Update | None:
        return self._latest.get(channel)

    def snapshot(self, channel: str) -> dict[str, Any] | None:
        held = self._latest.get(channel)
        return held.payload() if held else None

    def __len__(self) -> int:
        return len(self._latest)
