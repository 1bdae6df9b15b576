"""PostgreSQL restarted in the middle of a sweep with 2 workers: the sweep completes with
nothing lost, and the API answers 503 (never 500) while the database is away.

The local cluster is shared with other tests: the restart is one brief ``pg_ctlcluster
restart`` (fast shutdown), and everything here waits for the database to come back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL, Server, require
from tests.robust_helpers import FAST_LEASES, log_text, logged_statuses, spec, sweep, trial_rows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial]

N_TRIALS = 100
EPOCHS = 3


def local_cluster() -> str | None:
    """The version of the local Debian cluster behind PG_URL, if this machine runs it."""
    if make_url(PG_URL).host not in ("127.0.0.1", "localhost") or not shutil.which("pg_ctlcluster"):
        return None
    try:
        versions = os.listdir("/etc/postgresql")
    except OSError:
        return None
    return max(versions, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()], default=None)


def test_postgres_restart_mid_sweep(
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    pg_only_url: str,
) -> None:
    version = local_cluster()
    require(version is not None, "a local PostgreSQL cluster this test may restart (pg_ctlcluster)")
    server = start_server(pg_only_url, **FAST_LEASES)
    sid = server.http.post("/api/v1/sweeps", json=spec("restart", N_TRIALS, epochs=EPOCHS)).json()["id"]
    for _ in range(2):
        start_worker(server.url)

    # A poller records every answer the API gives meanwhile (workers' answers are in its log).
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                try:
                    seen[str(http.get(f"/api/v1/sweeps/{sid}").status_code)] += 1
                except httpx.TransportError as exc:
                    seen[type(exc).__name__] += 1
                stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        wait_for(
            lambda: sweep(server.http, sid)["counts"]["succeeded"] >= 10, 180, "the sweep to be under way"
        )
        before = sweep(server.http, sid)["counts"]["succeeded"]
        t0 = time.monotonic()
        restart = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"]
        r = subprocess.run(restart, capture_output=True, text=True, timeout=120)
        restart_seconds = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        wait_for(
            lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0, 60, "PostgreSQL"
        )

        def finished() -> bool:
            try:
                return sweep(server.http, sid)["status"] in ("succeeded", "failed", "canceled")
            except httpx.HTTPStatusError:  # 503 while it reconnects
                return False

        wait_for(finished, 240, "the sweep to finish after the restart", every=0.5)
    finally:
        stop.set()
        poller.join(timeout=10)

    final = sweep(server.http, sid)
    search = [t for t in trial_rows(pg_only_url, sid) if t.role == "search"]
    statuses = Counter(t.status for t in search)
    access = logged_statuses(log_text(Path(server.log.name)))
    print(
        f"\ndb restart: {before} of {N_TRIALS} trials done when PostgreSQL restarted "
        f"({restart_seconds:.1f}s); "
        f"sweep {final['status']}, trials {dict(statuses)}; poller saw {dict(seen)}; "
        f"API answered {dict(sorted(access.items()))}"
    )
    assert final["status"] == "succeeded"
    assert len(search) == N_TRIALS and statuses == {"succeeded": N_TRIALS}
    assert "500" not in seen and "500" not in access
    assert seen["503"] + access["503"] >= 1  # the outage was seen, and answered 503
    assert all(t.epochs_done == EPOCHS for t in search)
