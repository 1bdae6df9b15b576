"""Whole sweeps through a real uvicorn server and real worker processes, on both backends."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import Database
from app.models import Trial
from tests.conftest import Server

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "canceled")


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))


def wait_until(what: str, check: Callable[[], Any], tmp_path: Path, timeout: float = 240) -> Any:
    """Poll ``check`` until it returns something truthy (a guard against hanging, not a timing test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{logs(tmp_path)}")


def sweep(http: httpx.Client, sid: int) -> dict[str, Any]:
    r = http.get(f"/api/v1/sweeps/{sid}")
    r.raise_for_status()
    return r.json()


def wait_ended(http: httpx.Client, sid: int, tmp_path: Path) -> dict[str, Any]:
    return wait_until(
        f"sweep {sid} to end", lambda: (s := sweep(http, sid))["status"] in TERMINAL and s, tmp_path
    )


def trials(http: httpx.Client, sid: int, **params: Any) -> list[dict[str, Any]]:
    r = http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500, **params})
    r.raise_for_status()
    return r.json()["items"]


def submit(http: httpx.Client, spec: dict[str, Any]) -> int:
    r = http.post("/api/v1/sweeps", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def start_workers(
    n: int, server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes, all registered before any sweep is queued (so each gets work).

    They train one trial at a time (``--pack-size 1``, packs of one): a fused pack of more would
    let one worker claim the whole small grid. Packs have their own end-to-end test (test_fused).
    """
    procs = [start_worker(server.url, "--pack-size", "1") for _ in range(n)]
    wait_until(
        f"{n} workers to register", lambda: len(server.http.get("/api/v1/workers").json()) == n, tmp_path
    )
    return procs


def test_a_full_sweep_with_two_workers(
    server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    http = server.http
    procs = start_workers(2, server, start_worker, tmp_path)
    spec = {
        "name": "e2e",
        "dataset": "moons",
        "metric": {"name": "val_accuracy"},
        "parameters": {"hidden_units": [8, 16], "learning_rate": 0.05, "epochs": 3, "batch_size": 32},
        "seeds": [0, 1],
    }
    sid = submit(http, spec)
    s = wait_ended(http, sid, tmp_path)

    assert s["status"] == "succeeded", logs(tmp_path)
    assert s["n_trials"] == 4 and s["counts"]["succeeded"] == 4 and s["progress"] == 1.0
    search = trials(http, sid)
    assert len(search) == 4 and {t["status"] for t in search} == {"succeeded"}
    for t in search:
        detail = http.get(f"/api/v1/trials/{t['id']}").json()
        assert [e["epoch"] for e in detail["epochs"]] == [1, 2, 3] and detail["epochs_done"] == 3
        assert detail["epochs"][-1]["val_accuracy"] == t["val_accuracy"] and t["val_accuracy"] > 0.5
        assert all(e["train_loss"] is not None and e["val_loss"] is not None for e in detail["epochs"])
        assert t["device"] == "cpu" and t["duration_seconds"] > 0

    best = http.get(f"/api/v1/sweeps/{sid}/best").json()
    board = http.get(f"/api/v1/sweeps/{sid}/leaderboard").json()
    assert best["config_index"] == board[0]["config_index"] and best["validation"]["mean"] == board[0]["mean"]
    assert best["validation"]["mean"] == max(e["mean"] for e in board) and best["n_seeds"] == 2
    assert set(best["test"]) == {"test_loss", "test_error", "test_accuracy", "test_log_loss"}
    assert best["test"]["test_accuracy"] == pytest.approx(1 - best["test"]["test_error"])
    assert sorted(p["seed"] for p in best["test_per_seed"]) == [0, 1]
    finals = trials(http, sid, role="final")
    assert [(t["seed"], t["status"], t["config_index"]) for t in finals] == [
        (0, "succeeded", best["config_index"]),
        (1, "succeeded", best["config_index"]),
    ]

    workers = {w["id"] for w in http.get("/api/v1/workers").json()}
    did_work = {t["worker_id"] for t in search + finals}
    print(f"\ntrials per worker: {[sum(t['worker_id'] == w for t in search + finals) for w in workers]}")
    assert did_work == workers and len(workers) == 2
    assert all(p.poll() is None for p in procs)  # workers keep serving


def test_diverged_and_failed_trials_do_not_stop_workers_or_sweeps(
    db_url: str, server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    http = server.http
    base = {"dataset": "moons", "parameters": {"epochs": 2, "learning_rate": [0.1, 1e6], "optimizer": "sgd"}}
    diverging = submit(http, {**base, "name": "diverging"})  # plain SGD at 1e6 blows up in epoch 1
    skewed = submit(http, {**base, "name": "skewed", "parameters": {"epochs": 2, "hidden_units": [4, 8, 16]}})
    # Stored trials this worker cannot build (as if queued by a newer API with a new activation):
    # training raises, the trial fails with the message, the rest of the sweep goes on. In
    # "hopeless" every trial is such a trial, so nothing succeeds.
    hopeless = submit(http, {**base, "name": "hopeless"})
    db = Database(db_url)
    with db.session() as s:
        for t in [s.get(Trial, trials(http, skewed)[1]["id"])] + [
            s.get(Trial, x["id"]) for x in trials(http, hopeless)
        ]:
            t.params = {**t.params, "activation": "swish"}
    db.dispose()
    procs = start_workers(1, server, start_worker, tmp_path)

    s = wait_ended(http, diverging, tmp_path)
    assert s["status"] == "succeeded" and s["counts"]["diverged"] == 1 and s["counts"]["succeeded"] == 1
    ok, bad = trials(http, diverging, sort="metric")  # the diverged trial ranks last
    assert (ok["status"], bad["status"]) == ("succeeded", "diverged")
    assert bad["params"]["learning_rate"] == 1e6 and "loss became nan in epoch 1" in bad["error"]
    assert bad["val_loss"] is None
    board = http.get(f"/api/v1/sweeps/{diverging}/leaderboard").json()
    assert [e["params"]["learning_rate"] for e in board] == [0.1]
    assert http.get(f"/api/v1/sweeps/{diverging}/best").json()["test"]["test_loss"] > 0

    s = wait_ended(http, skewed, tmp_path)
    assert s["status"] == "succeeded" and s["counts"]["failed"] == 1 and s["counts"]["succeeded"] == 2
    (failed,) = trials(http, skewed, status="failed")
    assert failed["params"]["activation"] == "swish" and "unknown activation 'swish'" in failed["error"]
    assert http.get(f"/api/v1/sweeps/{skewed}/best").json()["config_index"] != failed["config_index"]

    s = wait_ended(http, hopeless, tmp_path)
    assert (s["status"], s["error"], s["best"]) == ("failed", "no trial succeeded", None)
    assert {t["status"] for t in trials(http, hopeless)} == {"failed"}
    assert all("unknown activation 'swish'" in t["error"] for t in trials(http, hopeless))
    assert http.get(f"/api/v1/sweeps/{hopeless}/best").status_code == 404

    assert all(p.poll() is None for p in procs)  # neither kind of failure stopped a worker


def test_cancel_stops_running_trials_at_their_next_epoch(
    server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    http = server.http
    procs = start_workers(1, server, start_worker, tmp_path)
    epochs = 200  # long enough that nothing finishes before the cancel
    spec = {
        "name": "long",
        "dataset": "moons",
        "parameters": {"learning_rate": [0.001, 0.002, 0.003, 0.004], "epochs": epochs, "batch_size": 8},
    }
    sid = submit(http, spec)

    def training() -> bool:
        return any(t["epochs_done"] >= 1 for t in trials(http, sid, status="running"))

    wait_until("a trial to be training", training, tmp_path)
    r = http.post(f"/api/v1/sweeps/{sid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    wait_until("running trials to stop", lambda: not trials(http, sid, status="running"), tmp_path)

    s = sweep(http, sid)
    assert s["status"] == "canceled" and s["counts"]["canceled"] == 4 and s["best"] is None
    ts = trials(http, sid)
    stopped = [t for t in ts if t["epochs_done"] > 0]
    assert len(stopped) == 1 and {t["error"] for t in ts if t["epochs_done"] == 0} == {"sweep canceled"}
    for t in stopped:  # stopped mid-run, its curve kept up to where it stopped
        detail = http.get(f"/api/v1/trials/{t['id']}").json()
        assert 1 <= detail["epochs_done"] < epochs and len(detail["epochs"]) == detail["epochs_done"]
    assert trials(http, sid, role="final") == []
    assert all(p.poll() is None for p in procs)
