"""``/docs``: Swagger UI served by gridsweep itself (no CDN, no inline script), so that it
works under the same-origin Content-Security-Policy. The assets come from the
``swagger-ui-bundle-v2`` package (Swagger UI 5); the schema is ``/openapi.json``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.auth import require
from app.models import TokenScope

router = APIRouter(tags=["docs"], include_in_schema=False, dependencies=[require(write=TokenScope.admin)])

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gridsweep API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# A file of its own rather than an inline <script>: the CSP allows scripts from 'self' only.
INIT_JS = 'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'


@router.get("/docs", response_class=HTMLResponse)
def docs() -> HTMLResponse:
    """The interactive API documentation."""
    return HTMLResponse(PAGE)


@router.get("/docs/init.js")
def docs_init() -> Response:
    """Starts Swagger UI on the page."""
    return Response(INIT_JS, media_type="text/javascript")


def install_docs(app: FastAPI) -> None:
    """Add ``/docs`` and its assets (closed to anonymous callers by the auth middleware when on)."""
    app.include_router(router)
    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="docs-static")
