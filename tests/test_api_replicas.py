"""Several API replicas on one PostgreSQL: the database alone coordinates claims and the reaper.

* Two reapers at once (each API process runs one): the second skips the rows the first has
  locked (``FOR UPDATE SKIP LOCKED``) instead of waiting, and finds nothing left once the
  first commits, so no expired lease is requeued (or failed) twice.
* Two real ``gridsweep serve`` processes on one database, workers split between them; workers
  on both are SIGKILLed, then one API is SIGKILLed and comes back later on its address (as a
  restarted pod behind a Service): every trial ends exactly once and the sweep succeeds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from app.cli.local import free_port, stop_all, wait_healthy
from app.config import Settings
from app.db import Database, db_now
from app.models import Sweep, Trial, Worker
from app.schemas import SweepCreate
from app.services import sweeps as sweep_service
from app.services import trials as ts
from tests.conftest import Children, cli_env
from tests.robust_helpers import (
    FAST_LEASES,
    duplicated_epoch_rows,
    epoch_rows_of_final_attempts,
    log_text,
    logged_statuses,
    spec,
    sweep,
    trial_rows,
    wait_for,
)

N_TRIALS = 48
EPOCHS = 20
PACK_SIZE = "4"


def _expired_sweep(db: Database, n: int, attempts: int) -> tuple[int, list[int]]:
    """A sweep whose ``n`` trials were all claimed by one worker, now with expired leases.

    Claimed one at a time: a trial lost alone is charged its attempt (a lost pack is not).
    """
    body = {
        "name": "reap",
        "dataset": "moons",
        "parameters": {"learning_rate": [0.01 * (i + 1) for i in range(n)]},
    }
    with db.session() as s:
        sweep_row = sweep_service.create_sweep(
            s, SweepCreate.model_validate(body), Settings(max_attempts=attempts)
        )
        worker = ts.register_worker(s, "w", "host", "cpu")
        claimed = []
        while batch := ts.claim(s, worker, 1, 30):
            claimed += [t.id for t in batch]
        s.execute(update(Trial).values(lease_expires_at=db_now(s) - timedelta(seconds=1)))
        return sweep_row.id, sorted(claimed)


def _reap(db: Database) -> int:
    with db.session() as s:
        return ts.reap_expired(s)


@pytest.mark.parametrize("attempts", [3, 1])  # requeued, or out of attempts: failed
def test_two_reapers_never_reclaim_a_lease_twice(pg_only_url: str, attempts: int) -> None:
    replica_a, replica_b = Database(pg_only_url), Database(pg_only_url)  # two API processes' pools
    try:
        sid, ids = _expired_sweep(replica_a, 6, attempts)
        assert len(ids) == 6
        with replica_a.session() as s, ThreadPoolExecutor(1) as pool:
            first = ts.reap_expired(s)  # replica A holds the rows' locks until it commits
            # Replica B's round meanwhile: it must not wait for A, nor take A's rows.
            second = pool.submit(_reap, replica_b).result(timeout=10)
        third = _reap(replica_b)  # after A's commit: nothing is expired any more
        assert (first, second, third) == (6, 0, 0)
        with replica_b.session(readonly=True) as s:
            rows = s.scalars(select(Trial).where(Trial.id.in_(ids))).all()
            want = "queued" if attempts > 1 else "failed"
            assert {(t.status, t.attempt, t.lease_token) for t in rows} == {(want, 1, None)}
            assert s.get(Sweep, sid).status == ("running" if attempts > 1 else "failed")
            assert all(t.worker_id is None for t in rows)
            assert s.scalar(select(Worker.name)) == "w"
    finally:
        replica_a.dispose()
        replica_b.dispose()


class Api:
    """A ``gridsweep serve`` process on a fixed port (so that it can come back on the same address)."""

    def __init__(self, db_url: str, port: int, log: Path) -> None:
        self.url, self.log = f"http://127.0.0.1:{port}", log
        env = cli_env(
            **{f"GRIDSWEEP_{k.upper()}": v for k, v in {**FAST_LEASES, "max_attempts": "8"}.items()}
        )
        with open(log, "wb") as out:
            cmd = [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--db",
                db_url,
                "--port",
                str(port),
                "--no-upgrade",
            ]
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready(self) -> Api:
        wait_healthy(self.url, timeout=90, proc=self.proc)
        return self

    def text(self) -> str:
        return log_text(self.log)


def recorded(log: str) -> list[int]:
    """Trial ids in the API's audit lines, in order: one line per outcome it recorded."""
    return [int(m) for m in re.findall(r"trial (\d+) ended \w+, recorded from worker", log)]


def reaped(log: str) -> int:
    return sum(int(n) for n in re.findall(r"reaper requeued or failed (\d+) leases", log))


@pytest.mark.slow
def test_two_api_replicas_kill_workers_and_an_api_every_trial_ends_once(
    start_worker: Callable[..., subprocess.Popen[bytes]], children: Children, pg_only_url: str, tmp_path: Path
) -> None:
    port_b = free_port()
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    apis = [
        Api(pg_only_url, free_port(), tmp_path / "api-a.log"),
        Api(pg_only_url, port_b, tmp_path / "api-b.log"),
    ]
    try:
        a, b = (api.ready() for api in apis)
        http = httpx.Client(base_url=a.url, timeout=30)
        body = spec("replicas", N_TRIALS, epochs=EPOCHS, batch_size=16)
        sid = http.post("/api/v1/sweeps", json=body).json()["id"]
        # Workers split between the replicas (as a Service would spread their connections).
        a1, _a2, b1, b2 = (start_worker(api.url, "--pack-size", PACK_SIZE) for api in (a, a, b, b))
        wait_for(lambda: recorded(a.text()) and recorded(b.text()), 120, "both replicas to record outcomes")
        phases["both serving"] = time.monotonic() - t0
        for w in (a1, b1):  # a worker on each replica dies holding its pack
            w.send_signal(signal.SIGKILL)
            w.wait()
        reaped_before = reaped(a.text())
        b.proc.send_signal(signal.SIGKILL)  # then one API replica dies mid-sweep
        b.proc.wait()

        def b2_seen() -> str | None:
            (w,) = [w for w in http.get("/api/v1/workers").json() if w["name"].endswith(f"-{b2.pid}")]
            return w["last_heartbeat_at"]

        seen = b2_seen()  # B's surviving worker's last heartbeat while B is down (claims refresh it)
        phases["killed"] = time.monotonic() - t0
        # Its surviving worker retries; the leases it holds expire, replica A's reaper requeues them.
        wait_for(lambda: reaped(a.text()) > reaped_before, 60, "replica A to reap expired leases")
        b_again = Api(pg_only_url, port_b, tmp_path / "api-b2.log").ready()  # restarted on its address
        apis.append(b_again)
        phases["B back"] = time.monotonic() - t0

        deadline = time.monotonic() + 120
        while sweep(http, sid)["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, f"sweep not done after 120s: {sweep(http, sid)['counts']}"
            time.sleep(0.5)
        phases["sweep done"] = time.monotonic() - t0
        # The worker on the restarted replica carries on through it (claims refresh its heartbeat).
        wait_for(lambda: b2_seen() != seen, 30, "the worker of the restarted replica to come back")
        final = sweep(http, sid)
        http.close()
    finally:  # the workers first: they sign off through the APIs
        children.stop()
        stop_all([api.proc for api in apis])

    trials = trial_rows(pg_only_url, sid)
    search = [t for t in trials if t.role == "search"]
    logs = {name: log_text(tmp_path / f"api-{name}.log") for name in ("a", "b", "b2")}
    # Lines from the processes that lived are outcomes that were committed; the killed replica
    # may have logged its last outcomes just before their commit died with it.
    lived = Counter(recorded(logs["a"]) + recorded(logs["b2"]))
    killed = recorded(logs["b"])
    in_flight = set(killed[-int(PACK_SIZE) * 2 :])
    twice = {t.id for t in search if lived[t.id] + killed.count(t.id) > 1 and t.id not in in_flight}
    retries = sum(t.attempt - 1 for t in trials)  # final trials too: a reaper may reclaim those
    reclaims = sum(reaped(text) for text in logs.values())
    curves = epoch_rows_of_final_attempts(pg_only_url, sid)
    print(
        f"\nreplicas: {N_TRIALS} trials over 2 APIs; recorded by A {len(recorded(logs['a']))}, "
        f"by B {len(killed)} (killed), by B' {len(recorded(logs['b2']))}; retries {retries}, "
        f"reaper reclaims {reclaims}; sweep {final['status']}; at "
        + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items())
    )
    assert final["status"] == "succeeded", final
    assert len(search) == N_TRIALS and {t.status for t in search} == {"succeeded"}
    assert all(lived[t.id] + killed.count(t.id) >= 1 for t in search)  # nothing lost
    assert not twice, twice  # nothing recorded twice
    assert all(lived[t.id] <= 1 for t in trials)
    assert duplicated_epoch_rows(pg_only_url) == 0
    assert all(curves.get(t.id) == EPOCHS and t.epochs_done == EPOCHS for t in search)
    # The kills left leases for the reapers to reclaim. A lost pack is requeued without charging
    # its trials an attempt (README, attempts), so reclaims are not bounded by the retries here;
    # that two reapers never take one lease twice is test_two_reapers_never_reclaim_a_lease_twice.
    assert reclaims >= 1 and retries >= 0
    for text in logs.values():
        assert "500" not in logged_statuses(text)
