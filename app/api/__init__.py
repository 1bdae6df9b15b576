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
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app import __version__
from app.config import Settings, get_settings
from app.db import Database
from app.metrics import Metrics
from app.migrate import head_revision
from app.services.trials import reap_expired
from app.spec import SpecError

log = logging.getLogger("gridsweep.api")


def _reap_once(db: Database) -> int:
    with db.session() as session:
        return reap_expired(session)


async def _reaper(app: FastAPI) -> None:
    """Requeue trials whose lease expired, forever (a task inside the API, not a queued job)."""
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        try:
            n = await run_in_threadpool(_reap_once, app.state.db)
            app.state.metrics.lease_reclaims.inc(n)
            if n:
                log.info("reaper requeued or failed %d trials with expired leases", n)
        except Exception:  # the database may be down; try again next round
            log.warning("reaper round failed", exc_info=True)


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
    app = FastAPI(title="gridsweep", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = Database(settings.database_url)
    app.state.metrics = Metrics(app.state.db, settings)
    app.state.head_revision = head_revision(settings.database_url)  # what /readyz expects

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad `input`; a NaN or Infinity there (Python's
        # JSON parser accepts them) cannot be rendered and turned the 422 into a 500.
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in exc.errors]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DBAPIError)
    async def _db_down(_: Request, exc: DBAPIError) -> JSONResponse:
        if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)):
            raise exc
        # A database we cannot reach is a temporary condition, not a server bug: 503 + retry.
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return JSONResponse(
            {"detail": "database unavailable, retry later"}, status_code=503, headers={"Retry-After": "1"}
        )

    from app.api import routes_datasets, routes_health, routes_models, routes_sweeps, routes_workers
    from app.api.middleware import RequestMiddleware

    app.add_middleware(RequestMiddleware, metrics=app.state.metrics)

    app.include_router(routes_health.router)
    app.include_router(routes_sweeps.router)
    app.include_router(routes_workers.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_models.router)

    from app.dashboard import mount_dashboard

    mount_dashboard(app)
    return app
