"""Domain errors -> HTTP, in this one place; the API's rate limit per token."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.auth import principal_of
from gateway.errors import GatewayError, TooManyRequests
from gateway.keys import METRICS, SETTINGS
from gateway.limits import Buckets, caller_of
from infra.producer import ProduceError

__all__ = ["error_middleware", "rate_limit_middleware"]

log = logging.getLogger(__name__)


def _refuse(request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
    request.app[METRICS].rejected.labels(str(status)).inc()
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TooManyRequests as exc:
        response = _refuse(request, exc.status, exc.body())
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response
    except GatewayError as exc:
        return _refuse(request, exc.status, exc.body())
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].ingest_max_body_bytes
        return _refuse(request, 413, {"error": f"body larger than {limit} bytes"})
    except ProduceError as exc:
        # Not acked by Kafka: the client retries; duplicate seqs are dropped downstream.
        log.error("%s %s: %s", request.method, request.path, exc)
        return _refuse(request, 503, {"error": "event log unavailable, retry", "retry": True})


def rate_limit_middleware(rate_per_s: float) -> Callable[..., Any]:
    """Every `/v1/` request counts against its token's bucket (after auth: the principal is known)."""
    buckets = Buckets(rate_per_s)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        caller = caller_of(principal_of(request)) if request.path.startswith("/v1/") else None
        retry_s = buckets.take(caller) if caller is not None else None
        if retry_s is not None:
            raise TooManyRequests(f"over {rate_per_s:g} requests a second for this token", retry_s)
        return await handler(request)

    return middleware
