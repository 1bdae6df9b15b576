"""A real server and real workers: a sweep trained in packs of 8 equals the same sweep one by one."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.migrate import upgrade
from tests.conftest import Server

SPEC: dict[str, Any] = {
    "name": "packed",
    "dataset": "friedman1",
    "parameters": {
        "layers": [1, 2],
        "hidden_units": [8, 16],
        "activation": ["relu", "tanh"],
        "learning_rate": [0.01, 0.05, 3.0],  # 3.0 diverges
        "optimizer": "sgd",
        "batch_size": 64,
        "epochs": 3,
    },
    "seeds": [0],
}


def run_sweep(
    server: Server, start_worker: Callable[..., Any], pack_size: str, *flags: str
) -> tuple[dict, list[dict]]:
    created = server.http.post("/api/v1/sweeps", json=SPEC)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    worker = start_worker(server.url, "--pack-size", pack_size, "--exit-when-idle", *flags)
    assert worker.wait(timeout=240) == 0
    sweep = server.http.get(f"/api/v1/sweeps/{sid}").json()
    page = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()
    trials = sorted(page["items"], key=lambda t: (t["config_index"], t["seed"]))
    return sweep, trials


@pytest.mark.slow
def test_packed_worker_matches_one_by_one(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any]
) -> None:
    server = start_server(db_url)
    packed, packed_trials = run_sweep(server, start_worker, "8")
    single, single_trials = run_sweep(server, start_worker, "1")
    assert packed["status"] == single["status"] == "succeeded"
    assert len(packed_trials) == len(single_trials) == 24

    # Claims of 8: the trials of one claim share their start time; one by one, no two do.
    starts = [t["started_at"] for t in packed_trials]
    assert [len(set(starts[i : i + 8])) for i in range(0, 24, 8)] == [1, 1, 1]
    assert len({t["started_at"] for t in single_trials}) == 24

    for a, b in zip(packed_trials, single_trials, strict=True):
        assert (a["config_index"], a["status"]) == (b["config_index"], b["status"])
        if a["params"]["learning_rate"] == 3.0:
            assert a["status"] == "diverged" and "loss became" in a["error"]
            continue
        assert a["status"] == "succeeded" and a["epochs_done"] == 3
        # One by one is the engine as packs of one: the same numbers, bit for bit (issue 11).
        for key in ("train_loss", "val_loss"):
            assert a[key] == b[key], key
        # Per-epoch curves were reported (batched) for every trial of the pack.
        ea = server.http.get(f"/api/v1/trials/{a['id']}").json()["epochs"]
        eb = server.http.get(f"/api/v1/trials/{b['id']}").json()["epochs"]
        assert [e["epoch"] for e in ea] == [1, 2, 3]
        for x, y in zip(ea, eb, strict=True):
            assert (x["train_loss"], x["val_loss"]) == (y["train_loss"], y["val_loss"])
    assert packed["best"]["config_index"] == single["best"]["config_index"]
    assert packed["best"]["test"]["test_loss"] == single["best"]["test"]["test_loss"]


def final_trial(server: Server, sid: int) -> dict[str, Any]:
    (final,) = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"role": "final"}).json()["items"]
    return server.http.get(f"/api/v1/trials/{final['id']}").json()


@pytest.mark.slow
def test_a_final_trial_reuses_its_search_training_with_the_numbers_of_a_retrain(
    start_server: Callable[..., Server], start_worker: Callable[..., Any], tmp_path: Any
) -> None:
    """The worker that trained the best config scores that training on the test split instead
    of training it again (worker/recall.py); ``--retrain-final`` trains it: the same numbers.
    A worker's behaviour over HTTP: one store is enough (the store's own tests run on both)."""
    db = f"sqlite:///{tmp_path / 'reuse.db'}"
    upgrade(db)
    server = start_server(db)
    reused, _ = run_sweep(server, start_worker, "8")
    retrained, _ = run_sweep(server, start_worker, "8", "--retrain-final")
    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
    assert "search trial's training reused" in logs[0]
    assert "search trial's training reused" not in logs[1]
    a, b = final_trial(server, reused["id"]), final_trial(server, retrained["id"])
    assert a["status"] == b["status"] == "succeeded"
    search = server.http.get(f"/api/v1/trials/{reused['best']['trial_id']}").json()
    assert a["params"] == b["params"] == search["params"]
    curve = ("epoch", "train_loss", "val_loss")

    def points(trial: dict[str, Any]) -> list[list[Any]]:
        return [[e[k] for k in curve] for e in trial["epochs"]]

    assert points(a) == points(b) == points(search)  # the final's curve is its search trial's
    assert reused["best"]["test"] == retrained["best"]["test"] and reused["best"]["test"]
    keys = [k for k in a if k.startswith(("train_", "val_", "test_"))] + ["best_epoch"]
    assert a["test_loss"] is not None and a["best_epoch"] is not None
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


LONG: dict[str, Any] = {
    "name": "long",
    "dataset": "friedman1",
    "parameters": {
        "layers": 2,
        "hidden_units": 32,
        "learning_rate": [0.001 * (i + 1) for i in range(12)],
        "optimizer": "adam",
        "batch_size": 64,
        "epochs": 2000,
    },
    "seeds": [0],
}


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def epochs_done(server: Server, sid: int) -> list[int]:
    page = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()
    return [t["epochs_done"] for t in page["items"]]


@pytest.mark.slow
def test_cancel_and_stop_reach_a_training_pack(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any]
) -> None:
    server = start_server(db_url, heartbeat_seconds="1", lease_seconds="3")
    # Cancel: every trial of the pack stops at its next epoch and ends canceled.
    sid = server.http.post("/api/v1/sweeps", json=LONG).json()["id"]
    worker = start_worker(server.url, "--pack-size", "16", "--exit-when-idle")
    wait_for(lambda: min(epochs_done(server, sid)) >= 2)
    assert server.http.post(f"/api/v1/sweeps/{sid}/cancel").status_code == 200
    assert worker.wait(timeout=60) == 0
    page = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()
    assert {t["status"] for t in page["items"]} == {"canceled"}
    assert all(2 <= t["epochs_done"] < 2000 for t in page["items"])
    assert server.http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "canceled"

    # SIGTERM: the worker ends its epoch and gives the whole pack back to the queue at once.
    sid = server.http.post("/api/v1/sweeps", json=LONG).json()["id"]
    worker = start_worker(server.url, "--pack-size", "16")
    wait_for(lambda: min(epochs_done(server, sid)) >= 1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    page = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()
    assert [(t["status"], t["attempt"]) for t in page["items"]] == [("queued", 0)] * 12


OOM_SPEC: dict[str, Any] = {
    "name": "oom",
    "dataset": "friedman1",
    "parameters": {"hidden_units": [8, 16], "learning_rate": [0.01, 0.02], "epochs": 2, "batch_size": 128},
}


@pytest.mark.slow
def test_a_trial_too_big_for_the_device_is_handed_back_then_fails_with_its_reason(
    db_url: str, start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory even alone in a pack: the trial goes back to be retried (as one by one),
    and fails after its attempts with the reason; the rest of the pack and the sweep go on.
    A real server; the worker runs in this process so that the device can be made small."""
    import torch

    import worker.fused_packs as fused_packs
    from worker.loop import Worker

    server = start_server(db_url, max_attempts="2")
    created = server.http.post("/api/v1/sweeps", json=OOM_SPEC)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    real, seen = fused_packs.train_pack, []

    def small_device(cfgs: list, *args: Any, **kw: Any) -> list:
        seen.append(len(cfgs))
        if any(c.hidden_units == (16,) and c.learning_rate == 0.02 for c in cfgs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(cfgs, *args, **kw)

    monkeypatch.setattr(fused_packs, "train_pack", small_device)
    before = torch.get_num_threads()
    try:
        w = Worker(server.url, device="cpu", pack_size=4, threads=1, exit_when=lambda: True, poll_seconds=0.1)
        w.run()
    finally:
        torch.set_num_threads(before)
    trials = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 50}).json()["items"]
    big = [t for t in trials if t["params"]["hidden_units"] == 16 and t["params"]["learning_rate"] == 0.02]
    (big_trial,) = big
    assert big_trial["status"] == "failed" and big_trial["attempt"] == 2
    assert big_trial["error"] == "out of memory on attempt 2 of 2: out of memory: CUDA out of memory. " + (
        "Tried to allocate 9.00 GiB"
    )
    others = [t for t in trials if t is not big_trial and t["role"] == "search"]
    assert [t["status"] for t in others] == ["succeeded"] * 3
    # The pack of 4, its halves, the lone trial; then the trial alone once more (attempt 2).
    assert seen[:4] == [4, 2, 2, 1] and seen[-1] == 1
    sweep = server.http.get(f"/api/v1/sweeps/{sid}").json()
    assert sweep["status"] == "succeeded" and sweep["best"]["test"]
    assert w.held.as_refs() == []  # nothing left held (no heartbeat for a trial given back)
