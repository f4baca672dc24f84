"""Domain errors -> HTTP, in this one place."""
from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError
from gateway.keys import METRICS, SETTINGS
from infra.producer import ProduceError

__all__ = ["error_middleware"]

log = logging.getLogger(__name__)


def _refuse(request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
    request.app[METRICS].rejected.labels(str(status)).inc()
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return _refuse(request, exc.status, exc.body())
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].ingest_max_body_bytes
        return _refuse(request, 413, {"error": f"body larger than {limit} bytes"})
    except ProduceError as exc:
        # Not acked by Kafka: the client retries; duplicate seqs are dropped downstream.
        log.error("%s %s: %s", request.method, request.path, exc)
        return _refuse(request, 503, {"error": "event log unavailable, retry", "retry": True})
