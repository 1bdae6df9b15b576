"""``gridsweep token create|list|revoke``: API tokens, straight on the store.

The store is the bootstrap path (the first admin token cannot come from the API);
``/api/v1/tokens`` does the same over HTTP with an admin token.
"""

from __future__ import annotations

import click

from app.cli.options import db_option, open_store
from app.config import get_settings
from app.db import Database
from app.models import TokenScope
from app.services import tokens as token_service


def _database(db: str | None) -> Database:
    url = db or get_settings().database_url
    open_store(url)  # a fresh store gets its schema, an old one the token table
    return Database(url)


@click.group()
def token() -> None:
    """API tokens (used when GRIDSWEEP_AUTH=on)."""


@token.command("create")
@click.option("--name", required=True, help="A unique name (who or what uses the token).")
@click.option(
    "--scope",
    required=True,
    type=click.Choice([s.value for s in TokenScope]),
    help="read: GET; submit: read + create/cancel sweeps; worker: the worker protocol only; admin: all.",
)
@db_option
def create(name: str, scope: str, db: str | None) -> None:
    """Create a token and print it (once: only its SHA-256 is stored)."""
    database = _database(db)
    try:
        with database.session() as session:
            row, secret = token_service.create_token(session, name, scope)
            ident = row.id
    except token_service.TokenError as exc:
        raise click.UsageError(str(exc)) from exc
    finally:
        database.dispose()
    click.echo(secret)
    click.echo(
        f"token {ident} {name!r} (scope {scope}) created; it is shown only now. "
        "Pass it as GRIDSWEEP_TOKEN (sent as 'Authorization: Bearer ...').",
        err=True,
    )


@token.command("list")
@db_option
def list_(db: str | None) -> None:
    """List tokens (names, scopes, dates; never the tokens)."""
    database = _database(db)
    fmt = "%Y-%m-%d %H:%M:%S"
    lines = [f"{'id':>4}  {'name':<24} {'scope':<7} {'created':<20} {'last used':<20} revoked"]
    try:
        with database.session(readonly=True) as session:
            for t in token_service.list_tokens(session):
                used = t.last_used_at.strftime(fmt) if t.last_used_at else "-"
                revoked = t.revoked_at.strftime(fmt) if t.revoked_at else "-"
                created = t.created_at.strftime(fmt)
                lines.append(f"{t.id:>4}  {t.name:<24} {t.scope:<7} {created:<20} {used:<20} {revoked}")
    finally:
        database.dispose()
    click.echo("\n".join(lines))


@token.command("revoke")
@click.argument("name_or_id")
@db_option
def revoke(name_or_id: str, db: str | None) -> None:
    """Revoke a token by name (or id): the next request with it gets 401."""
    database = _database(db)
    try:
        with database.session() as session:
            row = token_service.find_token(session, name_or_id)
            if row is None:
                raise click.UsageError(f"no token named {name_or_id!r}")
            token_service.revoke_token(session, row)
    finally:
        database.dispose()
    click.echo(f"token {name_or_id!r} revoked", err=True)


COMMANDS = (token,)
