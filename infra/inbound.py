"""A record an agent consumes, whichever consumer read it (the batch feed or Faust's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Inbound"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One Kafka record handed to an agent; `source` is the Faust event it came in, if Faust read it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    source: Any = None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, if the record has it."""
        found = [v for k, v in self.headers if k == name]
        return found[-1] if found else None

    @property
    def where(self) -> str:
        """topic[partition]@offset, for logs and dead letters."""
        return f"{self.topic}[{self.partition}]@{self.offset}"
