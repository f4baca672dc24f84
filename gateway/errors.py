"""Root exception of the gateway; middlewares.py maps each to one HTTP status."""
from __future__ import annotations

from typing import Any

__all__ = [
    "GatewayError", "InvalidInput", "NotFound", "PayloadTooLarge", "Unauthorized", "Forbidden", "Conflict", "TooManyRequests",
]


class GatewayError(Exception):
    """Root of the errors the gateway turns into HTTP responses."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}


class InvalidInput(GatewayError):
    """Bad request: `problems` name each bad item's index, field and reason."""

    status = 400

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "problems": self.problems}


class NotFound(GatewayError):
    status = 404


class PayloadTooLarge(GatewayError):
    status = 413



class Unauthorized(GatewayError):
    """No valid token: missing, malformed, expired, badly signed or of an unknown role."""

    status = 401


class Forbidden(GatewayError):
    """A valid token whose role or subject may not do this; `problems` as for InvalidInput."""

    status = 403

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "problems": self.problems} if self.problems else {"error": str(self)}


class Conflict(GatewayError):
    """The request is valid but the resource's state does not allow it now (a ride already final)."""

    status = 409


class TooManyRequests(GatewayError):
    """The caller is over its rate limit; retry after `retry_after_s`."""

    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "retry_after_s": round(self.retry_after_s, 3)}
