"""API tokens: create (shown once), verify (by SHA-256, in constant time), revoke, list.

A token is ``gsw_`` + 43 url-safe characters (32 random bytes). The database keeps only
its SHA-256, so a leaked database or backup holds no usable token. Lookup is by hash
(an indexed equality on a value an attacker cannot choose), and the stored and computed
digests are then compared with ``hmac.compare_digest`` so no timing difference is left.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import db_now
from app.models import ApiToken, TokenScope

TOKEN_PREFIX = "gsw_"
# last_used_at is a hint for operators, not an audit log: write it at most this often,
# so that authenticated reads do not each take SQLite's write lock.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class TokenError(ValueError):
    """A token request that cannot be done (duplicate name, unknown token...)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scope."""

    token_id: int
    name: str
    scope: TokenScope


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, scope: str) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the token (the only time it exists in clear)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise TokenError("a token name is 1 to 200 characters")
    try:
        scope = TokenScope(scope)
    except ValueError:
        raise TokenError(f"unknown scope {scope!r}; use one of {[s.value for s in TokenScope]}") from None
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists already (names are unique, revoked ones too)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, scope=scope, token_hash=hash_token(token), created_at=db_now(session))
    session.add(row)
    session.flush()
    return row, token


def verify_token(session: Session, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token; None otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_hash.encode(), digest.encode()):
        return None
    return Principal(row.id, row.name, TokenScope(row.scope))


def needs_touch(session: Session, token_id: int) -> bool:
    row = session.get(ApiToken, token_id)
    now = db_now(session)
    return row is not None and (row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION)


def touch_token(session: Session, token_id: int) -> None:
    """Record that the token was used (rate-limited by LAST_USED_RESOLUTION)."""
    row = session.get(ApiToken, token_id)
    if row is not None:
        row.last_used_at = db_now(session)


def find_token(session: Session, name_or_id: str) -> ApiToken | None:
    """A token by its name, or by its numeric id when no token has that name."""
    row = session.scalars(select(ApiToken).where(ApiToken.name == name_or_id)).first()
    if row is None and name_or_id.isdigit():
        row = session.get(ApiToken, int(name_or_id))
    return row


def revoke_token(session: Session, row: ApiToken) -> ApiToken:
    """Revoke a token at once (the next request with it gets 401); revoking twice is harmless."""
    if row.revoked_at is None:
        row.revoked_at = db_now(session)
    session.flush()
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)).all())
