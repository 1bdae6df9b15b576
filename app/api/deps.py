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


# scope="function": commit BEFORE the response is sent, so a client that got 201 can read the row
# at once (and a failed commit is a 5xx, not a 201 for a row that was rolled back).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
