"""Error handlers: every failure a client can cause is a 4xx with a reason, never a 500.

* 422 (validation, spec): the field path and the reason. The bad input is echoed, made
  renderable first (NaN/Infinity as strings; NUL bytes and lone surrogates, keys too, as U+FFFD).
* 422 for a value the database cannot store (a driver ``DataError``, or text it cannot encode):
  the edge types (``app.edge_types``) refuse such input first; this is the net behind them.
* 503 + ``Retry-After`` while the database is unreachable (a temporary condition).
* 405 with an ``Allow`` header listing the methods of every route on the path (Starlette lists
  the first matching route's only).
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.spec import SpecError, SweepSpec
from app.spec_errors import plain_errors
from gridsweep.text import clean_text

log = logging.getLogger("gridsweep.api")

UNSTORABLE = (
    "the request holds a value the database cannot store "
    "(a NUL byte or a lone surrogate in text, or a number out of range)"
)


def json_safe(obj: Any) -> Any:
    """``obj`` as JSON can carry it: non-finite floats as strings, text cleaned (keys too)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


@lru_cache(maxsize=256)
def _path_regex(template: str) -> re.Pattern[str]:
    return compile_path(template)[0]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods of every route whose template matches ``path`` (mounts left out)."""
    methods: set[str] = set()
    for route in fastapi.routing.iter_route_contexts(app.routes):
        template, route_methods = route.path, route.methods
        if isinstance(template, str) and route_methods and _path_regex(template).match(path):
            methods |= set(route_methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # In plain words (app.spec_errors). FastAPI's own handler echoes each bad `input` as is:
        # a NaN (Python's JSON parser takes them) or a lone surrogate cannot be rendered (a 500).
        spec = request.method == "POST" and request.url.path == "/api/v1/sweeps"
        errors = exc.errors()
        # A JSON body's errors are matched against the body (a scalar stands for a list of one);
        # a form's, a query's, a path's or a header's keep their own loc, whole.
        json_body = isinstance(exc.body, dict | list)
        in_body = [e for e in errors if json_body and tuple(e.get("loc", ()))[:1] == ("body",)]
        detail = plain_errors(in_body, body=exc.body, root=SweepSpec if spec else None, skip=1)
        for e in errors:
            if e not in in_body:
                detail += plain_errors([e], skip=len(e.get("loc", ())))
        return JSONResponse({"detail": json_safe(jsonable_encoder(detail))}, status_code=422)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in exc.errors]
        return JSONResponse({"detail": json_safe(detail)}, status_code=422)

    def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: unstorable input: %s", request.method, request.url.path, exc.__class__.__name__)
        detail = [{"loc": ["request"], "msg": UNSTORABLE, "type": "value_error"}]  # FastAPI's 422 shape
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return _unstorable(request, exc)

    @app.exception_handler(UnicodeEncodeError)
    async def _encoding_error(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        return _unstorable(request, exc)

    def _unavailable(exc: Exception) -> JSONResponse:
        # A database we cannot reach is a temporary condition, not a server bug: 503 + retry.
        app.state.db_outage = True
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return JSONResponse(
            {"detail": "database unavailable, retry later"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(DBAPIError)
    async def _db_down(_: Request, exc: DBAPIError) -> JSONResponse:
        if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)):
            raise exc
        return _unavailable(exc)

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        return _unavailable(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            methods = allowed_methods(app, request.url.path)
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        return await http_exception_handler(request, exc)
