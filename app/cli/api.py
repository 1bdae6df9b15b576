"""How every CLI command talks to the API: one client factory, one call helper and one error
type per cause, each with its code from the exit-code table (``app.cli.exit_codes``).
"""

from __future__ import annotations

import os
import re
from typing import Any

import click
import httpx

from app.cli.exit_codes import EXIT_MISSED, EXIT_UNREACHABLE, EXIT_USAGE
from gridsweep.client import ApiClient, ApiError


class CliError(click.ClickException):
    """A message and one of the documented exit codes; ``errors``: the ``{loc, msg}`` behind it."""

    exit_code = EXIT_MISSED

    def __init__(
        self, message: str, code: int | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.errors = errors or []
        if code is not None:
            self.exit_code = code


class BadInput(CliError):
    """The spec, a file or a request was refused (exit 2)."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """No API answered, or it refused our token (exit 3)."""

    exit_code = EXIT_UNREACHABLE


class NotFound(CliError):
    """No such sweep, trial or dataset (exit 2, like any bad argument)."""

    exit_code = EXIT_USAGE


def masked_url(url: str) -> str:
    """A database URL with its password as ``***``."""
    from sqlalchemy.engine import make_url  # here: client-only commands need not import sqlalchemy

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide anything between ':' and '@'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def store_unreachable(url: str, exc: BaseException) -> Unreachable:
    """One line for a database that cannot be opened: its URL (password masked) and the reason."""
    reason = getattr(exc, "orig", None) or exc
    first = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
    return Unreachable(f"cannot open the database at {masked_url(url)}: {first}")


def format_api_errors(detail: Any) -> str:
    """A 4xx ``detail`` as ``field.path: reason`` lines."""
    # Here, not at the top: app.spec's models cost ~0.1 s of every `gridsweep worker` start.
    from app.spec import format_loc

    if isinstance(detail, list):
        out = []
        for e in detail:
            loc = [p for p in e.get("loc", []) if p != "body"] if isinstance(e, dict) else []
            msg = e.get("msg") if isinstance(e, dict) else e
            out.append(f"  {format_loc(loc)}: {msg}" if loc else f"  {msg}")
        return "\n".join(out)
    return f"  {detail}"


def make_client(server: str) -> ApiClient:
    """A client for ``server`` with the token from ``GRIDSWEEP_TOKEN`` (a short retry budget)."""
    return ApiClient(server, token=os.environ.get("GRIDSWEEP_TOKEN"), retry_for=3.0)


def _not_found(detail: Any) -> str:
    """The API's ``sweep 999 not found`` as ``no sweep 999``."""
    m = re.fullmatch(r"(\w+) (.+) not found", str(detail))
    return f"no {m[1]} {m[2]}" if m else str(detail)


def call(client: ApiClient, method: str, path: str, **kw: Any) -> Any:
    """One API call; failures become the documented exit codes."""
    try:
        return client.request(method, path, **kw)
    except ApiError as exc:
        if exc.status_code in (400, 413, 422):
            errors = exc.detail if isinstance(exc.detail, list) else [{"loc": [], "msg": str(exc.detail)}]
            raise BadInput(
                f"the server rejected the request ({exc.status_code}):\n" + format_api_errors(exc.detail),
                errors=errors,
            ) from exc
        if exc.status_code == 404:
            raise NotFound(_not_found(exc.detail)) from exc
        if exc.status_code == 409:
            raise CliError(f"refused (409): {exc.detail}") from exc
        if exc.status_code in (401, 403):
            raise Unreachable(f"authentication refused ({exc.status_code}): {exc.detail}") from exc
        if exc.status_code == 503:
            raise Unreachable(f"API unavailable at {client.base_url}: {exc.detail}") from exc
        raise CliError(f"{method} {path}: {exc}") from exc
    except httpx.HTTPError as exc:  # e.g. a malformed server URL
        raise Unreachable(f"cannot reach the API at {client.base_url}: {exc}") from exc
