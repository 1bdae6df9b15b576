"""The ``gridsweep`` command line: the click group and its commands.

Every command module exports its commands as ``COMMANDS``; ``COMMAND_MODULES`` says which
module holds which, in the order ``--help`` lists them. A command's module is imported when the
command runs, not before: ``gridsweep worker`` (a child of every ``gridsweep run``) and
``gridsweep status`` then skip ~1.2 s of imports the other commands need (tokens, CI gates).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import threading
from typing import Any

import click

from app.cli.exit_codes import EXIT_INTERRUPTED
from app.cli.lifeline import watch_lifeline
from app.cli.options import log_options
from app.cli.startup import one_blas_thread
from gridsweep.logs import configure_logging

# Each command's module (app.cli.<module>), in the order --help lists them (tests/test_cli.py
# checks this against every module's COMMANDS).
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(["db", "serve", "worker", "up"], "serving"),
    "run": "run",
    **dict.fromkeys(["status", "best", "extend"], "sweeps"),
    **dict.fromkeys(["submit", "schema", "config"], "ci"),
    **dict.fromkeys(["sweeps", "cancel", "delete", "export", "trials", "trial"], "manage"),
    **dict.fromkeys(["dataset", "model", "predict", "rerun"], "data"),
    "token": "tokens",
}


class Group(click.Group):
    """The ``gridsweep`` group: with ``--json``, any error is also a JSON object on stdout
    (``error``, ``exit_code``, ``errors`` with field paths); Ctrl-C anywhere exits 130.
    Commands are loaded from their modules when asked for (``COMMAND_MODULES``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_MODULES:
            return None
        module = importlib.import_module(f"app.cli.{COMMAND_MODULES[cmd_name]}")
        return next(c for c in module.COMMANDS if c.name == cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        # The subcommand's arguments, read before click consumes them.
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if "--json" in args:
                error = {"error": exc.format_message(), "exit_code": exc.exit_code}
                click.echo(json.dumps({**error, "errors": getattr(exc, "errors", [])}, indent=2, default=str))
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """gridsweep: hyperparameter grid search for PyTorch MLPs."""
    # `run` sets its own logging (quiet by default) once its workers are started: reading the
    # settings here would import pydantic before they start (app/cli/run.py).
    if ctx.invoked_subcommand != "run":
        configure_logging(**log_options(verbose))


def cli() -> None:
    """The ``gridsweep`` console script: ``main``, then a quick exit once everything is written.

    A command that imported torch spends ~0.3 s of a 3 s ``gridsweep run`` in interpreter
    teardown (freeing torch's modules and its static state) after its output was written.
    Everything that matters is done by then: the API's lifespan disposed the store (SQLite's
    WAL checkpointed), non-daemon threads are joined here as the interpreter would, and
    atexit handlers run; only the module teardown is skipped, by ``os._exit``. Tests that call
    ``main`` in-process (click's CliRunner) are not affected.
    """
    watch_lifeline()  # a child of `gridsweep run` / `up`: stop if that parent is killed
    one_blas_thread()
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover (click in standalone mode always raises SystemExit)
        code = 0
    if not isinstance(code, int):
        if code is not None:  # sys.exit("message"): printed, exit status 1, as Python does
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can be written
            pass
    os._exit(code)


if __name__ == "__main__":
    cli()
