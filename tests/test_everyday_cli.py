"""Everyday commands (issue 16) through real servers and real processes: sweeps, cancel, delete,
export, trials, trial; exit codes and error texts (each quoted); --json errors; Ctrl-C; the
progress bar on a pseudo-terminal; the one --json shape of run and submit; the Makefile."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from app.cli.main import main
from app.cli.reports import Verdict, junit_xml
from tests.conftest import PG_URL, ROOT, Server, cli_env
from tests.test_everyday_api import SPEC, Worker

pytestmark = pytest.mark.slow

SMALL = """\
dataset: moons
parameters:
  hidden_units: [8, 16]
  epochs: 2
seeds: 0
"""


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def gridsweep(*args: str, timeout: float = 240, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(GRIDSWEEP_LOG_LEVEL="WARNING"), "CI": ""}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def test_sweeps_cancel_delete_export_trials_trial(server: Server, tmp_path: Path) -> None:
    url = ["--server", server.url]
    http = server.http
    sid = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    w = Worker(http)
    done = w.claim(2)
    w.complete(done)
    running = w.claim(1)
    w.epochs(running, 1)

    r = cli("sweeps", *url)
    assert r.exit_code == 0, r.output
    head, _, row = r.stdout.splitlines()
    assert head.split() == [
        "id",
        "name",
        "dataset",
        "status",
        "progress",
        "best",
        "created",
        "(UTC)",
        "duration",
    ]
    assert row.split()[:5] == [str(sid), "everyday", "moons", "running", "2/12"]
    assert "val_error 0.1000 (error, fraction)" in row  # moons ranks by its default metric, with units

    r = cli("trials", str(sid), "--status", "succeeded", *url)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    metric = ["val_error", "(error,", "fraction)"]
    head = ["id", "config", "seed", "params", "status", *metric, "epochs", "duration"]
    assert lines[0].split() == head
    assert [ln.split()[0] for ln in lines[2:]] == [str(t["trial_id"]) for t in done]
    assert "2 of 2 search trials" in r.stderr and "4/4" in lines[2] and "0.25s" in lines[2]

    r = cli("trial", str(running[0]["trial_id"]), *url)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"trial {running[0]['trial_id']} of sweep {sid}: running (search)")
    assert "val_loss: 0.5" in r.stdout and "epochs: 1/4" in r.stdout

    r = cli("delete", str(sid), "--yes", *url)
    assert r.exit_code == 1
    assert f"sweep {sid} is running: cancel it first (gridsweep cancel {sid}), or pass --force" in r.stderr

    out = tmp_path / "trials.csv"
    r = cli("export", str(sid), "-o", str(out), *url)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 12 and df.columns[:5].tolist() == ["id", "role", "config_index", "seed", "status"]
    assert f"sweep {sid}: " in r.stderr and f"of csv written to {out}" in r.stderr
    r = cli("export", str(sid), "-o", str(tmp_path / "t.parquet"), *url)
    assert r.exit_code == 0 and len(pd.read_parquet(tmp_path / "t.parquet")) == 12

    r = cli("cancel", str(sid), *url)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == (
        f"sweep {sid} canceled: 9 trial(s) canceled; 1 running trial(s) stop at their next epoch"
    )
    r = cli("delete", str(sid), *url)  # no terminal to ask on: --yes is needed
    assert r.exit_code == 2 and f"not deleting sweep {sid} without confirmation: pass --yes" in r.stderr
    r = cli("delete", str(sid), "--yes", *url)
    assert r.exit_code == 0 and f"sweep {sid} deleted" in r.stderr
    # --force cancels a running sweep first.
    other = http.post("/api/v1/sweeps", json=SPEC).json()["id"]
    assert cli("delete", str(other), "--force", "--yes", *url).exit_code == 0
    assert http.get(f"/api/v1/sweeps/{other}").status_code == 404

    # An unknown sweep: exit 2, "no sweep N", for every command; with --json a JSON error object.
    for args in (["status", str(sid)], ["best", str(sid)], ["trials", str(sid)], ["cancel", str(sid)]):
        r = cli(*args, *url)
        assert (r.exit_code, r.stderr.strip()) == (2, f"Error: no sweep {sid}"), args
    r = cli("status", "999", "--json", *url)
    assert r.exit_code == 2 and json.loads(r.stdout) == {
        "error": "no sweep 999",
        "exit_code": 2,
        "errors": [],
    }
    r = cli("trial", "999999", *url)
    assert (r.exit_code, r.stderr.strip()) == (2, "Error: no trial 999999")


def test_spec_errors_in_plain_words_and_as_json(tmp_path: Path) -> None:
    def submit(text: str, *extra: str) -> Result:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        return cli("submit", str(path), "--dry-run", *extra)

    r = submit("dataset: moons\nparameters:\n  hiden_units: [8]\n  optimizer: rmsprop\n  batch_size: 0\n")
    assert r.exit_code == 2
    assert f"{tmp_path / 'spec.yaml'} is not a valid spec:" in r.stderr
    assert (
        "  parameters.hiden_units: unknown key 'hiden_units': did you mean hidden_units? (allowed keys: "
        "layers, hidden_units, activation, learning_rate, optimizer, batch_size, epochs, dropout, "
        "weight_decay, loss)"
    ) in r.stderr
    assert "  parameters.optimizer: 'rmsprop' is not one of sgd, momentum, adam, adamw" in r.stderr
    assert "  parameters.batch_size: must be greater than 0, got 0" in r.stderr
    assert "('sgd'" not in r.stderr and "Extra inputs" not in r.stderr  # no Python or Pydantic speak

    r = submit("dataset: moons\nmetric: {name: val_loss}\nmetric: {name: val_error}\n")
    assert r.exit_code == 2
    assert (
        f"{tmp_path / 'spec.yaml'}, line 3, column 1: key 'metric' appears twice in one mapping "
        "(first at line 2); keep one of them"
    ) in r.stderr
    r = submit("dataset: moons\nparameters:\n  epochs: [1, 2\n")
    assert r.exit_code == 2 and f"{tmp_path / 'spec.yaml'}, line 4, column 1:" in r.stderr
    assert "<unicode string>" not in r.stderr

    r = submit("dataset: moons\nmethod: bayes\n", "--json")
    assert r.exit_code == 2
    obj = json.loads(r.stdout)
    assert obj["exit_code"] == 2 and obj["errors"] == [
        {
            "loc": ["method"],
            "msg": "'bayes' is not one of grid, random, tpe, qmc",
            "type": "literal_error",
        }
    ]
    # Accepted: scalar seeds, W&B's method: grid, no name (the file's stem).
    r = submit("dataset: moons\nmethod: grid\nseeds: 0\n", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["name"] == "spec" and json.loads(r.stdout)["n_seeds"] == 1


def test_a_database_that_cannot_be_opened_is_one_line_exit_3(tmp_path: Path) -> None:
    url = PG_URL.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@") + "/no_such_db_gridsweep"
    r = gridsweep("db", "upgrade", "--db", url, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert r.returncode == 3 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("Error: cannot open the database at postgresql+psycopg://postgres:***@")
    assert "s3cret" not in r.stderr and "Traceback" not in r.stderr
    r = gridsweep("db", "upgrade", "--db", f"sqlite:///{tmp_path}/missing/dir/x.db", timeout=60)
    assert (
        r.returncode == 3
        and (
            f"Error: cannot open the database at sqlite:///{tmp_path}/missing/dir/x.db: "
            "unable to open database file"
        )
        in r.stderr
    )


def read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_run_draws_a_bar_on_a_terminal_and_json_has_submits_shape(tmp_path: Path) -> None:
    spec = tmp_path / "bar.yaml"
    spec.write_text(SMALL)
    leader, follower = pty.openpty()
    env = {**cli_env(GRIDSWEEP_LOG_LEVEL="WARNING"), "TERM": "xterm", "COLUMNS": "200", "CI": ""}
    args = ["run", str(spec), "--db", f"sqlite:///{tmp_path / 'run.db'}", "--device", "cpu", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    screen = read_pty(leader, proc, timeout=240).decode(errors="replace")
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(timeout=60) == 0, screen[-2000:]
    os.close(leader)
    assert "\x1b[" in screen and "\u2501" in screen  # ANSI and Rich's bar
    assert "sweep 1" in screen and "trials" in screen and "epochs " in screen and "ETA" in screen
    assert "2/2" in screen and "best val_error" in screen  # moons' default metric
    result = json.loads(stdout)
    assert result["status"] == "succeeded" and result["verdict"] == "succeeded" and result["exit_code"] == 0
    assert set(result) == {
        "sweep_id", "name", "status", "verdict", "exit_code", "message", "gate", "metric", "best_value",
        "best", "leaderboard", "counts", "n_trials", "sweep", "idempotency_key", "server", "elapsed_seconds",
    }  # fmt: skip
    assert result["name"] == "bar" and len(result["leaderboard"]) == 2


def test_submit_wait_prints_the_leaderboard_json_shape_and_ctrl_c(
    server: Server, start_worker: Any, tmp_path: Path
) -> None:
    spec = tmp_path / "wait.yaml"
    spec.write_text(SMALL)
    # No worker yet: Ctrl-C while waiting says the sweep goes on and how to cancel it (exit 130).
    env = {**cli_env(GRIDSWEEP_LOG_LEVEL="WARNING"), "CI": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "submit", str(spec), "--server", server.url, "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    sid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (
        f"interrupted: sweep {sid} goes on on the server ({server.url}); follow it with "
        f"`gridsweep status {sid}`, cancel it with `gridsweep cancel {sid}`"
    ) in err
    assert "Aborted!" not in err and server.http.get(f"/api/v1/sweeps/{sid}").json()["status"] == "queued"

    start_worker(server.url)
    r = gridsweep("submit", str(spec), "--server", server.url, "--wait", "--top", "1", "--poll", "0.3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith(f"sweep {sid + 1} succeeded: 2/2 trials done, epochs 6/6, best val_error ")
    assert "(error, fraction)" in lines[1]
    head = ["rank", "hidden_units", "val_error", "(mean", "±", "std;", "error,", "fraction)", "seeds"]
    assert lines[2].split() == head
    assert lines[4].split()[0] == "1" and lines[6].startswith("best config (trial ")
    assert lines[5] == (
        "ranked by val_error (error, fraction, minimize), ties broken by val_log_loss; "
        "each trial scored at its best epoch"
    )
    # Off a terminal: one plain line per finished trial, no ANSI.
    assert "[1/2] trial " in r.stderr and "\x1b[" not in r.stderr
    r = gridsweep("submit", str(spec), "--server", server.url, "--wait", "--json", "--poll", "0.3")
    waited = json.loads(r.stdout)
    r = gridsweep("submit", str(spec), "--server", server.url, "--json")
    queued = json.loads(r.stdout)
    assert (
        set(waited) == set(queued) and queued["verdict"] == "submitted" and waited["verdict"] == "succeeded"
    )


def test_junit_cases_carry_each_configs_time() -> None:
    sweep = {
        "id": 1, "name": "j", "spec": {"parameters": {"hidden_units": [8, 64]}},
        "metric": {"name": "val_loss"}, "best": None,
    }  # fmt: skip
    trials = [
        {"id": i, "config_index": c, "seed": s, "params": {"hidden_units": w}, "status": "succeeded",
         "val_loss": 0.5, "duration_seconds": d}
        for i, (c, s, w, d) in enumerate([(0, 0, 8, 0.1), (0, 1, 8, 0.15), (1, 0, 64, 0.8), (1, 1, 64, 0.7)])
    ]  # fmt: skip
    xml = junit_xml(sweep, trials, Verdict(0, "succeeded", "ok"), [], 2.0)
    assert 'name="config 0: hidden_units=8" classname="gridsweep.j" time="0.250"' in xml
    assert 'name="config 1: hidden_units=64" classname="gridsweep.j" time="1.500"' in xml


def test_make_run_installs_only_runtime_and_make_test_the_extras(tmp_path: Path) -> None:
    def dry(target: str) -> str:
        venv = f"VENV={tmp_path / 'venv'}"
        r = subprocess.run(["make", "-n", "-B", target, venv], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    run = dry("run")
    assert "pip install -q -e ." in run and "[test]" not in run and "gridsweep run examples/moons.yaml" in run
    assert "pip install -q -e '.[test]'" in dry("test")
