"""Slow clients are cut off: header and body read timeouts, and a cap on connections.

Without a proxy in front, uvicorn alone would keep a connection open for as long as its
client likes while it sends its request's headers or body. Here:

* ``GRIDSWEEP_HEADER_TIMEOUT_SECONDS``: a request's headers must be complete this long after
  the connection opened or after the first byte of the request on a kept-alive connection
  (``SlowClientProtocol``, uvicorn's h11 protocol with a timer: uvicorn has none for this).
  Else the connection is closed, with a 408 when part of a request had arrived.
* ``GRIDSWEEP_BODY_TIMEOUT_SECONDS``: each part of a request body must arrive within this
  long of the last (``BodyTimeoutMiddleware``): else 408 and the connection is closed.
* ``GRIDSWEEP_MAX_CONNECTIONS``: uvicorn's ``limit_concurrency``; beyond this many open
  connections (or requests in progress), new requests get 503.

``server_config`` builds the uvicorn config with all three (``gridsweep serve``, ``run``, ``up``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.api.middleware import send_json
from app.config import Settings

log = logging.getLogger("gridsweep.http")

_HEADERS_LATE = json.dumps({"detail": "request headers not sent in time"}).encode()
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_HEADERS_LATE), _HEADERS_LATE)
)


class SlowClientProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the headers of each request."""

    header_timeout: float = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing is cut off too

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()  # from the first byte of this request
        super().data_received(data)
        if not self._between_requests():
            self._disarm()  # the headers are in: the body has its own timeout (middleware)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._between_requests():
            return
        begun = bool(self.conn.trailing_data[0]) and self.conn.their_state is h11.IDLE
        log.log(
            logging.INFO if begun else logging.DEBUG,  # an idle connection (a browser's preconnect)
            "closing a connection from %s: no complete request within %gs",
            self.client[0] if self.client else "?",
            self.header_timeout,
        )
        if begun:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def protocol_with(header_timeout: float) -> type[SlowClientProtocol]:
    return type("SlowClientProtocol", (SlowClientProtocol,), {"header_timeout": header_timeout})


class BodyTimeoutMiddleware:
    """408 (and the connection closed) when a request body stops arriving for ``timeout`` seconds.

    Only reads of the body are timed: once it is complete, ``receive`` (a disconnect
    listener) waits as long as it likes. The app is told the client left, its answer is
    dropped, and the 408 is sent instead (when it had not started answering).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                timed_out = True
                log.info("%s %s: no request body for %gs", scope["method"], scope["path"], self.timeout)
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the app's answer to a body that never came: replaced by the 408 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
        if timed_out and not started:
            detail = f"request body not sent in time (more than {self.timeout:g}s without data)"
            await send_json(send, 408, {"detail": detail}, {"connection": "close"})


def server_config(app: ASGIApp, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn config with the slow-client limits of ``settings`` (``kwargs``: host, port, logs...)."""
    return uvicorn.Config(
        app,
        http=protocol_with(settings.header_timeout_seconds),
        limit_concurrency=settings.max_connections,
        **kwargs,
    )


def serve(app: ASGIApp, settings: Settings, **kwargs: Any) -> None:
    """Run ``app`` under uvicorn until stopped (what ``uvicorn.run`` does, with our config)."""
    server = uvicorn.Server(server_config(app, settings, **kwargs))
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's exit status when it could not start (a port in use)
