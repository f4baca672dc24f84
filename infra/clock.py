"""Wall-clock time as every record and message carries it: epoch milliseconds."""
from __future__ import annotations

import time

__all__ = ["InputClock", "now_ms"]


def now_ms() -> int:
    """Epoch milliseconds now."""
    return time.time_ns() // 1_000_000


class InputClock:
    """A replay's clock: the time of the input being decided, not of the machine replaying it.

    While the runtime decides a record it is that record's timestamp (`deciding`), so a shadow
    decides each record at the time live decided it (within live's processing latency), however
    long after the replay runs; otherwise (timers, produce timestamps) the latest input time seen.
    """

    def __init__(self) -> None:
        self.latest = 0
        self._current: int | None = None

    def __call__(self) -> int:
        return self._current if self._current is not None else self.latest

    def deciding(self, ts: int) -> None:
        self._current = ts
        if ts > self.latest:
            self.latest = ts

    def decided(self) -> None:
        self._current = None
