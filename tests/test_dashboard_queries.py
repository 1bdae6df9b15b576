"""The dashboard's read-side queries on SQLite and PostgreSQL, and their HTTP edges."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.models import Sweep, TrialStatus
from app.services import overview, plots
from app.services.sweeps import create_sweep, leaderboard
from app.services.trial_queries import list_trials
from app.spec import SweepSpec
from tests.conftest import Server
from tests.dashboard_seed import Seeded, register, run_trials, seed_store


@pytest.fixture
def seeded(db_url: str) -> Seeded:
    return seed_store(db_url)


@dataclass
class Row:
    id: int
    config_index: int
    status: str
    params: dict[str, Any]
    val_loss: float | None


def _search_trials(database: Database, sweep_id: int) -> list[Row]:
    with database.session(readonly=True) as s:
        return [
            Row(t.id, t.config_index, t.status, t.params, t.val_loss)
            for t in list_trials(s, sweep_id, limit=10_000)[0]
        ]


def test_trials_sort_by_a_parameter_by_its_value(database: Database, settings: Settings) -> None:
    # Widths whose text order (100 < 9) is not their numeric order, and a per-layer list.
    spec = {
        "name": "widths",
        "dataset": "moons",
        "metric": "val_loss",  # the test plays the worker and reports val_loss: rank by it
        "seeds": [0, 1],
        "parameters": {"layers": [1, 2], "hidden_units": [100, 9, [20, 5], 30], "learning_rate": [0.1, 0.02]},
    }
    with database.session() as s:
        sid = create_sweep(s, SweepSpec.model_validate(spec), settings).id
    wid = register(database, "w", "cpu")
    run_trials(database, wid, lambda t: ("succeeded", 0.5 - t.config_index / 100), max_trials=64)
    with database.session(readonly=True) as s:
        rows, total = list_trials(s, sid, sort="params.hidden_units", limit=100)
        widths = [t.params["hidden_units"] for t in rows]
        assert total == len(rows) == 2 * 2 * 3 * 2 + 1 * 2 * 2  # per-layer list only with 2 layers
        numbers = [w for w in widths if isinstance(w, int)]
        assert widths[: len(numbers)] == numbers == sorted(numbers)  # numbers first, numerically
        assert numbers[0] == 9 and all(w == [20, 5] for w in widths[len(numbers) :])
        down, _ = list_trials(s, sid, sort="params.learning_rate", order="desc", limit=100)
        lrs = [t.params["learning_rate"] for t in down]
        assert lrs == sorted(lrs, reverse=True)
        # Ties keep the id order, so paging is stable.
        same = [t.id for t in down if t.params["learning_rate"] == 0.1]
        assert same == sorted(same)
        page2, _ = list_trials(s, sid, sort="params.hidden_units", limit=5, offset=5)
        assert [t.id for t in page2] == [t.id for t in rows[5:10]]
        with pytest.raises(ValueError, match="cannot sort"):
            list_trials(s, sid, sort="params.nope")


def test_plot_queries_agree_with_the_trials(database: Database, seeded: Seeded) -> None:
    sid = seeded.finished_id
    trials = _search_trials(database, sid)
    with database.session(readonly=True) as s:
        sweep = s.get(Sweep, sid)
        assert sweep is not None
        ranked = [
            (r.config_index, r.mean, r.params, [t.id for t in r.trials])
            for r in leaderboard(s, sweep, limit=10)
        ]
        curves = plots.learning_curves(s, sweep, top=10)
        history = plots.completion_history(s, sweep)
        heat = plots.heatmap(s, sweep, "learning_rate", "hidden_units")
        configs = plots.config_scores(s, sweep, limit=5)
        all_configs = plots.config_scores(s, sweep)
        with pytest.raises(ValueError):
            plots.heatmap(s, sweep, "learning_rate", "learning_rate")

    # Curves: every seed of the top configs, best first, with the epochs of its latest attempt.
    assert [c["trial_id"] for c in curves["trials"]] == [tid for r in ranked for tid in r[3]]
    assert curves["best_trial_ids"] == ranked[0][3]
    for c in curves["trials"]:
        assert c["epochs"] == list(range(1, 7)) and c["val_loss"][-1] == c["value"]

    # History: finished trials in completion order, the best so far never worse than any value seen.
    finished = [t for t in trials if t.status in ("succeeded", "failed", "diverged")]
    assert sorted(history["trial_ids"]) == sorted(t.id for t in finished)
    seen = [v for v in history["value"] if v is not None]
    assert history["best_so_far"][-1] == min(seen)
    assert all(
        b == min(v for v in history["value"][: i + 1] if v is not None)
        for i, b in enumerate(history["best_so_far"])
        if b is not None
    )
    assert history["value"][history["status"].index("diverged")] is None

    # Heatmap: each cell is the best config mean over the other parameters, recomputed here.
    by_config: dict[int, list[Any]] = {}
    for t in trials:
        by_config.setdefault(t.config_index, []).append(t)
    expected: dict[tuple[Any, Any], list[float]] = {}
    diverged: dict[tuple[Any, Any], int] = {}
    for ts in by_config.values():
        key = (ts[0].params["learning_rate"], ts[0].params["hidden_units"])
        ok = [t.val_loss for t in ts if t.status == TrialStatus.succeeded]
        if any(t.status == TrialStatus.diverged for t in ts):
            diverged[key] = diverged.get(key, 0) + 1
        elif ok:
            expected.setdefault(key, []).append(statistics.fmean(ok))
    assert heat["x_values"] == [0.001, 0.01, 0.1, 1.0] and heat["y_values"] == [8, 32, 128]
    assert len(heat["cells"]) == 12
    for cell in heat["cells"]:
        key = (heat["x_values"][cell["x"]], heat["y_values"][cell["y"]])
        assert cell["value"] == pytest.approx(min(expected[key]))
        assert cell["n_configs"] == 4 and cell["n_diverged"] == diverged.get(key, 0)

    # Parallel coordinates: the best configs first, with their varied params.
    assert configs["axes"] == ["layers", "hidden_units", "activation", "learning_rate"]
    assert configs["config_index"] == [r[0] for r in ranked[:5]]
    assert configs["value"] == pytest.approx([r[1] for r in ranked[:5]])
    assert configs["params"][0] == [ranked[0][2][a] for a in configs["axes"]]
    assert all_configs["n_configs"] == 48 and all_configs["n_scored"] == len(all_configs["value"])
    assert all_configs["n_diverged"] == sum(diverged.values()) > 0
    assert all_configs["axis_values"][3] == [0.001, 0.01, 0.1, 1.0]


def test_overview_queries(database: Database, seeded: Seeded) -> None:
    with database.session(readonly=True) as s:
        rows, total = overview.sweep_rows(s, limit=10, offset=0)
        assert total == 3
        assert [r.sweep.id for r in rows] == [seeded.queued_id, seeded.running_id, seeded.finished_id]
        assert rows[0].best is None and rows[0].done == 0
        rows = rows[1:]
        for r in rows:
            assert r.best == pytest.approx(leaderboard(s, r.sweep, limit=1)[0].mean)
            assert r.done == sum(r.counts[k] for k in ("succeeded", "failed", "diverged", "canceled"))
        running = rows[0]
        assert running.counts == {
            "queued": 4,
            "running": 2,
            "succeeded": 4,
            "failed": 1,
            "diverged": 1,
            "canceled": 0,
            "pruned": 0,
        }
        pulse = overview.sweep_pulse(s, running.sweep)
        assert pulse.counts == running.counts and pulse.done == 6

        workers = {w.worker.name: w for w in overview.worker_rows(s, stale_after_seconds=3600)}
        assert set(workers) == {"cpu-worker-1", "gpu-box-1"}
        gpu = workers["gpu-box-1"]
        assert gpu.online and gpu.worker.device == "cuda:0"
        assert sorted(h.trial_id for h in gpu.trials) == sorted(t for t, _, _ in seeded.running)
        assert all(
            h.sweep_id == seeded.running_id and h.epochs_done == 2 and h.epochs == 5 for h in gpu.trials
        )
        assert workers["cpu-worker-1"].trials == []

        page = overview.trial_page(
            s, running.sweep, status=["running"], sort="metric", order="desc", limit=10, offset=0
        )
        assert page.total == 2 and set(page.worker_names.values()) == {"gpu-box-1"}
        values = [t.val_accuracy for t in page.trials]
        assert values == sorted(values, reverse=True)

    # A trial that moves changes the pulse's version (the dashboard redraws on it).
    tid, token, _ = seeded.running[0]
    with database.session() as s:
        from app.services.trials import report_epochs

        report_epochs(s, [{"trial_id": tid, "lease_token": token, "epoch": 3, "val_loss": 0.2}], 60)
    with database.session(readonly=True) as s:
        sweep = s.get(Sweep, seeded.running_id)
        assert sweep is not None
        assert overview.sweep_pulse(s, sweep).version != pulse.version


def test_plot_endpoints_and_pages_over_http(server: Server, db_url: str) -> None:
    seeded = seed_store(db_url)
    http = server.http
    sid = seeded.finished_id
    assert http.get(f"/api/v1/sweeps/{sid}/curves", params={"top": 3}).json()["trials"]
    heat = http.get(f"/api/v1/sweeps/{sid}/heatmap", params={"x": "learning_rate", "y": "layers"})
    assert heat.status_code == 200 and len(heat.json()["cells"]) == 8
    r = http.get(f"/api/v1/sweeps/{sid}/trials", params={"sort": "params.hidden_units", "order": "desc"})
    assert r.status_code == 200 and r.json()["items"][0]["params"]["hidden_units"] == 128

    # Bad input: 422 with the field's path, 404 for what is not there.
    bad = http.get(f"/api/v1/sweeps/{sid}/heatmap", params={"x": "learning_rate", "y": "colour"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "y"]
    same = http.get(f"/api/v1/sweeps/{sid}/heatmap", params={"x": "layers", "y": "layers"})
    assert same.status_code == 422 and same.json()["detail"][0]["loc"] == ["query", "y"]
    assert http.get(f"/api/v1/sweeps/{sid}/trials", params={"sort": "params.colour"}).status_code == 422
    assert http.get("/api/v1/sweeps/999/history").status_code == 404

    # Pages: a clear HTML answer for a missing sweep or a bad query; no inline script.
    page = http.get(f"/sweeps/{sid}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and " onclick=" not in page.text and " style=" not in page.text
    missing = http.get("/sweeps/999")
    assert missing.status_code == 404 and "There is no sweep 999." in missing.text
    assert http.get(f"/sweeps/{sid}", params={"sort": "colour"}).status_code == 400
    assert http.get(f"/sweeps/{sid}", params={"page": "x"}).status_code == 400
    assert http.get("/static/vendor/echarts.min.js").status_code == 200

    # Cancel from the page needs htmx's header (a cross-site form cannot send it).
    running = seeded.running_id
    assert http.post(f"/sweeps/{running}/cancel").status_code == 403
    assert http.get(f"/api/v1/sweeps/{running}").json()["status"] == "running"
    done = http.post(f"/sweeps/{running}/cancel", headers={"HX-Request": "true"})
    assert done.status_code == 200 and 'data-status="canceled"' in done.text
