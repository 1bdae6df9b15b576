"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ERROR_RESPONSES
from app.auth import require
from app.models import TokenScope
from app.services import ops

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no database call)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database unreachable or migrations not at head"}})
def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database answers and its schema is at the migrations' head."""
    r = ops.readiness(request.app.state.db.engine, request.app.state.head_revision)
    body = {"status": "ready" if r.ready else "unavailable", "reason": r.reason, "revision": r.revision}
    return JSONResponse(body, status_code=200 if r.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    # Scrapers send a read token when auth is on (only /healthz and /readyz are public).
    dependencies=[require(write=TokenScope.admin)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **ERROR_RESPONSES},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text format): HTTP traffic, trials, queue, workers, leases."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
