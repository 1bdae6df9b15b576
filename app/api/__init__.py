"""The FastAPI application: routers, error handlers and the lease reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.api import (
    routes_datasets,
    routes_docs,
    routes_health,
    routes_models,
    routes_plots,
    routes_sweeps,
    routes_tokens,
    routes_workers,
)
from app.api.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    RequestMiddleware,
    SecurityHeadersMiddleware,
)
from app.config import Settings, get_settings
from app.dashboard import STATIC_DIR
from app.dashboard import routes as dashboard_routes
from app.db import Database
from app.metrics import Metrics
from app.migrate import head_revision
from app.services.trials import extend_running_leases, reap_expired
from app.spec import SpecError, SweepSpec
from app.spec_errors import plain_errors
from gridsweep import __version__

log = logging.getLogger("gridsweep.api")

# Multipart uploads (datasets, models) may be up to GRIDSWEEP_MAX_UPLOAD_BYTES; other bodies are JSON.
UPLOAD_PATHS = r"^/api/v1/datasets$|^/api/v1/workers/[^/]+/trials/[^/]+/model$"


def _reap_once(db: Database, blind: bool, lease_seconds: float) -> tuple[str, int]:
    with db.session() as session:
        if blind:
            return "extended", extend_running_leases(session, lease_seconds)
        return "requeued or failed", reap_expired(session)


async def _reaper(app: FastAPI) -> None:
    """Requeue trials whose lease expired, forever (a task inside the API, not a queued job).

    After a time when heartbeats could not land (the API just started, or the database
    was unreachable) the first round renews the running leases instead of reaping them:
    their workers are most likely alive and about to beat again.
    """
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        blind = app.state.db_outage
        app.state.db_outage = False
        try:
            what, n = await run_in_threadpool(_reap_once, app.state.db, blind, settings.lease_seconds)
            if what != "extended":
                app.state.metrics.lease_reclaims.inc(n)
            if n:
                log.info("reaper %s %d leases", what, n)
        except Exception as exc:  # the database may be down; try again next round
            app.state.db_outage = True
            log.warning("reaper round failed: %s", exc.__class__.__name__)


def _json_safe(obj: Any) -> Any:
    """Non-finite floats as strings: JSON has no NaN or Infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_reaper(app))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        app.state.db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    # /docs is served from the package (routes_docs): FastAPI's own pages load from a CDN.
    app = FastAPI(title="gridsweep", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = Database(settings.database_url)
    app.state.db_outage = True  # no heartbeat could land before the API started
    app.state.metrics = Metrics(app.state.db, settings)
    app.state.head_revision = head_revision(settings.database_url)  # what /readyz expects
    # Added innermost first: security headers wrap everything, auth runs last.
    app.add_middleware(AuthMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
    )
    app.add_middleware(SecurityHeadersMiddleware)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # In plain words (app.spec_errors), with no echo of the bad `input`: a NaN or Infinity
        # there (Python's JSON parser accepts them) could not be rendered and made a 500.
        spec = request.method == "POST" and request.url.path == "/api/v1/sweeps"
        detail = plain_errors(exc.errors(), body=exc.body, root=SweepSpec if spec else None, skip=1)
        return JSONResponse({"detail": _json_safe(jsonable_encoder(detail))}, status_code=422)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in exc.errors]
        return JSONResponse({"detail": detail}, status_code=422)

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

    # Outermost: request ids, one log line and the HTTP metrics for every answer (401/413 too).
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics)

    app.include_router(routes_health.router)
    app.include_router(routes_sweeps.router)
    app.include_router(routes_workers.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_models.router)
    app.include_router(routes_tokens.router)
    app.include_router(routes_plots.router)  # the JSON behind the dashboard's plots
    app.include_router(dashboard_routes.router)  # the dashboard's pages
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    routes_docs.install_docs(app)
    return app
