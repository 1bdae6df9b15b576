"""API tokens over HTTP (admin scope). ``gridsweep token ...`` does the same on the store directly."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.api.deps import ERROR_RESPONSES, IdPath, ReadSessionDep, SessionDep
from app.auth import require
from app.models import ApiToken, TokenScope
from app.schemas import ErrorRead, TokenCreate, TokenCreated, TokenRead
from app.services import tokens as token_service

router = APIRouter(
    prefix="/api/v1/tokens",
    tags=["tokens"],
    dependencies=[require(write=TokenScope.admin, read=TokenScope.admin)],
    responses={**ERROR_RESPONSES, 409: {"model": ErrorRead, "description": "a token with that name exists"}},
)


@router.get("", response_model=list[TokenRead])
def list_tokens(session: ReadSessionDep) -> list[TokenRead]:
    """Every token (never the token itself: only its hash is stored)."""
    return [TokenRead.model_validate(t) for t in token_service.list_tokens(session)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    """Create a token; the answer is the only place it ever appears in clear."""
    try:
        row, token = token_service.create_token(session, body.name, body.scope)
    except token_service.TokenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return TokenCreated(**TokenRead.model_validate(row).model_dump(), token=token)


@router.post("/{token_id}/revoke", response_model=TokenRead)
def revoke_token(token_id: IdPath, session: SessionDep) -> TokenRead:
    """Revoke a token (at once: the next request with it gets 401)."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"token {token_id} not found")
    return TokenRead.model_validate(token_service.revoke_token(session, row))
