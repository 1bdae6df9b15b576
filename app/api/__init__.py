"""The FastAPI application: middleware, routers, error handlers (``app.api.errors``), the lease reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles

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
from app.api.errors import install_error_handlers
from app.api.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    RequestMiddleware,
    SecurityHeadersMiddleware,
)
from app.api.slow_clients import BodyTimeoutMiddleware
from app.config import Settings, get_settings
from app.dashboard import STATIC_DIR
from app.dashboard import routes as dashboard_routes
from app.db import Database
from app.metrics import Metrics
from app.migrate import head_revision
from app.services.trials import extend_running_leases, reap_expired
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
    # Added innermost first: security headers wrap everything, auth runs last; a body that stops
    # arriving is a 408 (app.api.slow_clients), one over the limit a 413.
    app.add_middleware(AuthMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
    )
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.body_timeout_seconds)
    app.add_middleware(SecurityHeadersMiddleware)

    install_error_handlers(app)

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
