"""The ``gridsweep`` command line: the click group and its commands.

Every command module exports its commands as ``COMMANDS``; this module adds them to the
group, in the order ``--help`` lists them.
"""

from __future__ import annotations

import click

from app.cli import ci, data, serving, sweeps, tokens
from app.cli.options import log_options
from gridsweep.logs import configure_logging


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """gridsweep: hyperparameter grid search for PyTorch MLPs."""
    configure_logging(**log_options(verbose))


for _module in (serving, sweeps, ci, data, tokens):
    for _command in _module.COMMANDS:
        main.add_command(_command)

if __name__ == "__main__":
    main()
