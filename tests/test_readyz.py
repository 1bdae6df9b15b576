"""/readyz follows the database: 503 before migrations, 200 at head, 503 while PostgreSQL is
stopped, 200 once it is back; /healthz stays 200 throughout.

The database is a second PostgreSQL instance of our own (initdb + pg_ctl on a free port in a
temporary directory), really stopped and started: stopping the shared server on 5432 would
break every other test using it, and renaming a database would leave the server up (a
different failure than a stopped one).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.cli.local import free_port
from app.migrate import head_revision, upgrade
from tests.conftest import Server, require

pytestmark = pytest.mark.slow


def pg_bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PgInstance:
    """A throwaway PostgreSQL cluster; as root, its processes run as the ``postgres`` user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="gridsweep-readyz-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg_instance() -> Iterator[PgInstance]:
    bindir = pg_bindir()
    require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl)")
    inst = PgInstance(bindir)
    try:
        inst.start()
        yield inst
    finally:
        inst.remove()


def wait_for_status(url: str, status: int, timeout: float = 30) -> httpx.Response:
    """Poll until ``url`` answers ``status`` (a state to reach, not a timing to assert)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, timeout=10)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_readyz_follows_the_database(pg_instance: PgInstance, tmp_path: Path) -> None:
    admin = create_engine(pg_instance.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("CREATE DATABASE gridsweep"))
    admin.dispose()
    url = pg_instance.url("gridsweep")
    server = Server(url, tmp_path / "server.log")  # --no-upgrade: the schema is not there yet
    try:
        ready = f"{server.url}/readyz"
        r = httpx.get(ready)
        assert r.status_code == 503 and "migrations not at head" in r.json()["reason"]

        upgrade(url)
        r = httpx.get(ready)
        assert r.status_code == 200 and r.json()["revision"] == head_revision(url)

        pg_instance.stop()
        r = wait_for_status(ready, 503)
        assert r.status_code == 503 and "database unreachable" in r.json()["reason"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
        assert httpx.get(f"{server.url}/api/v1/sweeps").status_code == 503  # never a 500

        pg_instance.start()
        r = wait_for_status(ready, 200)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/api/v1/sweeps").status_code == 200
    finally:
        server.stop()
