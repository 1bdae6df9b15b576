"""`gridsweep worker --exit-when-idle SECONDS` and the Slurm script, with a real server and workers.

* The worker waits out a short empty spell, takes the sweep that arrives, and exits 0 once no
  trial has been claimable for SECONDS, holding nothing.
* deploy/slurm/gridsweep-workers.sbatch run by bash as Slurm would (no Slurm here): with only a
  URL and a token file it works the queue and ends when idle; SIGTERM to the batch shell (what
  `--signal=B:TERM@120` sends) reaches the worker through the trap, which gives its trial back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.migrate import upgrade
from tests.conftest import ROOT, Server, cli_env
from tests.robust_helpers import FAST_LEASES, bearer, log_text, make_tokens, spec, sweep, trial_rows, wait_for

pytestmark = pytest.mark.slow

SBATCH = ROOT / "deploy" / "slurm" / "gridsweep-workers.sbatch"
IDLE_SECONDS = 6.0
# One epoch of ~1,000 single-row steps through a 2x2048 MLP: far longer than the test.
LONG_EPOCH = {
    "name": "long-epoch",
    "dataset": "digits",
    "parameters": {"layers": 2, "hidden_units": 2048, "batch_size": 1, "epochs": 1},
}


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{what} did not exit within {timeout}s")


def test_worker_exits_once_idle_for_the_given_seconds(
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'idle.db'}"
    upgrade(db_url)
    server = start_server(db_url, **FAST_LEASES)
    worker = start_worker(server.url, "--exit-when-idle", str(IDLE_SECONDS), "--pack-size", "2")
    wait_for(lambda: server.http.get("/api/v1/workers").json(), 60, "the worker to register")
    time.sleep(IDLE_SECONDS / 3)  # an empty spell shorter than the limit: the worker must stay
    assert worker.poll() is None, "the worker left before the queue had been empty for long enough"
    sid = server.http.post("/api/v1/sweeps", json=spec("idle", 4, epochs=2)).json()["id"]
    done = wait_for(
        lambda: sweep(server.http, sid)["status"] in ("succeeded", "failed") and time.monotonic(),
        120,
        "the sweep",
    )
    code = wait_exit(worker, 60, "the idle worker")
    gone_after = time.monotonic() - done
    log = log_text(tmp_path / "worker-0.log")
    m = re.search(r"no trial to claim for ([\d.]+)s: exiting", log)
    print(f"\nexit-when-idle {IDLE_SECONDS}s: sweep done, worker exited {code} {gone_after:.1f}s later")
    assert code == 0 and m and float(m.group(1)) >= IDLE_SECONDS
    assert sweep(server.http, sid)["status"] == "succeeded"
    trials = trial_rows(db_url, sid)
    assert {t.status for t in trials} == {"succeeded"} and {t.attempt for t in trials} == {1}
    assert all(t.lease_token is None for t in trials)  # it held nothing when it left
    assert gone_after >= IDLE_SECONDS - 1.0  # idle counted from the last empty claim, not from the start


def sbatch_env(tmp_path: Path, server_url: str, token: str, **extra: str) -> dict[str, str]:
    """What a Slurm task would see: `gridsweep` on PATH (this checkout), the URL and a token file."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "gridsweep"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m app.cli "$@"\n')
    exe.chmod(0o755)
    token_file = tmp_path / "worker-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return cli_env(
        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
        GRIDSWEEP_SERVER=server_url,
        GRIDSWEEP_TOKEN_FILE=str(token_file),
        GRIDSWEEP_DEVICE="cpu",
        SLURM_ARRAY_JOB_ID="4242",
        SLURM_ARRAY_TASK_ID="7",
        **extra,
    )


def run_sbatch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", str(SBATCH)], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sbatch_script_works_the_queue_then_ends_and_forwards_sigterm(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'slurm.db'}"
    upgrade(db_url)
    tokens = make_tokens(db_url, adm="admin", w="worker")
    server = start_server(db_url, **FAST_LEASES, auth="on")
    server.http.headers.update(bearer(tokens["adm"]))

    # 1. A small sweep: the task trains it with only the URL and the token, then ends when idle.
    sid = server.http.post("/api/v1/sweeps", json=spec("slurm", 3)).json()["id"]
    env = sbatch_env(tmp_path, server.url, tokens["w"], GRIDSWEEP_EXIT_WHEN_IDLE="2")
    first = run_sbatch(env, tmp_path / "task-1.out")
    assert wait_exit(first, 120, "the array task") == 0
    out = log_text(tmp_path / "task-1.out")
    assert sweep(server.http, sid)["status"] == "succeeded", out
    assert "no trial to claim for" in out and "worker exited with code 0" in out
    names = {w["name"] for w in server.http.get("/api/v1/workers").json()}
    assert names == {"gridsweep-4242_7"}

    # 2. SIGTERM to the batch shell only (Slurm's B:TERM): the trap stops the worker, which
    # hands its trial back at once (no attempt used), and the task exits cleanly.
    sid = server.http.post("/api/v1/sweeps", json=LONG_EPOCH).json()["id"]
    second = run_sbatch({**env, "GRIDSWEEP_EXIT_WHEN_IDLE": "300"}, tmp_path / "task-2.out")
    try:
        claimed = wait_for(
            lambda: next((t for t in trial_rows(db_url, sid) if t.status == "running"), None), 120, "a claim"
        )
        # Signal only once the worker holds the trial (its heartbeat extended the lease), not while
        # the claim's answer is still on its way to a worker slowed down by a loaded machine.
        wait_for(
            lambda: trial_rows(db_url, sid)[0].lease_expires_at > claimed.lease_expires_at, 60, "a heartbeat"
        )
        os.kill(second.pid, signal.SIGTERM)
        t0 = time.monotonic()
        code = wait_exit(second, 60, "the signalled array task")
        stopped = time.monotonic() - t0
    finally:
        if second.poll() is None:
            second.kill()
    out = log_text(tmp_path / "task-2.out")
    trial = trial_rows(db_url, sid)[0]
    print(f"\nsbatch: SIGTERM to the batch shell -> task exited {code} after {stopped:.1f}s")
    assert code == 0, out
    assert "SIGTERM, stopping the worker" in out and "released 1 trials (0 already requeued)" in out
    assert trial.status == "queued" and trial.attempt == 0 and trial.worker_id is None
