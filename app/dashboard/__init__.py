"""The web dashboard, served by the API process at ``/``: pages (``routes``), their view
models (``views``), formatting, and the templates and static files that ship in the package.
``app.api.create_app`` registers its router and mounts ``STATIC_DIR`` at ``/static``."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
