"""The Python API (``import gridsweep``) against a real uvicorn server and a real worker process,
on SQLite and PostgreSQL: submit a spec file, wait, DataFrames, export, best, models, cancel,
delete, dataset uploads, and errors that carry the API's field paths."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gridsweep
from gridsweep.tables import is_metric
from tests.conftest import Server

pytestmark = pytest.mark.slow

SPEC = """\
dataset: moons
parameters:
  hidden_units: [8, 16]
  learning_rate: [0.05, 0.2]
  epochs: 2
seeds: [0, 1]
"""


def test_import_gridsweep_is_light() -> None:
    code = (
        "import sys, gridsweep; c = gridsweep.Client; "
        "print(sorted(m for m in ('torch', 'pandas', 'sqlalchemy', 'fastapi', 'app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_notebook_flow(
    server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    path = tmp_path / "moons-small.yaml"
    path.write_text(SPEC)
    client = gridsweep.Client(server.url)
    sweep = client.submit(path)
    assert sweep.name == "moons-small"  # named after the file
    assert sweep.status == "queued" and repr(sweep).startswith(f"<Sweep {sweep.id} 'moons-small' queued")
    # The same key and spec: the same sweep back.
    again = client.submit(path, idempotency_key="nb-1")
    assert client.submit(path, idempotency_key="nb-1").id == again.id != sweep.id
    again.cancel()
    assert again.status == "canceled"

    start_worker(server.url, "--pack-size", "4")
    assert sweep.wait(timeout=240) is sweep
    assert sweep.status == "succeeded" and sweep.phase == "finished"

    df = sweep.trials()
    assert len(df) == 8 and list(df["id"]) == sorted(df["id"])
    params = ["layers", "hidden_units", "activation", "learning_rate", "optimizer", "batch_size", "epochs"]
    assert list(df.columns[:5]) == ["id", "role", "config_index", "seed", "status"]
    assert list(df.columns[5:12]) == params
    assert {"train_loss", "val_loss", "val_error", "val_accuracy", "epochs_done", "duration_seconds"} <= set(
        df.columns
    )
    assert set(df["status"]) == {"succeeded"} and set(df["epochs_done"]) == {2}
    assert set(df["hidden_units"]) == {8, 16} and df["val_loss"].notna().all()
    assert str(df["finished_at"].dtype).startswith("datetime64")
    finals = sweep.trials(role="final")
    assert len(finals) == 2 and finals["test_loss"].notna().all()

    # The export is the trials, column for column.
    exported = pd.read_csv(sweep.export(tmp_path / "trials.csv", role="search"))
    assert list(exported.columns) == list(df.columns)
    assert exported["id"].tolist() == df["id"].tolist()
    for col in [c for c in df.columns if is_metric(c)] + ["learning_rate", "seed", "epochs_done"]:
        np.testing.assert_allclose(exported[col].astype(float), df[col].astype(float), equal_nan=True)
    pq = pd.read_parquet(sweep.export(tmp_path / "all.parquet"))
    assert len(pq) == 10 and set(pq["role"]) == {"search", "final"}

    best = sweep.best()
    board = sweep.leaderboard(limit=3)
    assert len(board) == 3 and board["rank"].tolist() == [1, 2, 3]
    assert board.iloc[0]["config_index"] == best["config_index"]
    assert board.iloc[0]["mean"] == pytest.approx(best["validation"]["mean"])
    model = sweep.download_model(tmp_path / "best.pt")
    assert model.stat().st_size > 0 and not (tmp_path / "best.pt.part").exists()
    with pytest.raises(gridsweep.NotFound, match="has no refit model"):
        sweep.download_model(tmp_path / "refit.pt", kind="refit")
    assert not (tmp_path / "refit.pt").exists()

    listed = client.sweeps()
    assert listed["id"].tolist() == [again.id, sweep.id]
    row = listed.set_index("id").loc[sweep.id]
    assert row["status"] == "succeeded" and row["done"] == 8 and row["duration_seconds"] > 0

    sweep.delete()
    with pytest.raises(gridsweep.NotFound, match=f"sweep {sweep.id} not found"):
        sweep.refresh()
    with pytest.raises(gridsweep.NotFound):
        client.sweep(sweep.id)
    client.close()


def test_errors_carry_the_field_paths(server: Server, tmp_path: Path) -> None:
    with gridsweep.Client(server.url) as client:
        with pytest.raises(gridsweep.SpecError) as info:
            client.submit({"dataset": "moons", "parameters": {"hiden_units": 8, "learning_rate": -1}})
        errors = {tuple(e["loc"]): e["msg"] for e in info.value.errors}
        assert errors[("parameters", "hiden_units")].startswith(
            "unknown key 'hiden_units': did you mean hidden_units?"
        )
        assert errors[("parameters", "learning_rate")] == "must be greater than 0, got -1"
        assert "parameters.hiden_units: unknown key" in str(info.value) and info.value.status_code == 422

        bad = tmp_path / "dup.yaml"
        bad.write_text("dataset: moons\nseeds: [0]\nseeds: [1]\n")
        with pytest.raises(
            gridsweep.SpecError, match=r"dup.yaml, line 3, column 1: key 'seeds' appears twice"
        ):
            client.submit(bad)

        sid = client.submit({"dataset": "moons"}).id
        with pytest.raises(gridsweep.Conflict, match=f"sweep {sid} is queued: cancel it first"):
            client.sweep(sid).delete()
        assert client.sweep(sid).best() is None
        # No worker: the wait runs out (its long polls end with it) and the sweep goes on.
        queued = client.sweep(sid)
        with pytest.raises(TimeoutError, match=f"sweep {sid} still queued after 1s"):
            queued.wait(timeout=1.0, poll=0.4)
        assert queued.status == "queued"
    with pytest.raises(gridsweep.Unreachable, match="API unreachable"):
        gridsweep.Client("http://127.0.0.1:9", retry_for=0.2).sweeps()


def test_upload_a_dataframe_and_list_datasets(server: Server) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["label"] = np.where(frame["a"] > 0, "yes", "no")
    frame.loc[7, "b"] = np.nan
    with gridsweep.Client(server.url) as client:
        ds = client.upload_dataset(frame, target="label", drop_missing=True)
        assert ds["created"] is True and ds["name"].startswith("df-") and ds["n_rows"] == 59
        assert ds["n_dropped"] == 1 and ds["dropped_rows"] == [8]
        assert client.upload_dataset(frame, target="label", drop_missing=True)["id"] == ds["id"]
        listed = client.datasets()
        assert listed["id"].tolist() == [ds["id"]] and listed.iloc[0]["task"] == "classification"
        gaps = frame.copy()
        gaps.loc[20, "b"] = np.nan
        with pytest.raises(gridsweep.SpecError) as info:
            client.upload_dataset(gaps, target="label", name="with-gaps")
        assert info.value.errors[0]["loc"] == ["file", "b"]
        assert "2 missing value(s) in rows 8 and 21" in info.value.errors[0]["msg"]
