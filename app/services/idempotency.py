"""``Idempotency-Key`` for sweep submission: one sweep per key, whatever the retries or races.

The key's row is inserted first, in the transaction that creates the sweep, with
``INSERT ... ON CONFLICT DO NOTHING``: on PostgreSQL a concurrent request with the same
key waits on the unique index until the first one commits (then finds its answer) or
rolls back (then goes on itself); on SQLite ``BEGIN IMMEDIATE`` already serializes them.
A request that fails (a bad spec) rolls its key back with it, so errors are not cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import db_now, insert_ignore
from app.models import IdempotencyKey


class IdempotencyConflict(ValueError):
    """The key was used before with another request body."""


@dataclass(frozen=True)
class Replay:
    """The first answer given for this key."""

    status_code: int
    response: dict[str, Any]


def request_hash(body: Any) -> str:
    """A digest of the request as parsed (key order and whitespace do not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def begin(session: Session, owner: str, key: str, digest: str) -> IdempotencyKey | Replay:
    """Take the key for this request (its row, to ``finish``), or the first answer to replay."""
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    inserted = session.execute(
        insert_ignore(session, IdempotencyKey.__table__)
        .values(owner=owner, key=key, request_hash=digest, created_at=db_now(session))
        .returning(IdempotencyKey.id)
    ).scalar_one_or_none()
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
    ).one()
    if inserted is not None:
        return row
    if row.request_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body; use a new key for a new sweep"
        )
    assert row.response is not None and row.status_code is not None  # set in the same transaction
    return Replay(row.status_code, row.response)


def finish(session: Session, row: IdempotencyKey, sweep_id: int, status_code: int, response: Any) -> None:
    """Record the answer that repeats of this key will get."""
    row.sweep_id = sweep_id
    row.status_code = status_code
    row.response = response
    session.flush()
