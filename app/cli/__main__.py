"""``python -m app.cli``: the ``gridsweep`` command line."""

from app.cli.main import cli

cli()
