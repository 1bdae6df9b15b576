"""Every answer a route gives is in the OpenAPI document, and a 405 names every allowed method."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import fastapi.routing
import httpx
from fastapi.routing import APIRoute

from app.api import create_app
from app.config import Settings
from tests.conftest import Server

_RAISED = re.compile(r"HTTPException\(\s*(?:status\.HTTP_(\d{3})_\w+|(\d{3}))")


def test_every_status_a_route_raises_is_documented(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))
    doc = app.openapi()
    missing, checked = [], 0
    for route in fastapi.routing.iter_route_contexts(app.routes):
        original = route.original_route
        if not isinstance(original, APIRoute) or not original.include_in_schema:
            continue
        raised = {a or b for a, b in _RAISED.findall(inspect.getsource(original.endpoint))}
        for method in route.methods:
            documented = set(doc["paths"][route.path][method.lower()]["responses"])
            checked += 1
            missing += [f"{method} {route.path}: {code}" for code in sorted(raised - documented)]
    app.state.db.dispose()
    assert checked > 30
    assert not missing, missing


def test_options_on_a_route_of_several_methods_lists_them_all(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url)
    created = server.http.post("/api/v1/sweeps", json={"name": "o", "dataset": "moons"}).json()
    cases = {
        "/api/v1/sweeps": {"GET", "POST"},
        "/api/v1/datasets/x": {"GET", "DELETE"},
        "/api/v1/tokens": {"GET", "POST"},
        "/api/v1/workers": {"GET", "POST"},
        f"/api/v1/sweeps/{created['id']}": {"GET", "DELETE"},
    }
    for path, methods in cases.items():
        for probe in ("OPTIONS", "PUT", "PATCH"):
            r = server.http.request(probe, path)
            assert r.status_code == 405, (probe, path, r.status_code)
            assert set(r.headers["allow"].split(", ")) == methods, (probe, path, r.headers["allow"])
        for method in methods:  # and each method it names is really allowed
            assert server.http.request(method, path).status_code != 405, (method, path)


def test_rerun_of_a_running_trial_is_a_documented_409(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url)
    sid = server.http.post("/api/v1/sweeps", json={"name": "r", "dataset": "moons"}).json()["id"]
    (trial,) = server.http.get(f"/api/v1/sweeps/{sid}/trials").json()["items"]
    r = server.http.post(f"/api/v1/trials/{trial['id']}/rerun")
    assert r.status_code == 409 and "rerun it once it has ended" in r.json()["detail"]
    doc = httpx.get(server.url + "/openapi.json").json()
    assert "409" in doc["paths"]["/api/v1/trials/{trial_id}/rerun"]["post"]["responses"]
