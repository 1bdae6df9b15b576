"""Fair share: with other workers idle a claim takes its share of the queue, not the whole pack.

``gridsweep up`` starts two workers; before this rule the first claim of a 24-trial sweep took
all 24 (one core busy, the other idle). Store-level on both backends, then two real worker
processes on one small sweep.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.models import Trial, Worker
from app.services.requeue import sign_off
from app.services.sweeps import create_sweep
from app.services.trials import claim, register_worker
from app.spec import SweepSpec
from tests.conftest import Server
from tests.robust_helpers import spec, sweep, trial_rows, wait_for

GRID_24 = {"learning_rate": [round(0.001 * (i + 1), 4) for i in range(24)], "epochs": 1}  # one pack


def new_sweep(database: Database, settings: Settings, **parameters: Any) -> int:
    raw = {"name": "share", "dataset": "moons", "parameters": parameters}
    with database.session() as s:
        return create_sweep(s, SweepSpec.model_validate(raw), settings).id


def new_worker(database: Database, name: str) -> str:
    with database.session() as s:
        return register_worker(s, name, "host", "cpu").id


def claim_(database: Database, worker_id: str, n: int) -> list[Trial]:
    with database.session() as s:
        return claim(s, s.get(Worker, worker_id), n, 60.0)


def test_two_idle_workers_split_a_24_trial_sweep(database: Database, settings: Settings) -> None:
    new_sweep(database, settings, **GRID_24)
    a, b = new_worker(database, "a"), new_worker(database, "b")  # both waiting for work (`up`)
    first = claim_(database, a, 64)
    assert len(first) == 12  # its fair share, though it asked for a pack of 64
    second = claim_(database, b, 64)  # a is busy now: b takes the rest
    assert len(second) == 12 and not {t.id for t in first} & {t.id for t in second}


def test_a_lone_worker_takes_the_whole_pack(database: Database, settings: Settings) -> None:
    new_sweep(database, settings, **GRID_24)
    assert len(claim_(database, new_worker(database, "alone"), 64)) == 24


def test_busy_and_signed_off_workers_do_not_count(database: Database, settings: Settings) -> None:
    new_sweep(database, settings, **GRID_24)
    busy, gone, idle, me = (new_worker(database, n) for n in ("busy", "gone", "idle", "me"))
    assert len(claim_(database, busy, 1)) == 1  # holds a running trial: not idle
    with database.session() as s:
        assert sign_off(s, s.get(Worker, gone)) == []  # stopped: not idle
    # 23 queued, one other idle worker: ceil(23 / 2).
    assert len(claim_(database, me, 64)) == 12
    assert len(claim_(database, idle, 64)) == 11  # the rest: everyone else is busy or gone


def test_two_worker_processes_both_train_a_small_sweep(
    tmp_path: Any, start_server: Callable[..., Server], start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # One backend: this is about the processes, the store rule is covered above.
    db_url = f"sqlite:///{tmp_path / 'share.db'}"
    upgrade(db_url)
    server = start_server(db_url)
    for _ in range(2):  # what `gridsweep up --workers 2` starts (pack size auto: larger than 24)
        start_worker(server.url)

    def both_waiting() -> bool:
        return sum(w["status"] == "online" for w in server.http.get("/api/v1/workers").json()) == 2

    wait_for(both_waiting, 120, "two workers registered")
    sid = server.http.post("/api/v1/sweeps", json=spec("both", 24)).json()["id"]
    wait_for(lambda: sweep(server.http, sid)["status"] == "succeeded", 240, "the sweep to finish")
    searched = [t for t in trial_rows(db_url, sid) if t.role == "search"]
    assert len(searched) == 24
    by_worker: dict[str, int] = {}
    for t in searched:
        by_worker[t.worker_id] = by_worker.get(t.worker_id, 0) + 1
    print(f"\nfair share, two worker processes: trials per worker {sorted(by_worker.values())}")
    assert len(by_worker) == 2  # both workers trained trials of the sweep
