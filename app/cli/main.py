"""The ``gridsweep`` command line: the click group and its commands.

Every command module exports its commands as ``COMMANDS``; this module adds them to the
group, in the order ``--help`` lists them.
"""

from __future__ import annotations

import json
from typing import Any

import click

from app.cli import ci, data, manage, serving, sweeps, tokens
from app.cli.api import EXIT_INTERRUPTED
from app.cli.options import log_options
from gridsweep.logs import configure_logging


class Group(click.Group):
    """The ``gridsweep`` group: with ``--json``, any error is also a JSON object on stdout
    (``error``, ``exit_code``, ``errors`` with field paths); Ctrl-C anywhere exits 130."""

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
def main(verbose: bool) -> None:
    """gridsweep: hyperparameter grid search for PyTorch MLPs."""
    configure_logging(**log_options(verbose))


for _module in (serving, sweeps, ci, manage, data, tokens):
    for _command in _module.COMMANDS:
        main.add_command(_command)

if __name__ == "__main__":
    main()
