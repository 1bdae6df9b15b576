"""Options and checks that several ``gridsweep`` commands share: where the API is, where the
store is, auth, pack size, log level.

Light to import (click and the pack-size rule): ``gridsweep run`` starts its workers before it
imports the settings (pydantic), the HTTP client or the store, so their import of torch
overlaps those. What needs them imports them when called.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

import click

from worker.packing import parse_pack_size

if TYPE_CHECKING:
    from app.config import Settings

DEFAULT_SERVER = "http://127.0.0.1:8000"

server_option = click.option(
    "--server", envvar="GRIDSWEEP_SERVER", default=DEFAULT_SERVER, show_default=True, help="API URL."
)
db_option = click.option(
    "--db",
    "db",
    envvar="GRIDSWEEP_DATABASE_URL",
    default=None,
    help="Database URL (default: GRIDSWEEP_DATABASE_URL or sqlite:///gridsweep.db).",
)


def pack_size_option(value: str | int | None) -> int | None:
    """``--pack-size``: an integer, or ``auto`` (None: the worker picks by device)."""
    try:
        return parse_pack_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


pack_size_flag = click.option(
    "--pack-size",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: pack_size_option(value),
    help="Trials claimed and trained at once (fused); 1 trains one by one; auto: 64 on CPU, 512 on CUDA.",
)


def open_store(url: str) -> None:
    """Create or upgrade the store's schema; a database that cannot be opened is one line naming
    its URL (password masked), exit 3; a URL that is not one is a usage error (exit 2)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from app.cli.api import BadInput, masked_url, store_unreachable
    from app.migrate import upgrade

    try:
        upgrade(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise BadInput(f"not a database URL: {masked_url(url)} ({exc})") from None
    except DBAPIError as exc:
        raise store_unreachable(url, exc) from None


def settings_for(db: str | None) -> Settings:
    from app.config import get_settings

    s = get_settings()
    return s.model_copy(update={"database_url": db}) if db else s


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str, insecure: bool) -> None:
    """Refuse to serve without auth beyond loopback (unless --insecure); say how it runs."""
    if settings.auth_enabled:
        click.echo(f"gridsweep: auth is on (API tokens required) on {host}", err=True)
        return
    if not is_loopback(host) and not insecure:
        raise click.UsageError(
            f"refusing to serve on {host} without auth: set GRIDSWEEP_AUTH=on and create tokens "
            "(gridsweep token create), or pass --insecure to accept anyone who can reach it"
        )
    where = "loopback only" if is_loopback(host) else "INSECURE, anyone who can reach it"
    click.echo(f"gridsweep: auth is OFF ({where}); set GRIDSWEEP_AUTH=on to require tokens", err=True)


auth_option = click.option(
    "--auth",
    type=click.Choice(["on", "off"]),
    default=None,
    help="Require API tokens (default: GRIDSWEEP_AUTH).",
)
insecure_option = click.option(
    "--insecure", is_flag=True, help="Allow a non-loopback address without auth (anyone may use the API)."
)


def log_options(verbose: bool) -> dict[str, Any]:
    """Log level and format for this process, from ``GRIDSWEEP_LOG_*`` (``-v``: DEBUG)."""
    from pydantic import ValidationError

    from app.config import Settings

    try:
        s = Settings()
        level, fmt = s.log_level, s.log_format
    except ValidationError:
        level, fmt = "INFO", "auto"  # `gridsweep config` reports the bad value
    return {"level": "DEBUG" if verbose else level, "fmt": fmt}


def run_log_level(verbose: int, quiet: bool, debug: bool = False) -> str:
    """The log level of ``gridsweep run`` (its in-process API and its workers): WARNING, so a
    clean sweep shows its progress and result only; ``-v`` INFO, ``-vv`` (or ``gridsweep -v``)
    DEBUG; ``-q`` ERROR. Without a flag, a ``GRIDSWEEP_LOG_LEVEL`` set in the environment holds."""
    if quiet:
        return "ERROR"
    if debug or verbose >= 2:
        return "DEBUG"
    if verbose == 1:
        return "INFO"
    env = os.environ.get("GRIDSWEEP_LOG_LEVEL", "").strip().upper()
    return env if env in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "WARNING"


verbosity_flags = (
    click.option(
        "-v",
        "--verbose",
        count=True,
        help="Show the in-process API's and workers' logs: -v INFO, -vv DEBUG (default: warnings only).",
    ),
    click.option(
        "-q", "--quiet", is_flag=True, help="Print only the result: no progress, no logs below ERROR."
    ),
)
