"""The HTTP API through a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Server

# The tests play the worker and report val_loss: the sweeps rank by it (moons' default is val_error).
SPEC = {"name": "api", "dataset": "moons", "metric": "val_loss", "parameters": {"epochs": 2}}


def post_spec(http: httpx.Client, body: Any) -> httpx.Response:
    # Raw JSON text: Python's encoder writes NaN/Infinity, which a client may well send.
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/api/v1/sweeps", content=content, headers={"content-type": "application/json"})


def spec(**kw: Any) -> dict[str, Any]:
    return {**SPEC, **kw}


def grid(**parameters: Any) -> dict[str, Any]:
    return {**SPEC, "parameters": parameters}


P = ["body", "parameters"]
BIG = {"learning_rate": [i / 1000 for i in range(1, 101)], "batch_size": list(range(1, 102))}

# (spec, field path as the API reports it, a piece of the reason)
BAD_SPECS: list[tuple[Any, list[Any], str]] = [
    # Plain words: a did-you-mean for an unknown key, the allowed values without Python syntax,
    # a scalar's error at the scalar (not `[0]`).
    (spec(owner="me"), ["body", "owner"], "unknown key 'owner' (allowed keys: name, dataset"),
    (grid(hiden_units=3), [*P, "hiden_units"], "unknown key 'hiden_units': did you mean hidden_units?"),
    (spec(metric={"name": "val_loss", "mode": "min"}), ["body", "metric", "mode"], "unknown key 'mode'"),
    (spec(metric=["val_loss"]), ["body", "metric"], "must be a mapping with keys name, goal, threshold"),
    (grid(activation=["relu", "mish"]), [*P, "activation", 1], "'mish' is not one of relu, tanh,"),
    (grid(optimizer="lbfgs"), [*P, "optimizer"], "not one of sgd, momentum, adam, adamw"),
    (grid(loss="hinge"), [*P, "loss"], "auto, mse, mae, huber, bce, cross_entropy"),
    (grid(learning_rate=0), [*P, "learning_rate"], "must be greater than 0"),
    (grid(batch_size="x"), [*P, "batch_size"], "must be a whole number, got 'x'"),
    (grid(learning_rate=float("nan")), [*P, "learning_rate"], "finite"),
    (grid(hidden_units=[]), [*P, "hidden_units"], "must not be empty"),
    (spec(seeds=[1, 1]), ["body", "seeds"], "distinct"),
    (spec(split={"validation": 0.6, "test": 0.4}), ["body", "split"], "leaves no training data"),
    # moons has 1,000 rows: no training row, then one (so one class) are caught before any worker.
    (spec(split={"validation": 0.5, "test": 0.4996}), ["body", "split"], "leaves train 0, validation 500"),
    (spec(split={"validation": 0.5, "test": 0.499}), ["body", "split"], "only 1 class(es)"),
    (grid(learning_rate={"min": 0.1, "max": 1}), [*P, "learning_rate"], "needs method random, tpe or qmc"),
    (grid(learning_rate={"min": 1, "max": 0.1}), [*P, "learning_rate", "max"], "max must be above min"),
    ({"name": "x"}, ["body", "dataset"], "is required"),
    ([SPEC], ["body"], "must be a mapping with keys name, dataset"),
    (b'{"name": "x", "dataset": ', ["body"], "JSON"),
    # Found after parsing, once the dataset is known:
    (spec(dataset="imagenet"), ["body", "dataset"], "unknown dataset 'imagenet'"),
    (spec(dataset=2**70), ["body", "dataset"], "unknown dataset"),  # an id no row can have
    (spec(dataset="²"), ["body", "dataset"], "unknown dataset"),
    (spec(dataset="diabetes", parameters={"loss": "cross_entropy"}), [*P, "loss", 0], "regression task"),
    (spec(dataset="digits", parameters={"loss": "bce"}), [*P, "loss", 0], "exactly 2 classes"),
    (
        spec(dataset="friedman1", metric={"name": "val_accuracy"}),
        ["body", "metric", "name"],
        "regression dataset",
    ),
    (grid(layers=1, hidden_units={"values": [[4, 4]]}), [*P, "hidden_units", 0], "2 widths"),
    (grid(epochs=10_001), [*P, "epochs", 0], "over the limit of 10000"),
    (grid(layers=64, hidden_units=65_536), [*P, "hidden_units", 0], "parameters, over the limit"),
    (grid(learning_rate=[0.1, 0.01, 0.1]), [*P, "learning_rate"], "distinct"),
    (grid(hidden_units={"values": [[4, 4], 8, [4, 4]]}), [*P, "hidden_units"], "[4, 4] twice"),
    (spec(parameters={"loss": ["auto", "bce"]}), [*P, "loss", 1], "the same as parameters.loss[0]"),
    (grid(**BIG), P, "the grid makes 10100 trials"),
]


def test_submit_201_and_every_bad_spec_a_422_with_field_path_and_reason(server: Server) -> None:
    problems = []
    for body, loc, reason in BAD_SPECS:
        r = post_spec(server.http, body)
        if r.status_code != 422:
            problems.append(f"{loc}: HTTP {r.status_code} {r.text[:200]}")
            continue
        detail = r.json()["detail"]
        if not any(e["loc"][: len(loc)] == loc and reason in e["msg"] for e in detail):
            problems.append(f"{loc} / {reason!r} not in {detail}")
    assert problems == []
    assert server.http.get("/api/v1/sweeps").json()["total"] == 0  # nothing half-stored

    r = post_spec(server.http, grid(layers=[1, 2], learning_rate=[0.1, 0.01]) | {"seeds": [0, 1]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "status", "n_trials", "n_configs"} and body["status"] == "queued"
    assert body["n_trials"] == 8 and body["n_configs"] == 4
    assert server.http.get(f"/api/v1/sweeps/{body['id']}").json()["n_trials"] == 8
    assert server.http.get("/healthz").json() == {"status": "ok"}


# --------------------------------------------------------------------------- the read side


class Protocol:
    """The worker protocol over HTTP, as a worker would speak it."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        r = http.post("/api/v1/workers", json={"name": "test-worker", "device": "cpu"})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]

    def claim(self, n: int = 1) -> list[dict[str, Any]]:
        r = self.http.post(f"/api/v1/workers/{self.id}/claim", json={"max_trials": n})
        assert r.status_code == 200, r.text
        return r.json()["trials"]

    def epoch(self, t: dict[str, Any], epoch: int, **metrics: float) -> dict[str, str]:
        report = {"trial_id": t["trial_id"], "lease_token": t["lease_token"], "epoch": epoch, **metrics}
        r = self.http.post(f"/api/v1/workers/{self.id}/epochs", json={"reports": [report]})
        assert r.status_code == 200, r.text
        return r.json()["states"]

    def complete(
        self, t: dict[str, Any], status: str = "succeeded", error: str | None = None, **m: float
    ) -> None:
        out = {"trial_id": t["trial_id"], "lease_token": t["lease_token"], "status": status, "metrics": m}
        r = self.http.post(
            f"/api/v1/workers/{self.id}/complete", json={"outcomes": [{**out, "error": error}]}
        )
        assert r.status_code == 200 and r.json()["states"] == {str(t["trial_id"]): "ok"}, r.text


def test_sweeps_trials_best_leaderboard_and_cancel(server: Server) -> None:
    http = server.http
    sid = post_spec(http, {**SPEC, "parameters": {"learning_rate": [0.1, 0.2, 0.3]}, "seeds": [0, 1]}).json()[
        "id"
    ]
    other = post_spec(http, SPEC).json()["id"]
    w = Protocol(http)

    assert http.get(f"/api/v1/sweeps/{sid}/best").status_code == 404
    assert http.get(f"/api/v1/sweeps/{sid}/leaderboard").json() == []
    index = {0.1: 0, 0.2: 1, 0.3: 2}  # learning rate -> grid index
    claimed = {(index[t["params"]["learning_rate"]], t["seed"]): t for t in w.claim(4)}
    assert sorted(claimed) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    t00 = claimed[0, 0]
    assert t00["dataset"] == "moons" and t00["split"] == {"validation": 0.2, "test": 0.2, "seed": 0}
    assert t00["params"]["learning_rate"] == 0.1 and t00["evaluate_test"] is False
    assert w.epoch(t00, 1, train_loss=0.75, val_loss=0.5) == {str(t00["trial_id"]): "ok"}
    assert http.get(f"/api/v1/sweeps/{sid}/best").status_code == 404  # a running trial is no best yet
    w.epoch(t00, 2, train_loss=0.5, val_loss=0.25, val_error=0.125, val_accuracy=0.875)
    w.complete(t00, val_loss=0.25, val_error=0.125, val_accuracy=0.875, train_loss=0.5)
    w.complete(claimed[0, 1], val_loss=0.75)
    w.complete(claimed[1, 0], val_loss=0.25)
    w.complete(claimed[1, 1], "failed", error="RuntimeError: out of luck")

    # One sweep, with counts by status and its best so far.
    s = http.get(f"/api/v1/sweeps/{sid}").json()
    assert (
        s["status"] == "running"
        and s["n_trials"] == 6
        and {k: s["metric"][k] for k in ("name", "goal", "units", "select_epoch")}
        == {"name": "val_loss", "goal": "minimize", "units": "the trial's loss", "select_epoch": "best"}
    )
    assert {k: v for k, v in s["counts"].items() if v} == {"queued": 2, "succeeded": 3, "failed": 1}
    assert s["progress"] == 4 / 6 and s["best"]["config_index"] == 1
    listed = http.get("/api/v1/sweeps").json()
    assert listed["total"] == 2 and [x["id"] for x in listed["items"]] == [other, sid]  # newest first
    assert [
        x["id"] for x in http.get("/api/v1/sweeps", params={"limit": 1, "offset": 1}).json()["items"]
    ] == [sid]

    # Best: config 1 (0.25 over its one succeeded seed) beats config 0 (mean 0.5).
    best = http.get(f"/api/v1/sweeps/{sid}/best").json()
    assert best["config_index"] == 1 and best["trial_id"] == claimed[1, 0]["trial_id"]
    assert best["params"]["learning_rate"] == 0.2 and best["n_seeds"] == 1
    assert best["validation"]["mean"] == 0.25 and best["test"] is None
    assert [p["seed"] for p in best["validation"]["per_seed"]] == [0]
    board = http.get(f"/api/v1/sweeps/{sid}/leaderboard").json()
    assert [(e["rank"], e["config_index"], e["mean"], e["n_seeds"]) for e in board] == [
        (1, 1, 0.25, 1),
        (2, 0, 0.5, 2),
    ]
    assert (
        board[1]["std"] == 0.25
        and http.get(f"/api/v1/sweeps/{sid}/leaderboard", params={"limit": 1}).json() == board[:1]
    )

    # Trials: pages, sort by the metric (missing values last either way), status filter.
    def trials(**params: Any) -> dict[str, Any]:
        r = http.get(f"/api/v1/sweeps/{sid}/trials", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    page = trials(limit=4, offset=4)
    assert page["total"] == 6 and [t["config_index"] for t in page["items"]] == [2, 2]
    assert set(page["items"][0]) >= {
        "params",
        "seed",
        "status",
        "train_loss",
        "val_loss",
        "val_error",
        "val_accuracy",
    }
    ids = {k: t["trial_id"] for k, t in claimed.items()}
    asc = [t["id"] for t in trials(sort="metric")["items"]]
    assert asc[:3] == [ids[0, 0], ids[1, 0], ids[0, 1]]  # 0.25, 0.25 (tie: lower id), 0.75, then nulls
    desc = [t["id"] for t in trials(sort="metric", order="desc")["items"]]
    assert desc[:3] == [ids[0, 1], ids[0, 0], ids[1, 0]] and set(desc[3:]) == set(asc[3:])
    done = trials(status=["failed", "succeeded"], sort="metric")
    assert (
        done["total"] == 4
        and done["items"][-1]["status"] == "failed"
        and done["items"][-1]["val_loss"] is None
    )
    assert [t["status"] for t in trials(status="queued")["items"]] == ["queued", "queued"]
    assert http.get(f"/api/v1/sweeps/{sid}/trials", params={"sort": "params"}).status_code == 422
    assert http.get(f"/api/v1/sweeps/{sid}/trials", params={"status": "lost"}).status_code == 422

    # One trial with its per-epoch curve, and the failure's message.
    detail = http.get(f"/api/v1/trials/{ids[0, 0]}").json()
    assert detail["status"] == "succeeded" and detail["seed"] == 0 and detail["epochs_done"] == 2
    assert [(e["epoch"], e["train_loss"], e["val_loss"]) for e in detail["epochs"]] == [
        (1, 0.75, 0.5),
        (2, 0.5, 0.25),
    ]
    assert detail["epochs"][1]["val_accuracy"] == 0.875 and detail["worker_id"] == w.id
    assert http.get(f"/api/v1/trials/{ids[1, 1]}").json()["error"] == "RuntimeError: out of luck"

    # Unknown ids are 404s (and ids no row can have are 422s, never 500s).
    for path in (
        "/api/v1/sweeps/9999", "/api/v1/sweeps/9999/trials", "/api/v1/sweeps/9999/best",
        "/api/v1/sweeps/9999/leaderboard", "/api/v1/trials/99999",
    ):  # fmt: skip
        assert http.get(path).status_code == 404, path
    assert http.post("/api/v1/sweeps/9999/cancel").status_code == 404
    assert http.get(f"/api/v1/trials/{2**63}").status_code == 422
    assert http.get("/api/v1/sweeps", params={"offset": 10**20}).status_code == 422

    # Cancel: queued trials now, the running one is told at its next report.
    (running,) = w.claim()
    r = http.post(f"/api/v1/sweeps/{sid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert {k: v for k, v in r.json()["counts"].items() if v} == {
        "running": 1,
        "canceled": 1,
        "succeeded": 3,
        "failed": 1,
    }
    assert w.epoch(running, 1, train_loss=1.0, val_loss=1.0) == {str(running["trial_id"]): "cancel"}
    w.complete(running, "canceled")
    assert http.get(f"/api/v1/sweeps/{sid}").json()["counts"]["canceled"] == 2
    assert http.get(f"/api/v1/sweeps/{other}").json()["status"] == "queued"  # the other sweep goes on


def test_worker_protocol_rejects_what_it_cannot_store(server: Server) -> None:
    http = server.http
    post_spec(http, SPEC)
    w = Protocol(http)
    (t,) = w.claim()
    ref = {"trial_id": t["trial_id"], "lease_token": t["lease_token"]}
    nan_epoch = json.dumps({"reports": [{**ref, "epoch": 1, "train_loss": float("nan")}]})
    r = http.post(
        f"/api/v1/workers/{w.id}/epochs", content=nan_epoch, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "train_loss"
    inf_done = json.dumps(
        {"outcomes": [{**ref, "status": "succeeded", "metrics": {"val_loss": float("inf")}}]}
    )
    r = http.post(
        f"/api/v1/workers/{w.id}/complete", content=inf_done, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert http.get(f"/api/v1/trials/{t['trial_id']}").json()["status"] == "running"
    assert http.post("/api/v1/workers/nobody/claim", json={"max_trials": 1}).status_code == 404
    hb = http.post(
        f"/api/v1/workers/{w.id}/heartbeat", json={"leases": [{"trial_id": 2**40, "lease_token": "x"}]}
    )
    assert hb.status_code == 422


def test_a_write_is_committed_before_it_is_answered(server: Server) -> None:
    """Read-your-writes: what a 2xx said was done is visible to the very next request."""
    http = server.http
    w = Protocol(http)
    misses = []
    for i in range(30):
        sid = post_spec(http, SPEC).json()["id"]
        if http.get(f"/api/v1/sweeps/{sid}").status_code != 200:
            misses.append(f"sweep {i}")
        (t,) = w.claim()
        w.complete(t, val_loss=0.5)
        if http.get(f"/api/v1/trials/{t['trial_id']}").json()["status"] != "succeeded":
            misses.append(f"trial {i}")
    assert misses == []
