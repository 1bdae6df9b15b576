"""Issue 13, the API side: the metric a sweep ranks by, the epoch each trial is scored at, early
stopping, on SQLite and PostgreSQL.

The first tests play the worker over the protocol (fast); the last ones run real workers on a
tiny regression sweep (``slow``): one scale across losses, RMSE in target units that numpy
reproduces from the downloaded model, early stopping, the model of the best epoch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from tests.conftest import Server

# --------------------------------------------------------------------------- the protocol, played


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


def claim(c: TestClient, wid: str, n: int = 1) -> list[dict[str, Any]]:
    return c.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": n}).json()["trials"]


def complete(c: TestClient, wid: str, t: dict[str, Any], **fields: Any) -> None:
    outcome = {"trial_id": t["trial_id"], "lease_token": t["lease_token"], "status": "succeeded", **fields}
    r = c.post(f"/api/v1/workers/{wid}/complete", json={"outcomes": [outcome]})
    assert r.json()["states"] == {str(t["trial_id"]): "ok"}, r.text


def errors_of(c: TestClient, spec: dict[str, Any]) -> dict[str, str]:
    r = c.post("/api/v1/sweeps", json=spec)
    assert r.status_code == 422, r.text
    return {".".join(str(p) for p in e["loc"][1:]): e["msg"] for e in r.json()["detail"]}


def test_bad_metric_and_epoch_rules_are_422s_with_their_path(client: TestClient) -> None:
    reg = {"name": "r", "dataset": "friedman1", "parameters": {"loss": ["mse", "huber"], "epochs": 2}}
    errs = errors_of(client, {**reg, "metric": "val_loss"})
    assert "different scales" in errs["metric.name"] and "val_rmse" in errs["metric.name"]
    assert "select_epoch" in errors_of(client, {**reg, "select_epoch": "worst"})
    assert (
        "must be at least 1"
        in errors_of(client, {**reg, "early_stopping": {"patience": 0}})["early_stopping.patience"]
    )
    neg = {**reg, "early_stopping": {"patience": 2, "min_delta": -0.5}}
    assert "must be at least 0" in errors_of(client, neg)["early_stopping.min_delta"]
    errs = errors_of(client, {**reg, "metric": "val_error", "early_stopping": {"patience": 2}})
    assert "val_error does not exist" in errs["early_stopping"] and "regression" in errs["metric.name"]


def test_defaults_the_claims_and_the_score_of_the_selected_epoch(client: TestClient) -> None:
    spec = {
        "name": "m",
        "dataset": "moons",
        "parameters": {"hidden_units": [4, 8, 16], "epochs": 6},
        "seeds": [0, 1],
        "refit": True,
        "early_stopping": {"patience": 2, "min_delta": 0.01},
    }
    sid = client.post("/api/v1/sweeps", json=spec).json()["id"]
    sweep = client.get(f"/api/v1/sweeps/{sid}").json()
    m = sweep["metric"]
    assert (m["name"], m["goal"], m["tie_break"], m["select_epoch"]) == (
        "val_error",
        "minimize",
        "val_log_loss",
        "best",
    )
    assert m["units"] == "fraction" and m["early_stopping"] == {"patience": 2, "min_delta": 0.01}
    assert sweep["spec"]["metric"]["name"] == "val_error"  # the stored spec names the default
    wid = client.post("/api/v1/workers", json={"name": "w"}).json()["id"]
    # config 0 and 2 tie on val_error; config 2 has the lower val_log_loss and wins; config 1
    # is worse. Each seed is scored at its best epoch (the outcome's numbers are that epoch's).
    scores = {0: (0.125, 0.5), 1: (0.25, 0.25), 2: (0.125, 0.375)}
    best_epochs = {(2, 0): 3, (2, 1): 5}
    for _ in range(6):
        [t] = claim(client, wid)
        assert (t["metric"], t["goal"], t["select_epoch"]) == ("val_error", "minimize", "best")
        assert t["early_stopping"] == {"patience": 2, "min_delta": 0.01}
        ci = next(i for i, h in enumerate((4, 8, 16)) if t["params"]["hidden_units"] == h)
        err, ll = scores[ci]
        best = best_epochs.get((ci, t["seed"]), 2)
        for epoch in range(1, 5):  # the last epochs are worse: early stopping ends it at 4
            r = client.post(
                f"/api/v1/workers/{wid}/epochs",
                json={
                    "reports": [
                        {
                            "trial_id": t["trial_id"],
                            "lease_token": t["lease_token"],
                            "epoch": epoch,
                            "val_loss": 1.0,
                            "val_error": err if epoch == best else err + 0.5,
                            "val_log_loss": ll,
                        }
                    ]
                },
            )
            assert r.status_code == 200, r.text
        complete(
            client,
            wid,
            t,
            metrics={"val_loss": 1.0, "val_error": err, "val_log_loss": ll, "val_accuracy": 1 - err},
            epochs_done=4,
            best_epoch=best,
            stopped_epoch=4,
        )
    best = client.get(f"/api/v1/sweeps/{sid}/best").json()
    assert best["config_index"] == 2 and best["validation"]["mean"] == 0.125
    assert best["metric"]["units"] == "fraction"
    assert [s["best_epoch"] for s in best["validation"]["per_seed"]] == [3, 5]
    assert [s["stopped_epoch"] for s in best["validation"]["per_seed"]] == [4, 4]
    board = client.get(f"/api/v1/sweeps/{sid}/leaderboard").json()
    assert [e["config_index"] for e in board] == [2, 0, 1]
    trial = client.get(f"/api/v1/trials/{best['trial_id']}").json()
    assert (trial["best_epoch"], trial["stopped_epoch"], trial["val_error"]) == (3, 4, 0.125)
    assert [e["val_error"] for e in trial["epochs"]] == [0.625, 0.625, 0.125, 0.625]
    # The learning curves draw the sweep's metric; the trial page marks the best epoch and the stop.
    curves = client.get(f"/api/v1/sweeps/{sid}/curves").json()
    assert curves["metric"] == "val_error" and curves["units"] == "error, fraction"
    top = next(c for c in curves["trials"] if c["trial_id"] == best["trial_id"])
    assert top["values"] == [0.625, 0.625, 0.125, 0.625]
    assert (top["best_epoch"], top["stopped_epoch"]) == (3, 4)
    summary = client.get(f"/sweeps/{sid}").text
    assert "error, fraction, minimize, ties broken by val_log_loss; each trial at its best epoch" in summary
    page = client.get(f"/trials/{best['trial_id']}").text
    assert 'data-testid="trial-best-epoch" data-value="3"' in page
    assert 'data-testid="trial-stopped-epoch" data-value="4"' in page
    # Final retrains keep the rule; a refit (no validation split) trains the median best epoch
    # count of the config's seeds (3 and 5: the higher middle, 5) and never stops early.
    finals = claim(client, wid, 4) + claim(client, wid, 4)  # finals, then refits (their own pack)
    roles = {(t["role"], t["seed"]): t for t in finals}
    assert roles["final", 0]["early_stopping"] == {"patience": 2, "min_delta": 0.01}
    assert roles["final", 0]["params"]["epochs"] == 6
    assert roles["refit", 0]["early_stopping"] is None and roles["refit", 0]["params"]["epochs"] == 5
    assert roles["refit", 1]["params"]["epochs"] == 5


def test_regression_ranks_by_rmse_and_select_epoch_last_is_passed_on(client: TestClient) -> None:
    spec = {
        "name": "r",
        "dataset": "friedman1",
        "parameters": {"loss": ["mse", "huber"], "epochs": 3},
        "select_epoch": "last",
    }
    sid = client.post("/api/v1/sweeps", json=spec).json()["id"]
    wid = client.post("/api/v1/workers", json={"name": "w"}).json()["id"]
    # huber's own loss is about half of mse's; the RMSE (target units) says mse is better.
    for t in claim(client, wid) + claim(client, wid):  # a pack per loss
        assert (t["metric"], t["goal"], t["select_epoch"], t["early_stopping"]) == (
            "val_rmse",
            "minimize",
            "last",
            None,
        )
        mse = t["params"]["loss"] == "mse"
        metrics = {"val_loss": 0.2 if mse else 0.1, "val_rmse": 2.0 if mse else 2.5, "val_r2": 0.8}
        complete(client, wid, t, metrics=metrics, epochs_done=3, best_epoch=3)
    best = client.get(f"/api/v1/sweeps/{sid}/best").json()
    assert best["params"]["loss"] == "mse" and best["validation"]["mean"] == 2.0
    assert (best["metric"]["name"], best["metric"]["units"]) == ("val_rmse", "target units")


# --------------------------------------------------------------------------- real workers

ROOT = Path(__file__).resolve().parents[1]


def regression_example() -> dict[str, Any]:
    """examples/regression.yaml (loss: [mse, huber], ranked by val_rmse), made tiny: one width,
    two learning rates, one seed, 15 epochs, patience 2."""
    spec = yaml.safe_load((ROOT / "examples" / "regression.yaml").read_text())
    assert spec["parameters"]["loss"] == ["mse", "huber"] and spec["metric"]["name"] == "val_rmse"
    spec["parameters"] = {
        **spec["parameters"],
        "layers": 1,
        "hidden_units": 16,
        "activation": "relu",
        "learning_rate": [0.01, 0.05],
        "epochs": 15,
    }
    return {**spec, "seeds": [0], "early_stopping": {"patience": 2, "min_delta": 0.0}}


def _wait(http: Any, sid: int, tmp_path: Path) -> dict[str, Any]:
    from tests.test_e2e import wait_ended

    return wait_ended(http, sid, tmp_path)


@pytest.mark.slow
def test_a_regression_sweep_ranks_on_one_scale_and_keeps_the_best_epoch(
    server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from gridsweep.datasets import load_builtin
    from worker.model_io import load_model

    http = server.http
    proc = start_worker(server.url, "--pack-size", "1")
    r = http.post("/api/v1/sweeps", json=regression_example())
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    s = _wait(http, sid, tmp_path)
    proc.terminate()
    assert s["status"] == "succeeded", s
    assert s["metric"]["name"] == "val_rmse"
    trials = http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 50}).json()["items"]
    # One scale across losses: matched mse and huber configs are within a factor 1.4 on the
    # metric, while each trial's own loss is not the same measure.
    by = {(t["params"]["learning_rate"], t["params"]["loss"]): t for t in trials}
    for lr in (0.01, 0.05):
        a, b = by[lr, "mse"]["val_rmse"], by[lr, "huber"]["val_rmse"]
        assert max(a, b) / min(a, b) < 1.4, (lr, a, b)
    # Each trial's score is its best epoch's value, and early stopping ended some before 15.
    summary = [(t["params"], t["best_epoch"], t["stopped_epoch"], t["val_rmse"]) for t in trials]
    assert any(t["stopped_epoch"] is not None for t in trials), summary
    for t in trials:
        detail = http.get(f"/api/v1/trials/{t['id']}").json()
        curve = [e["val_rmse"] for e in detail["epochs"]]
        assert t["best_epoch"] == 1 + int(np.argmin(curve))
        assert t["val_rmse"] == pytest.approx(min(curve), rel=1e-12)
        if t["stopped_epoch"] is not None:
            assert t["stopped_epoch"] == t["epochs_done"] == len(curve) < 15
            assert t["stopped_epoch"] - t["best_epoch"] == 2  # patience 2
    # The kept model is the best epoch's: numpy's RMSE of its predictions on the validation rows
    # (target units) is the trial's val_rmse.
    best = http.get(f"/api/v1/sweeps/{sid}/best").json()
    finals = http.get(f"/api/v1/sweeps/{sid}/trials", params={"role": "final"}).json()["items"]
    final = finals[0]
    assert final["status"] == "succeeded" and final["best_epoch"] is not None
    curve = http.get(f"/api/v1/trials/{final['id']}").json()["epochs"]
    kept = curve[final["best_epoch"] - 1]
    assert {k: final[k] for k in ("val_rmse", "val_mae", "val_r2")} == {
        k: kept[k] for k in ("val_rmse", "val_mae", "val_r2")
    }
    model = http.get(f"/api/v1/sweeps/{sid}/model")
    assert model.status_code == 200, model.text
    loaded = load_model(model.content)
    ds = load_builtin("friedman1")
    n = ds.n_rows
    perm = np.random.default_rng(0).permutation(n)
    n_test, n_val = round(n * 0.2), round(n * 0.2)
    val_idx = perm[n_test : n_test + n_val]
    pred = np.asarray(loaded.predict(ds.X[val_idx]), dtype=np.float64)
    y = ds.y[val_idx].astype(np.float64)
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    mae = float(np.mean(np.abs(pred - y)))
    assert rmse == pytest.approx(final["val_rmse"], abs=1e-5)
    assert mae == pytest.approx(final["val_mae"], abs=1e-5)
    assert best["config_index"] == final["config_index"]
