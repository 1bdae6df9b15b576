"""Workers die and come back; the sweep does not notice. PostgreSQL, real worker processes.

* Chaos: 3 workers, one SIGKILLed every few seconds and restarted, over >= 200 trials.
* Zombie: a worker SIGSTOPped past its lease; another re-runs its trial; SIGCONT: the
  zombie's late writes are refused and the recorded result stays the other worker's.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Server
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

pytestmark = pytest.mark.slow

N_TRIALS = 200
# Small packs of short trials: the fused path is exercised (a kill loses a whole pack) and the
# sweep lasts long enough for several kills.
EPOCHS = 10
PACK_SIZE = "4"
KILL_EVERY_SECONDS = 5.0
ZOMBIE_EPOCHS = 25


def test_chaos_sigkill_workers_nothing_lost_nothing_twice(
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    pg_only_url: str,
    tmp_path: Path,
) -> None:
    # Attempts: a trial may be hit by a kill more than once in a run like this; the default
    # of 3 is about real workers, this test kills one every few seconds on purpose.
    server = start_server(pg_only_url, **FAST_LEASES, max_attempts="8")
    created = server.http.post(
        "/api/v1/sweeps", json=spec("chaos", N_TRIALS, epochs=EPOCHS, batch_size=16)
    ).json()
    sid = created["id"]
    logs: list[Path] = []

    def launch() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"worker-{len(logs)}.log")  # the start_worker fixture's naming
        return start_worker(server.url, "--pack-size", PACK_SIZE)

    workers = [launch() for _ in range(3)]
    slots = list(range(3))  # slot -> index into logs
    rng = random.Random(5)
    kills = 0
    t0 = time.monotonic()
    deadline = t0 + 240
    while sweep(server.http, sid)["status"] not in ("succeeded", "failed", "canceled"):
        if time.monotonic() > deadline:
            finals = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"role": "final"}).json()["items"]
            brief = [(t["status"], t["attempt"], t["worker_id"], t["error"]) for t in finals]
            counts = sweep(server.http, sid)["counts"]
            raise AssertionError(f"sweep not done after 240s: {counts}, final trials {brief}")
        time.sleep(KILL_EVERY_SECONDS)
        # Kill a worker that has recorded trials since it started (one by one or a pack at once):
        # killing one still importing torch would test nothing, and the sweep must move on.
        ready = [i for i in range(3) if re.search(r": recorded|trials reported", log_text(logs[slots[i]]))]
        if not ready:
            continue
        victim = rng.choice(ready)
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        kills += 1
        slots[victim] = len(logs)
        workers[victim] = launch()
    seconds = time.monotonic() - t0

    final = sweep(server.http, sid)
    trials = trial_rows(pg_only_url, sid)
    search = [t for t in trials if t.role == "search"]
    statuses = Counter(t.status for t in search)
    attempts = Counter(t.attempt for t in search)
    # Every recorded outcome is one line in the API's log: count them per trial.
    recorded = Counter(
        int(m) for m in re.findall(r"trial (\d+) ended \w+, recorded", log_text(Path(server.log.name)))
    )
    twice = {tid: n for tid, n in recorded.items() if n > 1}
    curves = epoch_rows_of_final_attempts(pg_only_url, sid)
    short_curves = [t.id for t in search if curves.get(t.id) != EPOCHS]
    dup_epochs = duplicated_epoch_rows(pg_only_url)
    lost = N_TRIALS - statuses.get("succeeded", 0)
    print(
        f"\nchaos: {N_TRIALS} trials, 3 workers, {kills} SIGKILLs in {seconds:.0f}s; "
        f"statuses {dict(statuses)}; "
        f"attempts {dict(sorted(attempts.items()))}; lost {lost}, recorded twice {len(twice)}, "
        f"duplicated epoch rows {dup_epochs}, incomplete curves {len(short_curves)}; sweep {final['status']}"
    )
    assert final["status"] == "succeeded", final
    assert len(search) == N_TRIALS and lost == 0
    assert not twice, twice
    assert all(recorded[t.id] == 1 for t in search)
    assert dup_epochs == 0 and not short_curves
    assert all(t.epochs_done == EPOCHS for t in search)
    # The chaos did hit trials: lost in a pack (requeued in smaller packs, no attempt used) or alone.
    hit = [t for t in search if t.attempt > 1 or t.max_pack is not None]
    assert kills >= 3 and hit


def test_zombie_worker_late_writes_refused(
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    pg_only_url: str,
    tmp_path: Path,
) -> None:
    server = start_server(pg_only_url, **FAST_LEASES)
    one = {"name": "zombie", "dataset": "digits", "parameters": {"layers": 2, "hidden_units": 128}}
    one["parameters"].update(batch_size=8, epochs=ZOMBIE_EPOCHS)
    sid = server.http.post("/api/v1/sweeps", json=one).json()["id"]
    zombie = start_worker(server.url, "--name", "zombie")
    zombie_log = tmp_path / "worker-0.log"

    def search_trial() -> dict:
        items = server.http.get(f"/api/v1/sweeps/{sid}/trials").json()["items"]
        return server.http.get(f"/api/v1/trials/{items[0]['id']}").json()

    wait_for(lambda: search_trial()["epochs_done"] >= 2, 120, "the zombie to be training")
    zombie.send_signal(signal.SIGSTOP)
    try:
        stopped_at = search_trial()
        zombie_id = stopped_at["worker_id"]
        start_worker(server.url, "--name", "rescuer")
        done = wait_for(
            lambda: (t := search_trial())["status"] == "succeeded" and t,
            180,
            "the rescuer to finish the trial",
        )
    finally:
        zombie.send_signal(signal.SIGCONT)
    # The zombie wakes up still "training" the trial; its next write must bounce.
    wait_for(lambda: "lease lost" in log_text(zombie_log), 60, "the zombie to hear that its lease is lost")
    time.sleep(1.0)  # anything else it would write lands now
    after = search_trial()
    workers = {w["id"]: w["name"] for w in server.http.get("/api/v1/workers").json()}
    print(
        f"\nzombie: stopped at epoch {stopped_at['epochs_done']} of attempt {stopped_at['attempt']}; "
        f"re-run by {workers[done['worker_id']]} as attempt {done['attempt']}; "
        f"after SIGCONT: recorded by {workers[after['worker_id']]}, {len(after['epochs'])} epochs"
    )
    assert workers[zombie_id] == "zombie"
    assert workers[done["worker_id"]] == "rescuer" and done["attempt"] == stopped_at["attempt"] + 1
    assert after == done  # not one field changed by the zombie's late writes
    assert len(after["epochs"]) == ZOMBIE_EPOCHS
    assert duplicated_epoch_rows(pg_only_url) == 0
    log = log_text(Path(server.log.name))
    assert re.search(rf"trial {done['id']} ended succeeded, recorded from worker {done['worker_id']}", log)
    assert f"recorded from worker {zombie_id}" not in log
    assert "500" not in logged_statuses(log)
