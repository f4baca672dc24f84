"""Root exception of the worker area."""
from __future__ import annotations

__all__ = ["AgentError", "Rejected"]


class AgentError(Exception):
    """Root of the errors agents raise."""


class Rejected(AgentError):
    """A record the agent will not apply; dead-lettered with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
