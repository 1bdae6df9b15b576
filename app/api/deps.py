"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.edge_types import Text
from app.schemas import ErrorRead


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A read-write transaction around the request (committed when the route returns)."""
    with get_db(request).session() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A read-only transaction (SQLite: a deferred BEGIN that takes no write lock)."""
    with get_db(request).session(readonly=True) as session:
        yield session


# Ids are 32-bit INTEGER columns (PostgreSQL int4): a larger one is no row, not a driver error.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
# A worker id (a UUID); text a database cannot store is a 422 naming the path parameter.
WorkerIdPath = Annotated[Text, Path(max_length=200)]

# scope="function": the transaction commits before the response is sent. FastAPI's default
# ("request") commits after it, so a client could read before its own write had landed, and a
# failed commit (a claim, a result) would already have been answered 200.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# The store itself, for a route that opens short transactions of its own (a long-poll claim).
DatabaseDep = Annotated[Database, Depends(get_db)]


# Answers any guarded route may give besides its own (documented in the OpenAPI schema).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorRead, "description": "a body that cannot be parsed"},
    401: {"model": ErrorRead, "description": "missing, invalid or revoked API token (auth on)"},
    403: {"model": ErrorRead, "description": "the token's scope does not allow this route"},
    404: {"model": ErrorRead, "description": "no such sweep, trial, worker or token"},
    408: {"model": ErrorRead, "description": "the body stopped arriving (GRIDSWEEP_BODY_TIMEOUT_SECONDS)"},
    413: {"model": ErrorRead, "description": "request body over the configured limit"},
    503: {"model": ErrorRead, "description": "database unavailable: retry later"},
}
