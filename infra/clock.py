"""Wall-clock time as every record and message carries it: epoch milliseconds."""
from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Epoch milliseconds now."""
    return time.time_ns() // 1_000_000
