"""Shared fixtures: every store test runs on SQLite and on a real PostgreSQL.

PostgreSQL is ``GRIDSWEEP_TEST_PG`` (default: the local server's ``test``
database); each test gets a fresh database of its own, dropped afterwards.
Outside CI a missing PostgreSQL skips those tests; with ``CI=true`` it fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.cli.local import free_port, stop_all, wait_healthy
from app.config import Settings
from app.db import Database
from app.migrate import upgrade

PG_URL = os.environ.get("GRIDSWEEP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parents[1]


def require(available: bool, what: str) -> None:
    """Skip when a real part is missing, except in CI, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


def _pg_admin():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def pg_available() -> bool:
    try:
        with _pg_admin().connect() as c:
            c.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def new_pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh, empty PostgreSQL database and the function that drops it."""
    name = f"gs_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and OpenMP threads crawl on a busy machine."""
    import torch  # here, not at the top: most tests never load torch in this process

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Children:
    """The servers and workers a test started, stopped before its database goes: workers first
    (they sign off through a server), then servers. Whatever order a test names its fixtures
    in, a worker never signs off against a dropped database (that answers 503, and the worker
    retries for seconds)."""

    def __init__(self) -> None:
        self.workers: list[subprocess.Popen[bytes]] = []
        self.servers: list[Server] = []

    def stop(self) -> None:
        stop_all(self.workers)
        for s in self.servers:
            s.stop()


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    yield kids
    kids.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path, children: Children) -> Iterator[str]:
    """A URL of an empty database, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gridsweep.db'}"  # a file: nothing to drop
        return
    require(pg_available(), f"PostgreSQL at {PG_URL}")
    url, drop = new_pg_database()
    try:
        yield url
    finally:
        children.stop()
        drop()


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database migrated to head, on each backend."""
    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a gridsweep child process (GRIDSWEEP_* from the caller only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSWEEP_")}
    env.update(extra)
    return env


class Server:
    """A real ``gridsweep serve`` (uvicorn) process on a free loopback port."""

    def __init__(self, db_url: str, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = cli_env(**{f"GRIDSWEEP_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--db",
                db_url,
                "--port",
                str(self.port),
                "--no-upgrade",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_healthy(self.url, timeout=60, proc=self.proc)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        if self.log.closed:
            return  # stopped already
        self.http.close()
        stop_all([self.proc])
        self.log.close()


@pytest.fixture
def start_server(tmp_path: Path, children: Children) -> Callable[..., Server]:
    """Factory: ``start_server(db_url, lease_seconds=2, ...)`` (settings become GRIDSWEEP_* env);
    stopped at teardown (``Children``)."""

    def start(db_url: str, **settings: str) -> Server:
        s = Server(db_url, tmp_path / f"server-{len(children.servers)}.log", **settings)
        children.servers.append(s)
        return s

    return start


@pytest.fixture
def server(db_url: str, start_server: Callable[..., Server]) -> Server:
    return start_server(db_url)


@pytest.fixture
def start_worker(tmp_path: Path, children: Children) -> Callable[..., subprocess.Popen[bytes]]:
    """Factory: a real ``gridsweep worker`` process; stopped (SIGTERM) at teardown (``Children``)."""
    procs = children.workers

    def start(server_url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # the child keeps it
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--server",
                server_url,
                "--device",
                "cpu",
                "--threads",
                "1",
                *args,
            ],
            env=cli_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(p)
        return p

    return start


@pytest.fixture
def pg_only_url(children: Children) -> Iterator[str]:
    """A fresh PostgreSQL database at head, for tests about PostgreSQL alone (chaos, restarts)."""
    require(pg_available(), f"PostgreSQL at {PG_URL}")
    url, drop = new_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        children.stop()
        drop()
