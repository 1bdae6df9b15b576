"""ASGI middleware: security headers, the request-body limit, authentication.

Pure ASGI (no BaseHTTPMiddleware), so streaming responses and background tasks are
untouched. Order in ``create_app`` (outermost first): security headers, body limit,
authentication; so a 401 or a 413 carries the security headers too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import PUBLIC_PATHS, authenticate, bearer_token

log = logging.getLogger("gridsweep.api")

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
    """413 for a request body over ``max_bytes``, declared (Content-Length) or streamed (chunked).

    The body is read (up to the limit) before the app sees it and then replayed, so a
    chunked upload cannot get past the limit and the app never parses a partial body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"detail": "invalid Content-Length"}, {"connection": "close"})
                return
            if int(declared) > self.max_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, send: Send) -> None:
        detail = f"request body over the limit of {self.max_bytes} bytes"
        await send_json(send, 413, {"detail": detail}, {"connection": "close"})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns ``messages`` first, then defers to the real one (disconnects)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


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
                log.warning("token check failed, database unavailable: %s", exc.__class__.__name__)
                await send_json(
                    send, 503, {"detail": "database unavailable, retry later"}, {"retry-after": "1"}
                )
                return
        if principal is None:
            await send_json(
                send, 401, {"detail": "missing, invalid or revoked API token"}, {"www-authenticate": "Bearer"}
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
