"""Everyday API (issue 16), on SQLite and PostgreSQL through a real uvicorn server: live progress
(phase, epochs, elapsed, ETA, duration), DELETE of a sweep, the CSV/Parquet export, nameless
specs, plain-word 422s and running trials' curves. Trials move over the worker protocol."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pandas as pd

from app.spec import AXES
from tests.conftest import Server

SPEC = {
    "name": "everyday",
    "dataset": "moons",
    "parameters": {"learning_rate": [0.1, 0.01], "hidden_units": [8, [4, 4]], "layers": [1, 2], "epochs": 4},
    "seeds": [0, 1],
}


class Worker:
    """The worker protocol over HTTP (claim, epochs, complete)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.id = http.post("/api/v1/workers", json={"name": "w", "device": "cpu"}).json()["id"]

    def claim(self, n: int) -> list[dict[str, Any]]:
        r = self.http.post(f"/api/v1/workers/{self.id}/claim", json={"max_trials": n})
        assert r.status_code == 200, r.text
        return r.json()["trials"]

    def epochs(self, trials: list[dict[str, Any]], epoch: int, loss: float = 0.5) -> dict[str, str]:
        reports = [
            {"trial_id": t["trial_id"], "lease_token": t["lease_token"], "epoch": epoch, "val_loss": loss}
            for t in trials
        ]
        return self.http.post(f"/api/v1/workers/{self.id}/epochs", json={"reports": reports}).json()["states"]

    def complete(self, trials: list[dict[str, Any]], loss: float = 0.4, **extra: Any) -> None:
        outcomes = [
            {
                "trial_id": t["trial_id"],
                "lease_token": t["lease_token"],
                "status": "succeeded",
                "epochs_done": t["params"]["epochs"],
                "metrics": {"train_loss": loss, "val_loss": loss + 0.01 * t["seed"], "val_error": 0.1},
                "duration_seconds": 0.25,
                **extra,
            }
            for t in trials
        ]
        r = self.http.post(f"/api/v1/workers/{self.id}/complete", json={"outcomes": outcomes})
        assert r.status_code == 200, r.text


def sweep(http: httpx.Client, sid: int) -> dict[str, Any]:
    r = http.get(f"/api/v1/sweeps/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def test_progress_phase_epochs_elapsed_eta_and_duration(server: Server) -> None:
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    s = sweep(http, sid)
    # 2 lr x (8 at 1 and 2 layers, [4, 4] at 2 layers) = 6 configs x 2 seeds = 12 trials of 4 epochs.
    assert (s["n_trials"], s["phase"], s["epochs_done"], s["epochs_planned"]) == (12, "queued", 0, 48)
    assert s["elapsed_seconds"] is None and s["eta_seconds"] is None and s["duration_seconds"] is None

    w = Worker(http)
    held = w.claim(4)
    assert w.epochs(held, 1) == {str(t["trial_id"]): "ok" for t in held}
    w.epochs(held, 2)
    s = sweep(http, sid)
    # Running trials move the numbers before any trial ends (2 of 4 epochs each).
    assert s["phase"] == "searching" and s["counts"]["running"] == 4 and s["progress"] == 0
    assert (s["running"], s["running_epochs_done"], s["running_epochs_planned"]) == (4, 8, 16)
    assert (s["epochs_done"], s["epochs_planned"]) == (8, 48)
    assert s["elapsed_seconds"] >= 0 and s["eta_seconds"] is not None and s["eta_seconds"] > 0

    w.complete(held)
    rest = w.claim(100)
    assert len(rest) == 8
    w.complete(rest)
    s = sweep(http, sid)
    # The grid is done: the best config is retrained per seed and scored on test (2 final trials).
    assert s["phase"] == "evaluating" and s["status"] == "running"
    assert (s["epochs_done"], s["epochs_planned"]) == (48, 56)
    finals = w.claim(10)
    assert {t["role"] for t in finals} == {"final"}
    w.complete(finals, metrics={"val_loss": 0.3, "test_loss": 0.33})
    s = sweep(http, sid)
    assert (s["status"], s["phase"], s["epochs_done"], s["epochs_planned"]) == (
        "succeeded",
        "finished",
        56,
        56,
    )
    assert s["duration_seconds"] is not None and s["duration_seconds"] == s["elapsed_seconds"]
    assert s["eta_seconds"] is None
    # Listed sweeps carry the same fields.
    listed = http.get("/api/v1/sweeps").json()["items"][0]
    assert {k: listed[k] for k in ("phase", "epochs_done", "duration_seconds")} == {
        k: s[k] for k in ("phase", "epochs_done", "duration_seconds")
    }
    # A trial's wall time (started to finished) beside its training time.
    t = http.get(f"/api/v1/trials/{held[0]['trial_id']}").json()
    assert t["duration_seconds"] == 0.25 and t["wall_seconds"] is not None and t["wall_seconds"] >= 0


def test_cancel_then_canceling_until_running_trials_stop(server: Server) -> None:
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    w = Worker(http)
    held = w.claim(2)
    w.epochs(held, 1)
    canceled = http.post(f"/api/v1/sweeps/{sid}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["phase"] == "canceling"
    assert canceled["counts"]["running"] == 2 and canceled["counts"]["canceled"] == 10
    # The running trials are told at their next report, and end canceled.
    assert set(w.epochs(held, 2).values()) == {"cancel"}
    outcomes = [
        {"trial_id": t["trial_id"], "lease_token": t["lease_token"], "status": "canceled"} for t in held
    ]
    http.post(f"/api/v1/workers/{w.id}/complete", json={"outcomes": outcomes}).raise_for_status()
    s = sweep(http, sid)
    assert s["phase"] == "finished" and s["counts"]["running"] == 0 and s["counts"]["canceled"] == 12


def test_delete_is_refused_while_at_work_then_takes_everything(server: Server) -> None:
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    other = http.post("/api/v1/sweeps", json={**SPEC, "name": "other"}).json()["id"]
    r = http.delete(f"/api/v1/sweeps/{sid}")
    assert r.status_code == 409 and f"sweep {sid} is queued: cancel it first" in r.json()["detail"]
    w = Worker(http)
    held = w.claim(3)
    w.epochs(held, 1)
    r = http.delete(f"/api/v1/sweeps/{sid}")
    assert r.status_code == 409 and "is running" in r.json()["detail"]
    http.post(f"/api/v1/sweeps/{sid}/cancel").raise_for_status()
    assert http.delete(f"/api/v1/sweeps/{sid}").status_code == 204
    # Gone with its trials and epochs; a trial still stopping is lost to its worker.
    assert http.get(f"/api/v1/sweeps/{sid}").status_code == 404
    assert http.get(f"/api/v1/trials/{held[0]['trial_id']}").status_code == 404
    assert http.get(f"/api/v1/sweeps/{sid}/trials").status_code == 404
    assert set(w.epochs(held, 2).values()) == {"lost"}
    assert http.delete(f"/api/v1/sweeps/{sid}").json() == {"detail": f"sweep {sid} not found"}
    # The other sweep is untouched.
    assert sweep(http, other)["n_trials"] == 12 and http.get("/api/v1/sweeps").json()["total"] == 1


def test_export_csv_and_parquet_are_the_trials(server: Server) -> None:
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    w = Worker(http)
    done = w.claim(5)
    w.complete(done)
    trials = http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()["items"]

    r = http.get(f"/api/v1/sweeps/{sid}/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="sweep-{sid}.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == [t["id"] for t in trials]
    head = list(rows[0])
    # Identity, every grid parameter, every metric the API returns, then how it ran.
    assert head[:5] == ["id", "role", "config_index", "seed", "status"]
    assert head[5:15] == list(AXES)
    metrics = [k for k in trials[0] if k.startswith(("train_", "val_", "test_"))]
    assert all(m in head for m in metrics) and "duration_seconds" in head and "wall_seconds" in head
    by_id = {t["id"]: t for t in trials}
    for row in rows:
        t = by_id[int(row["id"])]
        assert row["status"] == t["status"] and row["hidden_units"] == str(t["params"]["hidden_units"])
        assert (float(row["val_loss"]) if row["val_loss"] else None) == t["val_loss"]

    r = http.get(f"/api/v1/sweeps/{sid}/export", params={"format": "parquet", "role": "search"})
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    df = pd.read_parquet(io.BytesIO(r.content))
    assert list(df.columns) == head and len(df) == len(trials)
    assert df["learning_rate"].dtype == "float64" and df["layers"].dtype == "int64"
    assert set(df["hidden_units"]) == {"8", "[4, 4]"}  # mixed widths and per-layer lists: JSON text
    assert df.loc[df["status"] == "succeeded", "val_loss"].notna().sum() == 5
    assert http.get("/api/v1/sweeps/999/export").status_code == 404
    r = http.get(f"/api/v1/sweeps/{sid}/export", params={"format": "xlsx"})
    assert r.status_code == 422 and "'xlsx' is not one of csv, parquet" in r.json()["detail"][0]["msg"]


def test_nameless_scalar_seeds_method_grid_and_plain_422s(server: Server) -> None:
    http = server.http
    r = http.post("/api/v1/sweeps", json={"dataset": "moons", "seeds": 3, "method": "grid"})
    assert r.status_code == 201, r.text
    s = sweep(http, r.json()["id"])
    assert s["name"] == f"moons-{s['id']}" and s["spec"]["name"] == s["name"] and s["spec"]["seeds"] == [3]
    bad = {"dataset": "moon", "method": "bayes", "parameters": {"hiden_units": 8, "batch_size": 0}}
    detail = http.post("/api/v1/sweeps", json=bad).json()["detail"]
    msgs = {".".join(map(str, e["loc"])): e["msg"] for e in detail}
    assert msgs["body.method"] == "'bayes' is not one of grid, random, tpe, qmc"
    assert msgs["body.parameters.hiden_units"].startswith(
        "unknown key 'hiden_units': did you mean hidden_units? (allowed keys: layers, hidden_units,"
    )
    assert msgs["body.parameters.batch_size"] == "must be greater than 0, got 0"
    detail = http.post("/api/v1/sweeps", json={"dataset": "moon"}).json()["detail"]
    assert detail[0]["loc"] == ["body", "dataset"]
    assert detail[0]["msg"].startswith("unknown dataset 'moon' (did you mean 'moons'?): neither built-in (")
    assert "(circles, diabetes, digits," in detail[0]["msg"]
    # A query parameter in plain words too.
    r = http.get("/api/v1/sweeps", params={"limit": "many"})
    assert r.json()["detail"] == [
        {"loc": ["query", "limit"], "msg": "must be a whole number, got 'many'", "type": "int_parsing"}
    ]


def test_running_trials_have_curves_and_openapi_documents_the_new_answers(server: Server) -> None:
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    w = Worker(http)
    held = w.claim(2)
    for e in (1, 2, 3):
        w.epochs(held, e, loss=1.0 / e)
    curves = http.get(f"/api/v1/sweeps/{sid}/curves").json()
    assert curves["best_trial_ids"] == []
    assert [(c["trial_id"], c["rank"], c["status"], c["epochs"]) for c in curves["trials"]] == [
        (t["trial_id"], None, "running", [1, 2, 3]) for t in held
    ]
    assert (
        curves["trials"][0]["val_loss"] == [1.0, 0.5, 1.0 / 3] and curves["trials"][0]["epochs_planned"] == 4
    )
    spec = http.get("/openapi.json").json()
    one = spec["paths"]["/api/v1/sweeps/{sweep_id}"]
    assert {"204", "409", "404"} <= set(one["delete"]["responses"])
    export = spec["paths"]["/api/v1/sweeps/{sweep_id}/export"]["get"]
    assert {"text/csv", "application/vnd.apache.parquet"} <= set(export["responses"]["200"]["content"])
    props = spec["components"]["schemas"]["SweepRead"]["properties"]
    assert {
        "phase",
        "epochs_done",
        "epochs_planned",
        "elapsed_seconds",
        "eta_seconds",
        "duration_seconds",
    } <= set(props)
