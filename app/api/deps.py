"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database


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


# scope="function": the transaction commits when the route returns, BEFORE the response is
# sent, so a commit that fails (database gone) is a 503, never a 2xx for a lost write.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
