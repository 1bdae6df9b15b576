"""End to end through a real server and worker, on SQLite and PostgreSQL: a sweep on an uploaded
CSV with refit; the downloaded models reproduce the recorded test metrics in a fresh process;
a rerun (and a final trial, trained alone) reproduces the search trial's losses exactly on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from app.cli.main import main
from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

SPLIT = {"validation": 0.25, "test": 0.25, "seed": 3}

# Run in a fresh interpreter: load a downloaded model and score the test split, which is the
# first round(n * test) rows of default_rng(split seed).permutation(n) (gridsweep.datasets.split_dataset).
FRESH = """
import json, sys
import numpy as np, pandas as pd, torch
from app.tabular import Encoding, encode_frame
from worker.model_io import load_model
from worker.train import compute_loss

csv, seed, test = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
df = pd.read_csv(csv)
n = len(df)
idx = np.random.default_rng(seed).permutation(n)[: round(n * test)]
out = []
for path in sys.argv[4:]:
    m = load_model(path)
    X = encode_frame(df, Encoding.from_dict(m.meta["encoding"]))
    labels = df[m.meta["target"]].to_numpy()[idx]
    y = torch.tensor([m.classes.index(v) for v in labels])
    loss = float(compute_loss(m.outputs(X[idx]), y, m.info["config"]["loss"]))
    acc = float(np.mean(np.array(m.predict(X[idx]), dtype=object) == labels))
    out.append({"test_loss": loss, "test_accuracy": acc, "test_error": 1.0 - acc})
print(json.dumps(out))
"""


def cli(*args: str) -> Result:
    """The gridsweep CLI in this process (it talks HTTP to the server like any client)."""
    return CliRunner().invoke(main, list(args))


def wait_until(fn: Any, what: str, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := fn()) is not None:
            return value
        time.sleep(0.3)
    raise AssertionError(f"gave up waiting for {what}")


def make_csv(path: Path, n: int = 120) -> None:
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "blue"], size=n)
    shift = np.where(color == "red", 0.8, -0.8)
    label = np.where(x1 - x2 + shift + 0.3 * rng.normal(size=n) > 0, "pos", "neg")
    pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label}).to_csv(path, index=False)


def test_uploaded_csv_sweep_models_and_rerun(
    db_url: str, start_server: Any, start_worker: Any, tmp_path: Path
) -> None:
    srv = start_server(db_url, heartbeat_seconds="1", reaper_interval_seconds="1")
    http = srv.http
    csv = tmp_path / "blobs.csv"
    make_csv(csv)

    bad = cli("dataset", "upload", str(csv), "--target", "label", "--server", srv.url)
    assert bad.exit_code == 2 and "column 'color' is not numeric" in bad.output
    r = cli("dataset", "upload", str(csv), "--target", "label", "--categorical", "color", "--server", srv.url)
    assert r.exit_code == 0, r.output
    ds_id = int(r.stdout.strip())
    assert "task inferred" in r.stderr and "not numeric" in r.stderr
    ds = http.get(f"/api/v1/datasets/{ds_id}").json()
    listed = cli("dataset", "list", "--server", srv.url)
    assert listed.exit_code == 0 and "blobs" in listed.stdout

    spec = {
        "name": "e2e-upload",
        "dataset": "blobs",
        "parameters": {"hidden_units": [4, 8], "learning_rate": [0.01, 0.05], "epochs": 3, "batch_size": 16},
        "seeds": [0, 1],
        "split": SPLIT,
        "refit": True,
    }
    created = http.post("/api/v1/sweeps", json=spec)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    cache = tmp_path / "cache"
    start_worker(srv.url, GRIDSWEEP_DATA_CACHE_DIR=str(cache))

    def finished() -> dict[str, Any] | None:
        s = http.get(f"/api/v1/sweeps/{sid}").json()
        return s if s["status"] in ("succeeded", "failed", "canceled") else None

    sweep = wait_until(finished, "the sweep to end")
    assert sweep["status"] == "succeeded", sweep
    assert sweep["error"] is None
    best = sweep["best"]
    assert set(best["test"]) == {"test_loss", "test_error", "test_accuracy", "test_log_loss"}
    assert set(best["refit_test"]) == {"test_loss", "test_error", "test_accuracy", "test_log_loss"}
    assert [s["seed"] for s in best["test_per_seed"]] == [0, 1] == [s["seed"] for s in best["refit_per_seed"]]

    # Test numbers exist only for the final and refit trials; every trial records how to rerun it.
    trials = {
        role: http.get(f"/api/v1/sweeps/{sid}/trials", params={"role": role, "limit": 100}).json()["items"]
        for role in ("search", "final", "refit")
    }
    assert len(trials["search"]) == 8 and len(trials["final"]) == 2 and len(trials["refit"]) == 2
    for t in trials["search"]:
        assert t["test_loss"] is None and t["test_error"] is None and t["test_accuracy"] is None
    for t in trials["final"] + trials["refit"]:
        assert t["test_loss"] is not None and t["config_index"] == best["config_index"]
    # A final trial is its search trial trained again, alone (the worker's one-by-one path), while
    # the search trial trained in a pack: the same numbers, bit for bit.
    for t in trials["final"]:
        point = (t["config_index"], t["seed"])
        twin = next(s for s in trials["search"] if (s["config_index"], s["seed"]) == point)
        assert (t["val_loss"], t["train_loss"], t["val_error"]) == (
            twin["val_loss"],
            twin["train_loss"],
            twin["val_error"],
        )
    for t in [t for ts in trials.values() for t in ts]:
        assert t["data_hash"] == ds["data_hash"] and t["split"] == SPLIT and t["device"] == "cpu"
        assert t["versions"]["torch"] == torch.__version__ and t["versions"]["gridsweep"]
    # The worker fetched the data once over HTTP and cached it by hash on disk.
    log = (tmp_path / "server-0.log").read_text()
    assert log.count(f"GET /api/v1/datasets/{ds_id}/data") == 1
    assert (cache / f"{ds['data_hash']}.npz").exists()

    # Models: best = the final trial of the first seed; refit = the refit trial of the first seed.
    models = {(m["kind"], m["format"]): m for m in http.get(f"/api/v1/sweeps/{sid}/models").json()}
    assert set(models) == {(k, f) for k in ("best", "refit") for f in ("state_dict", "torchscript")}
    final0 = next(t for t in trials["final"] if t["seed"] == 0)
    refit0 = next(t for t in trials["refit"] if t["seed"] == 0)
    assert models["best", "state_dict"]["trial_id"] == final0["id"]
    assert models["refit", "torchscript"]["trial_id"] == refit0["id"]

    # Downloaded with the CLI, loaded in a fresh process: the recorded test metrics to 1e-6.
    cases = [("best", "state_dict", final0), ("best", "torchscript", final0), ("refit", "state_dict", refit0)]
    paths = []
    for kind, fmt, _ in cases:
        paths.append(str(tmp_path / f"{kind}-{fmt}.pt"))
        r = cli(
            "model",
            "download",
            str(sid),
            "-o",
            paths[-1],
            "--kind",
            kind,
            "--format",
            fmt,
            "--server",
            srv.url,
        )
        assert r.exit_code == 0, r.output
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH, str(csv), str(SPLIT["seed"]), str(SPLIT["test"]), *paths],
        env=cli_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert fresh.returncode == 0, fresh.stderr
    for (kind, fmt, trial), got in zip(cases, json.loads(fresh.stdout), strict=True):
        for k in ("test_loss", "test_accuracy", "test_error"):
            assert got[k] == pytest.approx(trial[k], abs=1e-6), (kind, fmt, k)

    # `gridsweep predict` writes labels: their accuracy on the test rows is the recorded one.
    out_csv = tmp_path / "pred.csv"
    r = cli("predict", str(tmp_path / "best-state_dict.pt"), str(csv), "-o", str(out_csv))
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out_csv)
    idx = np.random.default_rng(SPLIT["seed"]).permutation(len(pred))[: round(len(pred) * SPLIT["test"])]
    acc = float((pred["prediction"].to_numpy()[idx] == pred["label"].to_numpy()[idx]).mean())
    assert acc == pytest.approx(final0["test_accuracy"], abs=1e-6)
    assert np.allclose(pred["p_neg"] + pred["p_pos"], 1.0)
    no_color = tmp_path / "no-color.csv"
    pd.read_csv(csv).drop(columns=["color"]).to_csv(no_color, index=False)
    r = cli("predict", str(tmp_path / "best-torchscript.pt"), str(no_color))
    assert r.exit_code == 2 and "['color']" in r.output
    r = http.get(f"/api/v1/sweeps/{sid}/model", params={"kind": "refit", "format": "nope"})
    assert r.status_code == 422

    # A rerun of the best search trial: a new trial, not counted or ranked, the same val loss exactly.
    source = next(t for t in trials["search"] if t["id"] == best["trial_id"])
    r = cli("rerun", str(source["id"]), "--server", srv.url)
    assert r.exit_code == 0, r.output
    rerun_id = int(r.stdout.strip())

    def rerun_done() -> dict[str, Any] | None:
        t = http.get(f"/api/v1/trials/{rerun_id}").json()
        return t if t["status"] not in ("queued", "running") else None

    again = wait_until(rerun_done, "the rerun")
    assert again["status"] == "succeeded" and again["role"] == "rerun" and again["rerun_of"] == source["id"]
    assert (again["seed"], again["params"], again["split"]) == (
        source["seed"],
        source["params"],
        source["split"],
    )
    assert again["val_loss"] == source["val_loss"] and again["train_loss"] == source["train_loss"]
    assert again["data_hash"] == source["data_hash"] and again["test_loss"] is None
    after = http.get(f"/api/v1/sweeps/{sid}").json()
    assert after["counts"] == sweep["counts"] and after["n_trials"] == 8 and after["progress"] == 1.0
    assert after["best"]["trial_id"] == best["trial_id"]
    # A rerun of a rerun repeats the original; once nothing runs on the dataset it can be deleted,
    # and then its trials can no longer be rerun.
    second = http.post(f"/api/v1/trials/{rerun_id}/rerun").json()
    assert second["rerun_of"] == source["id"]
    rerun_id = second["id"]
    assert wait_until(rerun_done, "the second rerun")["val_loss"] == source["val_loss"]
    assert http.delete(f"/api/v1/datasets/{ds_id}").status_code == 204
    r = http.post(f"/api/v1/trials/{source['id']}/rerun")
    assert r.status_code == 409 and "deleted" in r.json()["detail"]
