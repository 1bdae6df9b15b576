"""Options that several ``gridsweep`` commands share: where the API is, where the store is."""

from __future__ import annotations

import click

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
