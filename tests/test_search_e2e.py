"""Real servers, real worker processes, fused packs: random and TPE sweeps, an API restart in the
middle of a TPE sweep, pruning inside packs with its audit, extension through the CLI, and the
422s with their field paths."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.cli.local import stop_all, wait_healthy
from tests.conftest import ROOT, Server, cli_env

pytestmark = pytest.mark.slow

SPACE: dict[str, Any] = {
    "learning_rate": {"min": 0.001, "max": 0.3, "distribution": "log_uniform"},
    "hidden_units": {"min": 4, "max": 32},
    "batch_size": 64,
    "epochs": 3,
}
TERMINAL = ("succeeded", "failed", "canceled")


def wait_done(http: httpx.Client, sids: list[int], timeout: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sweeps = [http.get(f"/api/v1/sweeps/{sid}").json() for sid in sids]
        except httpx.HTTPError:  # the server is restarting
            sweeps = []
        if sweeps and all(s["status"] in TERMINAL for s in sweeps):
            return sweeps
        assert time.monotonic() < deadline, f"timed out: {[(s['status'], s['counts']) for s in sweeps]}"
        time.sleep(0.5)


def trials(http: httpx.Client, sid: int, role: str = "search") -> list[dict[str, Any]]:
    return http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500, "role": role}).json()["items"]


def submit(http: httpx.Client, spec: dict[str, Any]) -> int:
    r = http.post("/api/v1/sweeps", json={"dataset": "moons", **spec})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_random_and_tpe_sweeps_with_three_workers_in_fused_packs(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any]
) -> None:
    server = start_server(db_url)
    random_sid = submit(
        server.http, {"name": "random", "method": "random", "max_trials": 14, "parameters": SPACE}
    )
    tpe_sid = submit(server.http, {"name": "tpe", "method": "tpe", "max_trials": 14, "parameters": SPACE})
    workers = [start_worker(server.url, "--pack-size", "4") for _ in range(3)]
    sweeps = wait_done(server.http, [random_sid, tpe_sid])
    stop_all(workers)
    for sweep in sweeps:
        assert sweep["status"] == "succeeded", sweep
        assert sweep["n_trials"] == 14 and sweep["counts"]["succeeded"] == 14
        ts = trials(server.http, sweep["id"])
        assert len(ts) == 14
        assert len({(t["params"]["learning_rate"], t["params"]["hidden_units"]) for t in ts}) == 14
        assert sorted(t["config_index"] for t in ts) == list(range(14))
        # Claimed in packs: trials claimed together share their start time.
        assert len({t["started_at"] for t in ts}) < 14
        assert sweep["best"]["test"]  # the best config was evaluated on the test split


def serve(db_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "app.cli", "serve", "--db", db_url, "--port", str(port), "--no-upgrade"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
    return proc


def test_an_api_restart_mid_tpe_sweep_loses_nothing_and_suggests_no_duplicate(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    server = start_server(db_url)
    spec = {"name": "tpe", "method": "tpe", "max_trials": 24, "parameters": {**SPACE, "epochs": 20}}
    sid = submit(server.http, spec)
    workers = [start_worker(server.url, "--pack-size", "4") for _ in range(2)]
    deadline = time.monotonic() + 240
    while server.http.get(f"/api/v1/sweeps/{sid}").json()["counts"]["succeeded"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stop_all([server.proc])  # the API goes away mid-sweep; the workers keep training and retry
    time.sleep(1.0)
    again = serve(db_url, server.port, tmp_path / "server-again.log")  # the same address, a new process
    try:
        (sweep,) = wait_done(server.http, [sid])
        ts = trials(server.http, sid)
    finally:
        stop_all(workers)
        stop_all([again])
    assert sweep["status"] == "succeeded", sweep
    assert len(ts) == 24 and {t["status"] for t in ts} == {"succeeded"}
    configs = [(t["params"]["learning_rate"], t["params"]["hidden_units"]) for t in ts]
    assert len(set(configs)) == 24 and sorted(t["config_index"] for t in ts) == list(range(24))


LRS = [0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]  # the good ones first: they set the median
GRID: dict[str, Any] = {"learning_rate": LRS, "hidden_units": [4, 16], "batch_size": 32, "epochs": 8}
# The pruner judges a smooth metric here: the error rate on moons ties many configs at its rungs.
SMOOTH = {"metric": "val_log_loss"}


def test_pruning_in_fused_packs_keeps_the_best_and_reports_its_audit(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any]
) -> None:
    server = start_server(db_url)
    plain = submit(server.http, {"name": "plain", "parameters": GRID, **SMOOTH})
    pruned = submit(
        server.http,
        {
            "name": "pruned",
            "parameters": GRID,
            **SMOOTH,
            "pruner": {"type": "median", "n_startup_trials": 2, "audit": 0.5},
        },
    )
    worker = start_worker(server.url, "--pack-size", "4", "--exit-when-idle")
    assert worker.wait(timeout=300) == 0
    a, b = (server.http.get(f"/api/v1/sweeps/{sid}").json() for sid in (plain, pruned))
    assert a["status"] == b["status"] == "succeeded"
    assert b["best"]["params"] == a["best"]["params"]  # the same best config, fewer epochs
    ts = trials(server.http, pruned)
    gone = [t for t in ts if t["status"] == "pruned"]
    assert gone and a["best"]["params"] not in [t["params"] for t in gone]
    report = b["pruning"]
    assert report["n_pruned"] == len(gone) and report["epochs_saved"] == sum(
        8 - t["epochs_done"] for t in gone
    )
    assert report["epochs_trained"] < 8 * len(ts) == sum(t["epochs_done"] for t in trials(server.http, plain))
    assert {"n_audited", "n_audited_finished", "n_beat_best_survivor", "max_margin", "best_survivor"} <= set(
        report
    )
    print(
        f"\npruning: {report['epochs_trained']} epochs instead of {8 * len(ts)}, "
        f"{report['n_pruned']} pruned, "
        f"audit: {report['n_audited']} kept, {report['n_beat_best_survivor']} beat the best survivor"
    )
    page = server.http.get(f"/sweeps/{pruned}").text  # the dashboard says what the pruner did
    assert 'data-testid="pruning"' in page and f'data-testid="n-pruned">{len(gone)}<' in page
    trial_page = server.http.get(f"/trials/{gone[0]['id']}").text
    assert 'data-testid="trial-rung"' in trial_page and "pruned at epoch" in trial_page
    for t in gone:  # it left its pack at the rung that pruned it, and the user can see why
        detail = server.http.get(f"/api/v1/trials/{t['id']}").json()
        (decision,) = [r for r in detail["rungs"] if r["decision"] == "prune"]
        assert decision["epoch"] == t["epochs_done"] == len(detail["epochs"])
        assert "median" in decision["reason"] or "seed" in decision["reason"]


def gridsweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subgrids_dry_run_extend_through_the_cli_and_field_paths(
    db_url: str, start_server: Callable[..., Server], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    spec = {
        "name": "sub",
        "dataset": "moons",
        "parameters": [
            {"optimizer": "sgd", "learning_rate": [0.1, 0.5], "epochs": 2},
            {"optimizer": "adam", "learning_rate": [0.01, 0.1], "epochs": 2},
            {"optimizer": "sgd", "learning_rate": 0.1, "epochs": 2},  # already in the first sub-grid
        ],
    }
    path = tmp_path / "sub.yaml"
    path.write_text(yaml.safe_dump(spec))
    dry = gridsweep("submit", "--dry-run", str(path), "--json")
    assert dry.returncode == 0, dry.stderr
    assert '"n_configs": 4' in dry.stdout and '"n_grids": 3' in dry.stdout

    server = start_server(db_url)
    r = server.http.post("/api/v1/sweeps", json=spec)
    assert r.status_code == 201 and r.json()["n_configs"] == 4
    sid = r.json()["id"]
    start_worker(server.url, "--pack-size", "4", "--exit-when-idle").wait(timeout=180)
    first = {t["id"]: t["finished_at"] for t in trials(server.http, sid)}
    assert server.http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "succeeded"

    more = {**spec, "parameters": {"optimizer": "adam", "learning_rate": [0.01, 0.05], "epochs": 2}}
    path.write_text(yaml.safe_dump(more))
    out = gridsweep("extend", str(sid), str(path), "--server", server.url)
    assert out.returncode == 0, out.stderr
    assert "1 new trials (1 new configs, 1 reused)" in out.stdout
    assert server.http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "running"
    start_worker(server.url, "--pack-size", "4", "--exit-when-idle").wait(timeout=180)
    after = trials(server.http, sid)
    assert len(after) == 5 and {t["id"]: t["finished_at"] for t in after if t["id"] in first} == first
    assert server.http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "succeeded"

    bad = server.http.post(f"/api/v1/sweeps/{sid}/extend", json={**more, "split": {"validation": 0.3}})
    assert bad.status_code == 422 and [e["loc"] for e in bad.json()["detail"]] == [["body", "split"]]
    path.write_text(yaml.safe_dump({**more, "dataset": "circles"}))
    out = gridsweep("extend", str(sid), str(path), "--server", server.url)
    assert out.returncode == 2 and "dataset:" in out.stderr

    cases = [
        (
            {"parameters": {"learning_rate": {"min": 0.1, "max": 0.01}}},
            ["body", "parameters", "learning_rate", "max"],
        ),
        (
            {"parameters": {"learning_rate": {"min": 0, "max": 0.1, "distribution": "log_uniform"}}},
            ["body", "parameters", "learning_rate", "min"],
        ),
        ({"method": "tpe", "parameters": SPACE}, ["body", "max_trials"]),
        ({"method": "random", "max_trials": 20_000, "parameters": SPACE}, ["body", "max_trials"]),
        ({"parameters": SPACE}, ["body", "parameters", "learning_rate"]),
    ]
    for change, loc in cases:
        r = server.http.post("/api/v1/sweeps", json={"name": "bad", "dataset": "moons", **change})
        assert r.status_code == 422, r.text
        assert loc in [e["loc"] for e in r.json()["detail"]], r.json()
