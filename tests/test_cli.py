"""The ``gridsweep`` command as real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from app.cli.local import free_port, wait_healthy
from app.db import make_engine
from app.migrate import is_at_head, upgrade
from tests.conftest import ROOT, Server, cli_env

pytestmark = pytest.mark.slow

SMALL = {"name": "cli", "dataset": "moons", "parameters": {"hidden_units": [8, 16], "epochs": 2}}


def gridsweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_run_moons_example_reaches_95_percent_validation_accuracy(tmp_path: Path) -> None:
    """The issue's acceptance test: `gridsweep run examples/moons.yaml` ends with val accuracy >= 0.95."""
    r = gridsweep(
        "run", "examples/moons.yaml", "--json", "--db", f"sqlite:///{tmp_path / 'run.db'}", "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # stdout is the JSON alone; progress goes to stderr
    sweep, best, board = out["sweep"], out["best"], out["leaderboard"]
    assert sweep["status"] == "succeeded" and sweep["n_trials"] == 54 and sweep["counts"]["succeeded"] == 54
    accuracy = best["validation"]["metrics_mean"]["val_accuracy"]
    print(
        f"\nmoons: best {best['params']}, val_loss {best['validation']['mean']:.4f}, val_accuracy {accuracy}"
    )
    assert accuracy >= 0.95
    assert len(board) == 10 and board[0]["config_index"] == best["config_index"]
    assert [e["mean"] for e in board] == sorted(e["mean"] for e in board)  # val_loss: lower is better
    assert set(best["test"]) == {"test_loss", "test_error", "test_accuracy", "test_log_loss"}


def test_run_rejects_a_bad_spec_file_with_exit_code_2_and_the_field_path(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    bad = write_spec(tmp_path, {**SMALL, "parameters": {"activation": ["relu", "swish"]}})
    r = gridsweep("run", bad, "--db", db)
    assert r.returncode == 2 and "parameters.activation[1]" in r.stderr, r.stderr
    assert "'swish' is not one of relu, tanh" in r.stderr, r.stderr

    r = gridsweep("run", str(tmp_path / "missing.yaml"), "--db", db)
    assert r.returncode == 2 and "cannot read" in r.stderr

    r = gridsweep("run", "examples/moons.yaml", "--db", db, "--device", "tpu")
    assert r.returncode == 2 and "unknown device 'tpu'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.db").exists()  # nothing stored


def test_submit_wait_status_and_best_against_a_server(
    start_server: Callable[..., Server], start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # The CLI speaks HTTP only: one backend is enough here (the API's own tests run on both).
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(db)
    server = start_server(db)
    start_worker(server.url)
    r = gridsweep("submit", write_spec(tmp_path, SMALL), "--server", server.url, "--wait", "--poll", "0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    sid = int(lines[0])
    # The sweep's line, the leaderboard, then the best config.
    assert lines[1].startswith(f"sweep {sid} succeeded: 2/2 trials done") and lines[2].startswith("rank")
    assert any(ln.startswith("best config (trial") for ln in lines) and "held-out test_accuracy" in r.stdout
    assert "[2/2] trial" in r.stderr and f"sweep {sid} succeeded" in r.stderr  # progress, then the verdict

    r = gridsweep("status", str(sid), "--server", server.url)
    assert r.returncode == 0 and f"sweep {sid} succeeded: 2/2 trials done" in r.stdout
    assert "succeeded 2" in r.stdout

    r = gridsweep("best", str(sid), "--server", server.url, "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == server.http.get(f"/api/v1/sweeps/{sid}/best").json()
    assert set(json.loads(r.stdout)["test"]) == {"test_loss", "test_error", "test_accuracy", "test_log_loss"}

    # Rejected by the API once it has looked the dataset up: still exit 2 and the field path.
    wrong = {**SMALL, "dataset": "friedman1", "metric": {"name": "val_accuracy"}}
    r = gridsweep("submit", write_spec(tmp_path, wrong, "wrong.yaml"), "--server", server.url)
    assert r.returncode == 2 and "metric.name: val_accuracy needs a classification dataset" in r.stderr
    r = gridsweep("status", "9999", "--server", server.url)
    assert r.returncode == 2 and "Error: no sweep 9999" in r.stderr


def test_db_upgrade(empty_db_url: str) -> None:
    r = gridsweep("db", "upgrade", "--db", empty_db_url)
    assert r.returncode == 0 and "database at head" in r.stdout, r.stderr[-2000:]
    engine = make_engine(empty_db_url)
    try:
        assert is_at_head(engine)
    finally:
        engine.dispose()


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (what a terminal's Ctrl-C could reach)."""
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(p))
    return out


def test_up_runs_sweeps_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    db = tmp_path / "up.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["up", "--db", f"sqlite:///{db}", "--port", str(port), "--workers", "1", "--device", "cpu"]
    log = open(tmp_path / "up.log", "wb")
    # A session of its own, like a terminal: Ctrl-C is SIGINT to its foreground process group.
    # SIGINT reset to its default first, as in a terminal's foreground job (a background job of a
    # script, e.g. a CI runner's, inherits it ignored).
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    up = subprocess.Popen(
        [sys.executable, "-c", reset, "-m", "app.cli", *args],
        cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(url, timeout=120, proc=up)
        with httpx.Client(base_url=url, timeout=30) as http:
            sid = http.post("/api/v1/sweeps", json=SMALL).json()["id"]
            assert wait_for(lambda: http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "succeeded")
            # A long one, caught mid-training by the Ctrl-C: its trial goes back to the queue.
            long = {**SMALL, "parameters": {"epochs": 10_000, "batch_size": 8}}
            lid = http.post("/api/v1/sweeps", json=long).json()["id"]

            def training() -> bool:
                running = http.get(f"/api/v1/sweeps/{lid}/trials", params={"status": "running"}).json()
                return any(t["epochs_done"] >= 1 for t in running["items"])

            assert wait_for(training)
        assert len(session_pids(up.pid)) == 3  # up, the server, one worker

        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=60) == 0
        assert wait_for(lambda: session_pids(up.pid) == [], timeout=10), session_pids(up.pid)
    finally:
        for pid in session_pids(up.pid):  # only if the test failed: nothing may outlive it
            os.kill(pid, signal.SIGKILL)
        log.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, attempt, lease_token FROM trial WHERE sweep_id = ?", (lid,)
        ).fetchall()
    assert rows == [("queued", 0, None)]  # released, no attempt used


def test_a_killed_up_leaves_neither_its_server_nor_its_workers(tmp_path: Path) -> None:
    """SIGKILL gives ``up`` no chance to stop its children: each stops itself once its lifeline
    to ``up`` is cut (app/cli/lifeline.py), instead of serving and claiming on as orphans."""
    port = free_port()
    args = ["up", "--db", f"sqlite:///{tmp_path / 'up.db'}", "--port", str(port), "--workers", "1"]
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args, "--device", "cpu"],
        cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120, proc=up)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            # The worker is up and waits for work (a long-poll claim in flight).
            assert wait_for(lambda: len(http.get("/api/v1/workers").json()) == 1, timeout=120)
        children = [p for p in session_pids(up.pid) if p != up.pid]
        assert len(children) == 2  # the server and the worker
        up.kill()
        up.wait(timeout=30)
        # A guard against hanging: the worker's waiting claim is cut short, the server shuts down.
        assert wait_for(lambda: session_pids(up.pid) == [], timeout=60), session_pids(up.pid)
    finally:
        for pid in session_pids(up.pid):  # only if the test failed: nothing may outlive it
            os.kill(pid, signal.SIGKILL)


def wait_for(check: Callable[[], bool], timeout: float = 180) -> bool:
    """Poll until ``check()`` holds (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_every_command_is_listed_where_it_lives_and_loads_alone() -> None:
    """``gridsweep`` loads a command's module only when it runs (``COMMAND_MODULES``): the table
    names every module's every command, and ``gridsweep worker`` imports none of the others."""
    import importlib

    from app.cli.main import COMMAND_MODULES

    found = {}
    for module in set(COMMAND_MODULES.values()):
        for command in importlib.import_module(f"app.cli.{module}").COMMANDS:
            found[command.name] = module
    assert found == COMMAND_MODULES
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom app.cli.main import main\n"
        "r = CliRunner().invoke(main, ['worker', '--help'])\nassert r.exit_code == 0, r.output\n"
        "import json\nprint(json.dumps([m for m in sys.modules if m.startswith('app.cli.')]))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert "app.cli.serving" in loaded
    others = {
        "app.cli.ci",
        "app.cli.tokens",
        "app.cli.manage",
        "app.cli.data",
        "app.cli.sweeps",
        "app.cli.run",
    }
    assert not others & loaded
