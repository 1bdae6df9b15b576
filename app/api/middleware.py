"""ASGI middleware (pure ASGI: no response buffering, streaming untouched).

* ``RequestMiddleware``: a request id (``X-Request-ID`` in and out), one log line, HTTP metrics.
  The route label is the matched route's template, so ``/api/v1/sweeps/17`` and
  ``/api/v1/sweeps/18`` are one series. Headers are never logged (Authorization carries tokens).
* ``SecurityHeadersMiddleware``: CSP (same origin only) and friends on every answer; no CORS.
* ``BodyLimitMiddleware``: 413 for a body over the limit, declared or chunked.
* ``AuthMiddleware``: when auth is on, no valid token -> 401 (scopes: ``app.auth.Authorize``).

Order in ``create_app`` (outermost first): request, security headers, body limit, auth; so a
401 or a 413 is logged, counted and carries the security headers too.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import PUBLIC_PATHS, authenticate, bearer_token, reachable
from app.metrics import UNMATCHED_ROUTE, Metrics
from gridsweep import logs

log = logging.getLogger("gridsweep.http")
auth_log = logging.getLogger("gridsweep.api")


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


# Same origin only: no inline script or style, no framing, nothing from elsewhere (images may
# also be data: URIs, as the icons in stylesheets are).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class SecurityHeadersMiddleware:
    """Set the security headers on every HTTP response (and never any CORS header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
                if api:  # API answers (tokens among them) are never cached by browsers or proxies
                    headers.setdefault("cache-control", "no-store")
                for k in [k for k in headers if k.startswith("access-control-")]:
                    del headers[k]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """413 for a request body over the limit: declared (Content-Length) or streamed (chunked).

    Bytes are counted as the app reads them (nothing is buffered here). Past the limit the
    app is told the client left, its answer is dropped and a 413 is sent instead, so a
    chunked upload cannot get past the limit. Upload routes (``upload_paths``) have their own,
    larger limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int = 0, upload_paths: str = "") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = max(upload_bytes, max_bytes)
        self.upload_paths = re.compile(upload_paths) if upload_paths else None

    def limit_for(self, path: str) -> int:
        if self.upload_paths is not None and self.upload_paths.match(path):
            return self.upload_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"detail": "invalid Content-Length"}, {"connection": "close"})
                return
            if int(declared) > limit:
                await self._too_large(send, limit)
                return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body: replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._too_large(send, limit)

    async def _too_large(self, send: Send, limit: int) -> None:
        detail = f"request body over the limit of {limit} bytes"
        await send_json(send, 413, {"detail": detail}, {"connection": "close"})


class AuthMiddleware:
    """When auth is on, every request but the public paths needs a valid token (else 401).

    Scopes are checked by the routers' ``Authorize`` dependency; this layer makes sure a
    route or mount that forgot it is still closed to anonymous callers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state_app = scope.get("app")
        settings = state_app.state.settings if state_app is not None else None
        if scope["type"] != "http" or settings is None or not settings.auth_enabled:
            await self.app(scope, receive, send)
            return
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(Headers(scope=scope), scope["method"])
        principal = None
        if token:
            try:
                principal = await run_in_threadpool(authenticate, state_app.state.db, token)
            except (DBAPIError, PoolTimeout) as exc:
                auth_log.warning("token check failed, database unavailable: %s", exc.__class__.__name__)
                await send_json(
                    send, 503, {"detail": "database unavailable, retry later"}, {"retry-after": "1"}
                )
                return
        if principal is None:
            await send_json(
                send, 401, {"detail": "missing, invalid or revoked API token"}, {"www-authenticate": "Bearer"}
            )
            return
        if not reachable(principal.scope, scope["path"]):
            detail = f"token {principal.name!r} has scope {principal.scope.value!r}: the worker protocol only"
            await send_json(send, 403, {"detail": detail})
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
