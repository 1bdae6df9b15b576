"""Dashboard pages and the HTML fragments htmx swaps in (server-rendered, same origin)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.api.deps import IdPath, ReadSessionDep, SessionDep, SettingsDep
from app.auth import require
from app.dashboard import views
from app.dashboard.format import FILTERS
from app.models import TokenScope
from app.services.sweeps import cancel_sweep
from gridsweep import __version__
from gridsweep.vocab import TIE_BREAKS, metric_units

# Pages read (read scope); the cancel button writes (submit). Browsers send the token as a cookie.
router = APIRouter(include_in_schema=False, dependencies=[require(write=TokenScope.submit)])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters.update(FILTERS)
templates.env.trim_blocks = templates.env.lstrip_blocks = True
templates.env.globals.update(
    version=__version__, poll="every 2s", metric_units=metric_units, tie_breaks=TIE_BREAKS
)

# Every script and style is a file served by gridsweep, nothing inline and nothing from elsewhere,
# so the pages work under ``Content-Security-Policy: default-src 'self'`` (the tests enforce it).


def _render(request: Request, template: str, build: Callable[[], dict[str, Any]]) -> HTMLResponse:
    try:
        context, status_code = build(), 200
    except views.PageError as exc:
        template, context, status_code = "error.html", {"message": exc.message}, exc.status_code
    return templates.TemplateResponse(request, template, context, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
def sweeps_page(request: Request, session: ReadSessionDep) -> HTMLResponse:
    """Every sweep, newest first."""
    return _render(
        request, "sweeps.html", lambda: views.sweeps_context(session, request.query_params.get("page"))
    )


@router.get("/fragments/sweeps", response_class=HTMLResponse)
def sweeps_fragment(request: Request, session: ReadSessionDep) -> HTMLResponse:
    """The sweeps table (polled while a sweep is live)."""
    return _render(
        request, "_sweeps.html", lambda: views.sweeps_context(session, request.query_params.get("page"))
    )


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: IdPath, request: Request, session: ReadSessionDep) -> HTMLResponse:
    """One sweep: summary, best config, plots, trials table and spec."""
    return _render(
        request, "sweep.html", lambda: views.sweep_context(session, sweep_id, request.query_params)
    )


@router.get("/fragments/sweeps/{sweep_id}/summary", response_class=HTMLResponse)
def sweep_summary(sweep_id: IdPath, request: Request, session: ReadSessionDep) -> HTMLResponse:
    """Status, progress, counts and best config of a sweep (polled while it is live)."""
    return _render(request, "_summary.html", lambda: views.summary_for(session, sweep_id))


@router.get("/fragments/sweeps/{sweep_id}/trials", response_class=HTMLResponse)
def sweep_trials(sweep_id: IdPath, request: Request, session: ReadSessionDep) -> HTMLResponse:
    """One page of the trials table, filtered and sorted server-side."""
    return _render(request, "_trials.html", lambda: views.table_for(session, sweep_id, request.query_params))


@router.post("/sweeps/{sweep_id}/cancel", response_class=HTMLResponse)
def cancel(sweep_id: IdPath, request: Request, session: SessionDep) -> HTMLResponse:
    """Cancel a sweep from its page; answers with the new summary."""

    def build() -> dict[str, Any]:
        # A cross-site form cannot set this header (and a cross-site fetch that sets it needs CORS).
        if request.headers.get("HX-Request") != "true":
            raise views.PageError(
                403, "Cancel a sweep from its page or with POST /api/v1/sweeps/{id}/cancel."
            )
        sweep = cancel_sweep(session, views.sweep_or_error(session, sweep_id))
        return views.summary_context(session, sweep)

    return _render(request, "_summary.html", build)


@router.get("/trials/{trial_id}", response_class=HTMLResponse)
def trial_page(trial_id: IdPath, request: Request, session: ReadSessionDep) -> HTMLResponse:
    """One trial: params, metrics, per-epoch curve, error, worker."""
    return _render(request, "trial.html", lambda: views.trial_context(session, trial_id))


@router.get("/fragments/trials/{trial_id}", response_class=HTMLResponse)
def trial_fragment(trial_id: IdPath, request: Request, session: ReadSessionDep) -> HTMLResponse:
    """The trial's status and metrics (polled while it runs)."""
    return _render(request, "_trial.html", lambda: views.trial_context(session, trial_id))


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: ReadSessionDep) -> HTMLResponse:
    """Uploaded datasets, newest first: task, target, rows, features, classes, the sweeps on each."""
    return _render(
        request, "datasets.html", lambda: views.datasets_context(session, request.query_params.get("page"))
    )


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: ReadSessionDep, settings: SettingsDep) -> HTMLResponse:
    """Registered workers, their device, last heartbeat and the trials they hold."""
    return _render(request, "workers.html", lambda: views.workers_context(session, settings))


@router.get("/fragments/workers", response_class=HTMLResponse)
def workers_fragment(request: Request, session: ReadSessionDep, settings: SettingsDep) -> HTMLResponse:
    """The workers table (polled)."""
    return _render(request, "_workers.html", lambda: views.workers_context(session, settings))
