"""`alembic upgrade head` gives exactly the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db import make_engine
from app.migrate import alembic_config, head_revision, is_at_head, upgrade
from app.models import Base


def test_upgrade_head_matches_models_exactly(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True}
            ctx = MigrationContext.configure(conn, opts=opts)
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations drifted: {diff}"
        assert is_at_head(engine)
        assert set(inspect(engine).get_table_names()) >= {"sweep", "trial", "trial_epoch", "worker"}
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        assert "trial" not in inspect(engine).get_table_names()
        upgrade(db_url)
        assert is_at_head(engine)
        assert head_revision(db_url) is not None
    finally:
        engine.dispose()
