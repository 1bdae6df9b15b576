"""Auth, scopes, limits and headers, through a real server with auth on, on SQLite and PostgreSQL.

The authorization matrix enumerates ``app.routes``, so a route added later is covered
without touching this file: it must be guarded (or be public on purpose).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from click.testing import CliRunner, Result
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, inspect, select, text
from starlette.routing import Mount

from app.api import create_app
from app.auth import PUBLIC_PATHS, SAFE_METHODS, Authorize, authenticate
from app.cli.main import main
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.models import ApiToken
from tests.conftest import Server
from tests.robust_helpers import bearer, log_text, make_tokens, spec

SCOPES = ("read", "submit", "worker", "admin")
# The issue's rules, written out independently of app/auth.py.
GRANTED = {
    "read": {"read"},
    "submit": {"read", "submit"},
    "worker": {"worker"},
    "admin": {"read", "submit", "worker", "admin"},
}


# Who may read the docs, the OpenAPI schema, the dashboard and its static files: any scope
# but worker (worker tokens get only the worker protocol).
PEOPLE = {"read", "submit", "admin"}


def issue_rule(method: str, path: str) -> str | None:
    """The scope the issue asks for: read=GET, submit=create/cancel, worker=protocol, admin=tokens."""
    if path in PUBLIC_PATHS:
        return None
    if path.startswith("/api/v1/tokens"):
        return "admin"
    if path.startswith("/api/v1/workers") and method != "GET":
        return "worker"
    if path.startswith("/api/v1/datasets/") and path.endswith("/data"):
        return "read"  # and worker: workers download the data they train on
    return "read" if method == "GET" else "submit"


def route_guard(route: Any) -> Authorize | None:
    """The ``Authorize`` dependency guarding a route (router dependencies included), if any."""
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Authorize):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def enumerate_endpoints(db_url: str) -> list[tuple[str, str, Any, bool]]:
    """(method, path template, route, is an API route) for every route and mount (HEAD left out)."""
    app = create_app(Settings(database_url=db_url, auth="on"))
    # FastAPI >= 0.16x keeps included routers lazily: iter_route_contexts flattens them, with
    # the router's dependencies applied. Older versions list the routes themselves.
    contexts = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)(app.routes)
    out = []
    for route in contexts:
        original = getattr(route, "original_route", route)
        if isinstance(original, Mount):
            out.append(("GET", original.path + "/probe", route, False))
            continue
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                out.append((method, route.path, route, isinstance(original, APIRoute)))
    app.state.db.dispose()
    return out


def fill(path: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: str(ids.get(m.group(1), 1)), path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str], str]]:
    """One auth-on server for the module (the rules are the same on both backends; the
    token storage is checked on both below)."""
    tmp = tmp_path_factory.mktemp("secured")
    db_url = f"sqlite:///{tmp / 'gridsweep.db'}"
    upgrade(db_url)
    tokens = make_tokens(
        db_url, t_read="read", t_submit="submit", t_worker="worker", t_admin="admin", t_revoked="read"
    )
    server = Server(db_url, tmp / "server.log", auth="on")
    admin = httpx.Client(base_url=server.url, headers=bearer(tokens["t_admin"]), timeout=30)
    revoked_id = next(t["id"] for t in admin.get("/api/v1/tokens").json() if t["name"] == "t_revoked")
    assert admin.post(f"/api/v1/tokens/{revoked_id}/revoke").status_code == 200
    admin.close()
    yield server, tokens, db_url
    server.stop()


def test_authz_matrix_every_route(secured: tuple[Server, dict[str, str], str]) -> None:
    server, tokens, db_url = secured
    admin = httpx.Client(base_url=server.url, headers=bearer(tokens["t_admin"]), timeout=30)
    worker = httpx.Client(base_url=server.url, headers=bearer(tokens["t_worker"]), timeout=30)
    created = admin.post("/api/v1/sweeps", json=spec("authz", 2))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    trial_id = admin.get(f"/api/v1/sweeps/{sid}/trials").json()["items"][0]["id"]
    wid = worker.post("/api/v1/workers", json={"name": "authz"}).json()["id"]
    spare = admin.post("/api/v1/tokens", json={"name": "spare", "scope": "read"}).json()
    ids = {"sweep_id": sid, "trial_id": trial_id, "worker_id": wid, "token_id": spare["id"]}

    callers: dict[str, dict[str, str]] = {
        "none": {},
        "bad": bearer("gsw_" + "x" * 43),
        "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
        "revoked": bearer(tokens["t_revoked"]),
        **{scope: bearer(tokens[f"t_{scope}"]) for scope in SCOPES},
    }
    seen: Counter[str] = Counter()
    problems = []
    http = httpx.Client(base_url=server.url, timeout=30)
    endpoints = enumerate_endpoints(db_url)
    for method, template, route, is_api in endpoints:
        path = fill(template, ids)
        if is_api and template not in PUBLIC_PATHS:
            guard = route_guard(route)
            assert guard is not None, f"{method} {template} has no Authorize dependency (app.auth.require)"
            needed = {n.value for n in (guard.read if method in SAFE_METHODS else guard.write)}
            assert issue_rule(method, template) in needed, f"{method} {template} needs {needed}"
        elif template in PUBLIC_PATHS:
            needed = None
        else:  # docs, schema, mounts: for people with a valid token, never for worker tokens
            needed = PEOPLE
        for who, headers in callers.items():
            # A body that fails validation: a permitted write is refused (422), never carried out.
            kw = {"json": {"__probe__": True}} if method in ("POST", "PUT", "PATCH") else {}
            # HX-Request: the dashboard's own CSRF check passes, so only auth can refuse.
            r = http.request(method, path, headers={**headers, "HX-Request": "true"}, **kw)
            ok = 200 <= r.status_code < 300
            if needed is None:
                allowed = True
            elif who in ("none", "bad", "malformed", "revoked"):
                allowed = False
            else:
                allowed = bool(needed & GRANTED[who])
            seen["2xx" if ok else str(r.status_code)] += 1
            if not allowed and r.status_code not in (401, 403):
                problems.append(f"{who}: {method} {path} -> {r.status_code} (expected 401/403)")
            if allowed and r.status_code in (401, 403):
                problems.append(f"{who}: {method} {path} -> {r.status_code} (expected access)")
            if r.status_code >= 500:
                problems.append(f"{who}: {method} {path} -> {r.status_code}")
    print(f"\nauthz matrix: {len(endpoints)} endpoints x {len(callers)} callers; statuses {dict(seen)}")
    assert not problems, "\n".join(problems)
    # The schema, the docs and static files by name: readers get them, worker tokens do not.
    for path in ("/openapi.json", "/docs", "/static/dashboard.css", "/docs/static/swagger-ui.css", "/"):
        for who in ("read", "admin"):
            r = http.get(path, headers=callers[who])
            assert r.status_code == 200, f"{who}: GET {path} -> {r.status_code}"
        r = http.get(path, headers=callers["worker"])
        assert r.status_code == 403 and "worker protocol only" in r.text, (
            f"worker: GET {path} -> {r.status_code}"
        )
    # Revocation is immediate (no cache between the token table and the check).
    assert httpx.get(server.url + "/api/v1/sweeps", headers=callers["revoked"]).status_code == 401
    admin.close()
    worker.close()
    http.close()


def test_tokens_never_stored_or_logged_in_clear(secured: tuple[Server, dict[str, str], str]) -> None:
    server, tokens, db_url = secured
    tokens = dict(tokens)
    # Use every token a few times (the access log is on), then look for them everywhere.
    for token in tokens.values():
        for path in ("/api/v1/sweeps", "/api/v1/tokens", "/nope"):
            httpx.get(server.url + path, headers=bearer(token), timeout=30)
    made = httpx.post(
        server.url + "/api/v1/tokens",
        json={"name": "via-api", "scope": "submit"},
        headers=bearer(tokens["t_admin"]),
        timeout=30,
    )
    assert made.status_code == 201 and made.json()["token"].startswith("gsw_")
    assert made.headers["cache-control"] == "no-store"
    tokens["via-api"] = made.json()["token"]
    listed = httpx.get(server.url + "/api/v1/tokens", headers=bearer(tokens["t_admin"]), timeout=30).text
    assert not any(t in listed for t in tokens.values())

    engine = create_engine(db_url)
    dump = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
        hashes = dict(conn.execute(select(ApiToken.name, ApiToken.token_hash)).all())
    engine.dispose()
    blob = "\n".join(dump)
    server_log = log_text(Path(server.log.name))
    assert "GET /api/v1/sweeps" in server_log  # the access log is on: the check below means something
    for name, token in tokens.items():
        assert token not in blob, f"token {name} stored in clear"
        assert token not in server_log, f"token {name} logged"
        assert hashes[name] == hashlib.sha256(token.encode()).hexdigest()
    print(
        f"\n{len(tokens)} tokens: 0 in {len(dump)} database rows, 0 in {len(server_log)} bytes of server log"
    )


def test_token_cli_create_list_revoke(db_url: str) -> None:
    runner = CliRunner()

    def cli(*args: str) -> Result:
        return runner.invoke(main, ["token", *args, "--db", db_url], env={"GRIDSWEEP_AUTH": "on"})

    made = cli("create", "--name", "ci", "--scope", "submit")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert re.fullmatch(r"gsw_[A-Za-z0-9_-]{43}", token), made.stdout
    assert "shown only now" in made.stderr
    dup = cli("create", "--name", "ci", "--scope", "read")
    assert dup.exit_code == 2 and "exists already" in dup.stderr
    bad = cli("create", "--name", "x", "--scope", "root")
    assert bad.exit_code == 2 and "root" in bad.stderr
    listed = cli("list")
    assert listed.exit_code == 0 and "ci" in listed.stdout and "submit" in listed.stdout
    assert token not in listed.output

    db = Database(db_url)
    try:
        principal = authenticate(db, token)
        assert principal is not None and principal.scope == "submit"
        with db.session(readonly=True) as session:
            stored = session.scalars(select(ApiToken)).one()
            assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
            assert stored.last_used_at is not None  # authenticate() recorded the use
        assert cli("revoke", "ci").exit_code == 0
        assert authenticate(db, token) is None
        assert authenticate(db, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert cli("revoke", "nobody").exit_code == 2
    finally:
        db.dispose()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = [
            repr(tuple(r))
            for t in inspect(engine).get_table_names()
            for r in conn.execute(text(f'SELECT * FROM "{t}"'))
        ]
    engine.dispose()
    assert token not in "\n".join(rows)


def test_serve_refuses_public_address_without_auth(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    r = CliRunner().invoke(
        main, ["serve", "--db", db, "--host", "0.0.0.0", "--no-upgrade"], env={"GRIDSWEEP_AUTH": "off"}
    )
    assert r.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without auth" in r.stderr and "--insecure" in r.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching anything


def test_limits_headers_and_no_cors(secured: tuple[Server, dict[str, str], str]) -> None:
    server, tokens, _ = secured
    c = httpx.Client(base_url=server.url, headers=bearer(tokens["t_submit"]), timeout=30)
    limit = Settings().max_body_bytes

    big = c.post("/api/v1/sweeps", content=b" " * (limit + 1), headers={"content-type": "application/json"})
    assert big.status_code == 413 and str(limit) in big.json()["detail"]

    def chunks():  # no Content-Length: a chunked upload must hit the same limit
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    chunked = c.post("/api/v1/sweeps", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413

    # Uploads have their own, larger limit (GRIDSWEEP_MAX_UPLOAD_BYTES): 1.5 MiB of CSV gets in.
    csv = b"x,y\n" + b"0.5,1\n0.25,0\n" * (3 * limit // 24)
    assert len(csv) > limit
    upload = c.post("/api/v1/datasets", files={"file": ("big.csv", csv)}, data={"target": "y"})
    assert upload.status_code in (200, 201), upload.text[:300]

    grid = c.post("/api/v1/sweeps", json=spec("huge", 200, hidden_units=list(range(1, 61))))
    assert grid.status_code == 422
    msg = grid.json()["detail"][0]["msg"]
    assert "12000 trials" in msg and "10000" in msg, msg
    epochs = c.post("/api/v1/sweeps", json=spec("long", 1, epochs=10**6))
    assert epochs.status_code == 422 and "1000000 epochs is over the limit of 10000" in epochs.text

    page = c.get("/api/v1/sweeps", params={"limit": 10_000})
    assert page.status_code == 200 and page.json()["limit"] == Settings().max_page_size
    assert c.get("/api/v1/sweeps", params={"limit": 10**9}).status_code == 422

    # Every answer (401, 404, 413, 422 included) carries the headers; none carries CORS.
    answers = [
        big,
        chunked,
        grid,
        page,
        httpx.get(server.url + "/healthz"),
        httpx.get(server.url + "/api/v1/x"),
    ]
    answers.append(
        httpx.options(
            server.url + "/api/v1/sweeps",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    )
    answers.append(c.get("/api/v1/sweeps", headers={"Origin": "https://evil.example"}))
    for r in answers:
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, (r.request.url, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers
    print(f"\nlimits: body {limit} B -> 413 (declared and chunked); {len(answers)} answers with CSP, no CORS")
    c.close()
