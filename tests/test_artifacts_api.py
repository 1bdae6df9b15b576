"""The API side of test evaluation, models and reruns, on SQLite and PostgreSQL, with the test
playing the worker over the protocol: test numbers only for final/refit trials, model uploads
fenced by the lease, refit trials queued with refit, reruns outside the grid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from gridsweep.client import ApiClient
from worker.uploaded import UploadedDatasets

TEST = {"test_loss": 0.5, "test_error": 0.25, "test_accuracy": 0.75}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


def claim(c: TestClient, wid: str) -> list[dict[str, Any]]:
    return c.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": 1}).json()["trials"]


def complete(c: TestClient, wid: str, t: dict[str, Any], val_loss: float, **metrics: float) -> None:
    outcome = {
        "trial_id": t["trial_id"],
        "lease_token": t["lease_token"],
        "status": "succeeded",
        "metrics": {"val_loss": val_loss, **metrics},
        "data_hash": "h" * 64,
        "split": t["split"],
        "versions": {"torch": "x", "gridsweep": "y"},
    }
    assert c.post(f"/api/v1/workers/{wid}/complete", json={"outcomes": [outcome]}).json()["states"] == {
        str(t["trial_id"]): "ok"
    }


def test_test_numbers_models_refit_and_reruns(client: TestClient) -> None:
    spec = {
        "name": "s",
        "dataset": "moons",
        "metric": "val_loss",  # the test plays the worker and reports val_loss: rank by it
        "parameters": {"hidden_units": [4, 8]},
        "seeds": [0, 1],
        "refit": True,
    }
    sid = client.post("/api/v1/sweeps", json=spec).json()["id"]
    wid = client.post("/api/v1/workers", json={"name": "w"}).json()["id"]
    # Search trials: a (misbehaving) worker reports test numbers; they are not stored.
    for _ in range(4):
        [t] = claim(client, wid)
        assert t["role"] == "search" and not t["evaluate_test"] and t["upload_model"] is None
        complete(client, wid, t, val_loss=float(t["params"]["hidden_units"]), **TEST)
    search = client.get(f"/api/v1/sweeps/{sid}/trials").json()["items"]
    assert all(x["test_loss"] is None for x in search)
    assert all(x["data_hash"] == "h" * 64 and x["versions"]["torch"] == "x" for x in search)
    assert client.get(f"/api/v1/sweeps/{sid}/model").status_code == 404

    # Then final and refit trials, one per seed; the lowest seed of each uploads the model.
    plans = {}
    for _ in range(4):
        [t] = claim(client, wid)
        plans[t["role"], t["seed"]] = t
    assert set(plans) == {("final", 0), ("final", 1), ("refit", 0), ("refit", 1)}
    assert all(p["evaluate_test"] and p["params"]["hidden_units"] == 4 for p in plans.values())
    assert [plans["final", s]["refit"] for s in (0, 1)] == [False, False]
    assert [plans["refit", s]["refit"] for s in (0, 1)] == [True, True]
    assert [plans[r, s]["upload_model"] for r in ("final", "refit") for s in (0, 1)] == [
        "best",
        None,
        "refit",
        None,
    ]

    f0 = plans["final", 0]
    url = f"/api/v1/workers/{wid}/trials/{f0['trial_id']}/model"
    files = {"state_dict": ("m.pt", b"weights"), "torchscript": ("m.ts", b"script")}
    r = client.post(url, data={"lease_token": "stale", "kind": "best"}, files=files)
    assert r.status_code == 409 and "lease lost" in r.json()["detail"]
    r = client.post(url, data={"lease_token": f0["lease_token"], "kind": "refit"}, files=files)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "kind"]
    r = client.post(url, data={"lease_token": f0["lease_token"], "kind": "best"}, files=files)
    assert r.status_code == 201 and {m["format"] for m in r.json()} == {"state_dict", "torchscript"}
    for p in plans.values():
        complete(client, wid, p, val_loss=1.0, **TEST)

    sweep = client.get(f"/api/v1/sweeps/{sid}").json()
    assert sweep["status"] == "succeeded" and sweep["best"]["test"] == TEST == sweep["best"]["refit_test"]
    got = client.get(f"/api/v1/sweeps/{sid}/model", params={"format": "torchscript"})
    assert got.content == b"script"
    assert got.headers["content-disposition"] == f'attachment; filename="sweep-{sid}-best.torchscript.pt"'
    r = client.get(f"/api/v1/sweeps/{sid}/model", params={"kind": "refit"})
    assert r.status_code == 404 and "succeeds" in r.json()["detail"]

    # A rerun: queued with the source's params and seed, outside the grid's counts and ranking.
    source = next(x for x in search if x["config_index"] == 1 and x["seed"] == 1)
    rerun = client.post(f"/api/v1/trials/{source['id']}/rerun").json()
    assert (rerun["role"], rerun["rerun_of"], rerun["seed"], rerun["params"]) == (
        "rerun",
        source["id"],
        1,
        source["params"],
    )
    again = client.get(f"/api/v1/sweeps/{sid}").json()
    assert again["counts"] == sweep["counts"] and again["status"] == "succeeded"
    assert client.post(f"/api/v1/trials/{rerun['id']}/rerun").status_code == 409  # still queued
    [t] = claim(client, wid)
    assert (t["trial_id"], t["role"], t["evaluate_test"], t["refit"], t["upload_model"]) == (
        rerun["id"],
        "rerun",
        False,
        False,
        None,
    )
    complete(client, wid, t, val_loss=2.0, **TEST)
    done = client.get(f"/api/v1/trials/{rerun['id']}").json()
    assert done["status"] == "succeeded" and done["test_loss"] is None
    assert client.get(f"/api/v1/sweeps/{sid}/leaderboard").json()[0]["config_index"] == 0
    assert client.post("/api/v1/trials/999999/rerun").status_code == 404


def test_worker_fetches_a_dataset_once_and_reuses_the_disk_cache(client: TestClient, tmp_path: Path) -> None:
    raw = b"a,b,y\n" + b"".join(f"{i},{i % 3},{i % 2}\n".encode() for i in range(30))
    ds = client.post("/api/v1/datasets", files={"file": ("d.csv", raw)}, data={"target": "y"}).json()
    api = ApiClient("http://testserver")
    api._http = client  # the real app in-process (TestClient is an httpx.Client)
    first = UploadedDatasets(api, tmp_path)
    data, meta = first.get(ds["id"], ds["data_hash"])
    first.get(ds["id"], ds["data_hash"])
    assert first.fetches == 1 and data.n_rows == 30 and meta["target"] == "y"
    cached = tmp_path / f"{ds['data_hash']}.npz"
    assert cached.exists()
    # Another worker on the host: from disk, no download.
    second = UploadedDatasets(api, tmp_path)
    assert second.get(ds["id"], ds["data_hash"])[0].classes == [0, 1] and second.fetches == 0
    # A damaged cache file is fetched again (and repaired); a hash that does not match is an error.
    cached.write_bytes(b"garbage")
    third = UploadedDatasets(api, tmp_path)
    third.get(ds["id"], ds["data_hash"])
    fourth = UploadedDatasets(api, tmp_path)
    fourth.get(ds["id"], ds["data_hash"])
    assert third.fetches == 1 and fourth.fetches == 0
    with pytest.raises(ValueError, match="expected"):
        UploadedDatasets(api, None).get(ds["id"], "0" * 64)
