"""Run Alembic programmatically, so an installed gridsweep can upgrade its own store.

Alembic's setup lines ("setup plugin ...", "Context impl SQLiteImpl.", "Will assume
transactional DDL.") are logged at DEBUG here, not at Alembic's INFO: they say nothing about
the store. "Running upgrade 0004 -> 0005" stays INFO. Alembic is imported on first use, after
the filter that does it is in place (its plugins log their setup as they are imported).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import migrations

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine

_SETUP_LINES = ("setup plugin ", "setting up autogenerate plugin ", "Context impl ", "Will assume ")


class _SetupAtDebug(logging.Filter):
    """Alembic's setup lines as DEBUG records: dropped unless the logger is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith(_SETUP_LINES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    logging.getLogger(_name).addFilter(_SetupAtDebug())


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Escape % for configparser interpolation (passwords may contain it).
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine.url.render_as_string(hide_password=False))
