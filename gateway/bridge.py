"""Kafka -> Socket.IO: consume the push topic and hand updates to the app, started and stopped with it.

Every gateway node reads every partition (manual assignment, no group): each
node serves its own sockets, whatever channel they watch. On start the bridge
replays the recent past of the topic so snapshots exist before the first
subscriber arrives, and reports ready once it has caught up (infra.tail).
A record that is not a PushMessage is skipped and counted
(`livetrack_push_undecodable`); the rest of its batch goes on.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from gateway.metrics import Metrics
from infra.settings import Settings
from infra.tail import TopicTail
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH

__all__ = ["PushBridge"]

Handler = Callable[[list[dict[str, Any]]], Awaitable[None]]


class PushBridge(TopicTail[dict[str, Any]]):
    """Reads `push` in a thread, decodes, and awaits `handler` with each batch on the loop."""

    def __init__(self, settings: Settings, handler: Handler, metrics: Metrics, *, replay_ms: int) -> None:
        codec = codec_for(PushMessage)

        def decode(_key: bytes | None, value: bytes) -> dict[str, Any]:
            try:
                return codec.loads(value)  # type: ignore[no-any-return]
            except Exception:
                metrics.undecodable.inc()
                raise  # TopicTail skips the record (and logs it)

        super().__init__(settings.bootstrap, PUSH.name, decode, handler,
                         replay_ms=replay_ms, client_id=f"{settings.app_id}-gateway")
