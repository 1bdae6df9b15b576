"""Who may call what: bearer tokens, scopes, and the dependency that guards a router.

Two layers, so that a route nobody guarded is still closed:

* ``AuthMiddleware`` (app/api/middleware.py) authenticates every request but the public
  ones (``/healthz``, ``/readyz``) when auth is on: no valid, unrevoked token -> 401. It stores the
  caller's ``Principal`` in the request state.
* ``Authorize`` is the router dependency that checks the scope:
  ``APIRouter(dependencies=[require(write=TokenScope.submit)])`` lets ``read`` tokens
  GET and ``submit`` tokens change things. Any new router (the dashboard's too) takes
  one line to guard.

Scopes: ``read`` (GET), ``submit`` (read + create/cancel sweeps), ``worker`` (only the
worker protocol), ``admin`` (everything, tokens included). Worker tokens reach only the API
(``/api/``, where every route checks its scope): the docs, the OpenAPI schema, the dashboard
and its static files are for people (``reachable``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.params import Depends as DependsParam
from starlette.datastructures import Headers

from app.db import Database
from app.models import TokenScope
from app.services.tokens import Principal, needs_touch, touch_token, verify_token

# Routes that never need a token: liveness and readiness probes (compose, orchestrators) carry
# no secrets, and they tell nothing about sweeps.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
API_PREFIX = "/api/"
# A browser cannot send an Authorization header with a page load: GETs may carry the
# token in this cookie instead. Writes only with the dashboard's ``HX-Request`` header too,
# which a cross-site form cannot set (and a cross-site fetch could only with CORS, never
# granted), so the cookie cannot be used for cross-site request forgery.
TOKEN_COOKIE = "gridsweep_token"

GRANTS: dict[TokenScope, frozenset[TokenScope]] = {
    TokenScope.read: frozenset({TokenScope.read}),
    TokenScope.submit: frozenset({TokenScope.read, TokenScope.submit}),
    TokenScope.worker: frozenset({TokenScope.worker}),
    TokenScope.admin: frozenset(TokenScope),
}


def allows(held: TokenScope, needed: TokenScope) -> bool:
    return needed in GRANTS[held]


def reachable(scope: TokenScope, path: str) -> bool:
    """Whether a token of ``scope`` may reach ``path`` at all (its route then checks the scope)."""
    return scope != TokenScope.worker or path.startswith(API_PREFIX)


def bearer_token(headers: Headers, method: str) -> str | None:
    """The token a request carries (``Authorization: Bearer``, or the cookie on safe methods)."""
    auth = headers.get("authorization")
    if auth:
        kind, _, value = auth.partition(" ")
        return value.strip() if kind.lower() == "bearer" and value.strip() else None
    if method in SAFE_METHODS or headers.get("hx-request") == "true":
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == TOKEN_COOKIE and v:
                return v
    return None


def authenticate(db: Database, token: str) -> Principal | None:
    """Check ``token`` against the store (blocking: run it in a thread)."""
    with db.session(readonly=True) as session:
        principal = verify_token(session, token)
        stale = principal is not None and needs_touch(session, principal.token_id)
    if principal is not None and stale:
        with db.session() as session:
            touch_token(session, principal.token_id)
    return principal


def unauthorized(detail: str = "missing, invalid or revoked API token") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def current_principal(request: Request) -> Principal | None:
    """The authenticated caller, or None when auth is off."""
    if not request.app.state.settings.auth_enabled:
        return None
    principal = getattr(request.state, "principal", None)
    if principal is None:  # no middleware ran: fail closed
        raise unauthorized()
    return principal


PrincipalDep = Annotated[Principal | None, Depends(current_principal)]


Needed = TokenScope | tuple[TokenScope, ...]


class Authorize:
    """Dependency: safe methods need ``read`` scope, the others ``write`` (when auth is on).

    Either may be a tuple of scopes, any of which will do (a dataset download serves both
    readers and workers).
    """

    def __init__(self, write: Needed, read: Needed = TokenScope.read) -> None:
        self.write = write if isinstance(write, tuple) else (write,)
        self.read = read if isinstance(read, tuple) else (read,)

    def __call__(self, request: Request) -> Principal | None:
        principal = current_principal(request)
        if principal is None:
            return None
        needed = self.read if request.method in SAFE_METHODS else self.write
        if not any(allows(principal.scope, n) for n in needed):
            names = " or ".join(repr(n.value) for n in needed)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"token {principal.name!r} has scope {principal.scope.value!r}; this route needs {names}",
            )
        return principal


def require(write: Needed, read: Needed = TokenScope.read) -> DependsParam:
    """``APIRouter(dependencies=[require(write=TokenScope.submit)])`` (or on one route)."""
    return Depends(Authorize(write, read))
