"""Test doubles the agent tests share."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WAITED", "FakeGroup", "FakeProducer"]


WAITED = "<wait>"  # in FakeProducer.sent where an agent waited for a group's acks


@dataclass
class FakeGroup:
    sent: list = field(default_factory=list)
    offsets: dict = field(default_factory=dict)

    async def wait(self) -> None:
        self.sent.append((WAITED, b"", None, None))


@dataclass
class FakeProducer:
    """Records what the agent produces; every record is 'acked' at once."""

    sent: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)

    def group(self) -> FakeGroup:
        return FakeGroup(self.sent)

    def send(self, group: FakeGroup, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None) -> None:
        self.sent.append((topic, value, key, partition))
        if partition is not None:
            group.offsets[(topic, partition)] = len(self.sent)

    def on(self, topic: str) -> list[tuple[bytes, bytes | None, int | None]]:
        return [(v, k, p) for t, v, k, p in self.sent if t == topic]
