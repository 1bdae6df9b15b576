"""Engine and sessions. Every difference between SQLite and PostgreSQL lives here.

The caller owns the transaction: ``with db.session() as s: ...`` commits on
success and rolls back on error. Services only ``flush``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, String, Table, cast, create_engine, event, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

# How long an SQLite writer waits for the write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is DEFERRED,
        # and a deferred reader that later writes can fail with SQLITE_BUSY instead of waiting).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer and the writer never blocks readers, so the
        # dashboard and the workers' claims can run side by side.
        cur.execute("PRAGMA journal_mode=WAL")
        # SQLite does not enforce foreign keys unless asked, per connection.
        cur.execute("PRAGMA foreign_keys=ON")
        # Wait for the write lock instead of failing at once with "database is locked".
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # In WAL mode NORMAL is durable across application crashes and much faster than FULL.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE), so two writers queue on
        # busy_timeout instead of deadlocking on a lock upgrade; readers stay DEFERRED.
        readonly = conn.get_execution_options().get("gridsweep_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` with the settings its dialect needs."""
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    # PostgreSQL: test pooled connections before use so a restarted server costs one
    # retry, not an error per stale connection.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """An engine plus its session factories (read-write and read-only)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._rw = sessionmaker(self.engine, expire_on_commit=False)
        self._ro = sessionmaker(
            self.engine.execution_options(gridsweep_readonly=True), expire_on_commit=False
        )

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A transaction: commit on success, roll back on error."""
        session = (self._ro if readonly else self._rw)()
        try:
            yield session
            if readonly:
                session.rollback()
            else:
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def db_now(session: Session) -> datetime:
    """The database's clock (UTC), so that leases agree across API hosts."""
    if session.get_bind().dialect.name == "sqlite":
        raw = session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    value = session.execute(text("SELECT now()")).scalar_one()
    return value.astimezone(UTC)


def insert_ignore(session: Session, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the session's dialect (add ``.values()``)."""
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


def for_update_skip_locked(session: Session) -> dict[str, bool]:
    """Keyword args for ``Select.with_for_update``: SKIP LOCKED on PostgreSQL.

    SQLite has no row locks; there the claim is serialized by BEGIN IMMEDIATE.
    """
    if session.get_bind().dialect.name == "sqlite":
        return {}
    return {"skip_locked": True}


def json_key(session: Session, column: Any, key: str) -> ColumnElement[Any]:
    """One key (a known parameter name) of a JSON column as an SQL value that sorts by its JSON
    value: numbers as numbers.

    SQLite's ``json_extract`` gives native SQL values (numbers, text; arrays as JSON text).
    PostgreSQL's ``json`` has no ordering: the extracted value (not the whole document, which
    would cost a parse of every row's JSON) is cast to ``jsonb``, which orders numbers
    numerically and values of different JSON types by type.
    """
    if session.get_bind().dialect.name == "sqlite":
        return func.json_extract(column, f'$."{key}"')
    return cast(column.op("->")(key), postgresql.JSONB)


def json_key_text(session: Session, column: Any, key: str) -> ColumnElement[str]:
    """One key of a JSON column as its JSON text (group by it, ``json.loads`` the result)."""
    if session.get_bind().dialect.name == "sqlite":
        # json_quote of a value json_extract returned as JSON (an array) leaves it as is.
        return func.json_quote(func.json_extract(column, f'$."{key}"'))
    # json's -> keeps the stored text of the value: one writer (json.dumps) wrote them all.
    return cast(column.op("->")(key), String)
