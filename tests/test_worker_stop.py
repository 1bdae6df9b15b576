"""SIGTERM on a worker in the middle of a long epoch: it stops within a step or so, gives the
trial back without using an attempt, and exits cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.db import Database
from app.migrate import upgrade
from app.models import TrialEpoch
from tests.conftest import Server
from tests.robust_helpers import FAST_LEASES, log_text, trial_rows, wait_for

pytestmark = pytest.mark.slow


def test_sigterm_mid_epoch_releases_at_once(
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'stop.db'}"
    upgrade(db_url)
    # A lease far longer than the test: the release, not the reaper, must requeue the trial
    # (a busy 2-core machine can delay heartbeats past a short lease).
    server = start_server(db_url, **{**FAST_LEASES, "lease_seconds": "30"})
    # One epoch of ~1,000 single-row steps through a 2x2048 MLP: a minute or more on a CPU
    # core, far longer than the worker may take to stop.
    long_epoch = {
        "name": "long-epoch",
        "dataset": "digits",
        "parameters": {"layers": 2, "hidden_units": 2048, "batch_size": 1, "epochs": 1},
    }
    sid = server.http.post("/api/v1/sweeps", json=long_epoch).json()["id"]
    worker = start_worker(server.url)
    running = wait_for(
        lambda: (t := trial_rows(db_url, sid)) and t[0].status == "running" and t[0], 120, "a claim"
    )
    time.sleep(2.0)  # well inside the first epoch
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker did not stop within 30s of SIGTERM (it waited for the epoch to end?)")
    exited = time.monotonic() - t0
    trial = trial_rows(db_url, sid)[0]
    db = Database(db_url)
    with db.session(readonly=True) as s:
        epoch_rows = s.query(TrialEpoch).count()
    db.dispose()
    log = log_text(tmp_path / "worker-0.log")
    print(
        f"\nSIGTERM mid-epoch: worker exited {code} after {exited:.1f}s; trial {trial.status}, "
        f"attempt {running.attempt} -> {trial.attempt}, epoch rows {epoch_rows}"
    )
    assert code == 0
    assert "released 1 trials (0 already requeued)" in log
    assert trial.status == "queued" and trial.attempt == 0 and trial.worker_id is None  # no attempt used
    assert trial.lease_token is None and epoch_rows == 0
    # Given back, not stuck: the next worker takes it (and is stopped the same way).
    again = start_worker(server.url)
    wait_for(lambda: trial_rows(db_url, sid)[0].status == "running", 120, "the trial to be claimed again")
    again.send_signal(signal.SIGINT)  # Ctrl-C behaves the same
    assert again.wait(timeout=30) == 0
    assert trial_rows(db_url, sid)[0].status == "queued"
