"""The root exception of the operator tools: a command reports it and exits 2."""
from __future__ import annotations

__all__ = ["OpsError"]


class OpsError(RuntimeError):
    """An operator command cannot do what it was asked (unknown shadow, topic, table; bad range)."""
