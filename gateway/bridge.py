"""Kafka -> Socket.IO: consume the push topic and hand updates to the app, started and stopped with it.

Every gateway node reads every partition (manual assignment, no group): each
node serves its own sockets, whatever channel they watch. On start the bridge
replays the recent past of the topic so snapshots exist before the first
subscriber arrives, and reports ready once it has caught up (infra.tail).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from infra.settings import Settings
from infra.tail import TopicTail
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH

__all__ = ["PushBridge"]

Handler = Callable[[list[dict[str, Any]]], Awaitable[None]]


class PushBridge(TopicTail[dict[str, Any]]):
    """Reads `push` in a thread, decodes, and awaits `handler` with each batch on the loop."""

    def __init__(self, settings: Settings, handler: Handler, *, replay_ms: int) -> None:
        codec = codec_for(PushMessage)
        super().__init__(settings.bootstrap, PUSH.name, lambda _key, value: codec.loads(value), handler,
                         replay_ms=replay_ms, client_id=f"{settings.app_id}-gateway")
