"""Alembic migrations for gridsweep (one lineage for SQLite and PostgreSQL)."""
