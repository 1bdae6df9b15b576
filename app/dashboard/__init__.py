"""The web dashboard, served by the API process at ``/`` (templates and static files ship in the package)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages, the JSON behind its plots, and its static files to ``app``."""
    from app.api import routes_plots
    from app.dashboard import routes

    app.include_router(routes_plots.router)
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
