"""Per request: a request id (``X-Request-ID`` in and out), one log line, HTTP metrics.

A plain ASGI middleware (no response buffering). The route label is the matched
route's template, so ``/api/v1/sweeps/17`` and ``/api/v1/sweeps/18`` are one series.
Headers are never logged (the Authorization header carries tokens).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.metrics import UNMATCHED_ROUTE, Metrics

log = logging.getLogger("gridsweep.http")

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept when it is short and plain; anything else is replaced (log injection).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Busy, boring routes: logged at DEBUG when they succeed (workers poll and heartbeat all day).
_QUIET_PREFIXES = ("/api/v1/workers", "/healthz", "/readyz", "/metrics")


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            rid = value.decode("latin-1")
            return rid if _VALID_ID.match(rid) else None
    return None


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope) or uuid.uuid4().hex
        logs.set_fields(request_id=rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe_request(scope["method"], route, status, elapsed)
            quiet = status < 400 and scope["path"].startswith(_QUIET_PREFIXES)
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %s %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                extra=_extra(scope, route, status, elapsed),
            )
            logs.set_fields(request_id=None)


def _extra(scope: Scope, route: str, status: int, elapsed: float) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "method": scope["method"],
        "route": route,
        "path": scope["path"],
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "client": client[0] if client else None,
    }
