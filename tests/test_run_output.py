"""What ``gridsweep run`` prints: off a terminal progress lines and no INFO logs, ``-q`` only the
result, on a pseudo-terminal the progress bar. Real processes on a one-epoch, two-trial sweep."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "dataset": "moons",
    "parameters": {"hidden_units": [8, 16], "epochs": 1, "layers": 1},
}


def run_args(tmp_path: Path, *flags: str) -> list[str]:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    db = f"sqlite:///{tmp_path / 'run.db'}"
    return [sys.executable, "-m", "app.cli", "run", str(spec), "--db", db, "--device", "cpu", *flags]


def run_quiet_json(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``gridsweep run -q --json`` of the tiny sweep, as a child process."""
    return subprocess.run(
        run_args(tmp_path, "-q", "--json"),
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def log_levels(stderr: str) -> list[str]:
    """The level of every log line (JSON off a terminal) on stderr."""
    levels = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            levels.append(json.loads(line)["level"])
    return levels


def test_run_off_a_terminal_prints_progress_lines_and_no_info_logs(tmp_path: Path) -> None:
    r = subprocess.run(
        run_args(tmp_path), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert [lv for lv in log_levels(r.stderr) if lv in ("debug", "info")] == [], r.stderr
    assert "Context impl" not in r.stderr and "setup plugin" not in r.stderr
    lines = r.stderr.splitlines()
    assert "sweep 1: 2 trials on moons" in lines
    assert sum(line.startswith(("[1/2] trial", "[2/2] trial")) for line in lines) == 2, r.stderr
    assert "best config" in r.stdout and "rank" in r.stdout

    # -v: the API's and the worker's INFO lines, alembic's setup lines still not.
    r = subprocess.run(
        run_args(tmp_path, "-v"), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    levels = log_levels(r.stderr)
    assert "info" in levels and "debug" not in levels
    assert "Context impl" not in r.stderr and "setup plugin" not in r.stderr


def test_run_quiet_prints_only_the_result(tmp_path: Path) -> None:
    r = run_quiet_json(tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    result = json.loads(r.stdout)
    assert result["status"] == "succeeded" and result["best"] is not None


def test_run_on_a_pseudo_terminal_draws_the_progress_bar(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="160")
    env.pop("CI", None)
    proc = subprocess.Popen(
        run_args(tmp_path), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen
    # Rich's bar: the sweep, its phase, "done/total trials", the best so far and the ETA.
    assert "sweep 1" in screen and "2/2" in screen and "trials ·" in screen and "ETA" in screen, screen
    assert "\x1b[" in screen  # drawn with terminal control codes, not plain lines
    assert "[1/2] trial" not in screen  # the plain lines are for logs and CI
    assert b"best config" in out


def test_run_exits_quickly_with_its_output_written_and_the_store_closed(tmp_path: Path) -> None:
    """The console script skips the interpreter's teardown (``app.cli.main.cli``): what it
    printed is all there, the exit status is kept, and the SQLite store was closed first."""
    r = run_quiet_json(tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"  # the whole JSON document, flushed
    # The API's lifespan disposed the store before the exit: the last connection checkpointed
    # SQLite's write-ahead log and removed it, and the store reads back whole.
    assert not (tmp_path / "run.db-wal").exists()
    from app.db import Database
    from app.models import Sweep

    database = Database(f"sqlite:///{tmp_path / 'run.db'}")
    try:
        with database.session(readonly=True) as s:
            assert [sw.status for sw in s.query(Sweep).all()] == ["succeeded"]
    finally:
        database.dispose()

    # An error keeps its documented exit status through the quick exit (2: a bad argument).
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(tmp_path / "missing.yaml")],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "missing.yaml: cannot read it" in r.stderr


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux: /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_ctrl_c_stops_the_run_its_worker_process_and_keeps_the_sweep(tmp_path: Path) -> None:
    """The workers of ``run`` are child processes: Ctrl-C stops them (their trials released to the
    store, queued again), ``run`` says how to go on and exits 130, and no worker is left behind."""
    long = {**TINY, "parameters": {**TINY["parameters"], "epochs": 10000, "hidden_units": [8]}}
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump(long))
    db = f"sqlite:///{tmp_path / 'run.db'}"
    args = [sys.executable, "-m", "app.cli", "run", str(spec), "--db", db, "--device", "cpu"]
    log = tmp_path / "run.err"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=err_file)
    from app.db import Database
    from app.models import Trial

    database = Database(db)

    def statuses() -> list[tuple[str, bool]]:
        with database.session(readonly=True) as s:
            return [(str(t.status), t.worker_id is not None) for t in s.query(Trial).all()]

    try:
        deadline = time.monotonic() + 120
        while "sweep 1:" not in log.read_text() or statuses() != [("running", True)]:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        workers = children(proc.pid)
        assert workers
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        err = log.read_text()
        assert proc.returncode == 130, err
        assert "interrupted: sweep 1 stays running" in err and "gridsweep up --db" in err, err
        assert not any(alive(w) for w in workers)
        assert statuses() == [("queued", False)]  # released by the worker, not left to a lease
    finally:
        if proc.poll() is None:
            proc.kill()
        database.dispose()


def test_a_killed_run_leaves_no_worker_training_on(tmp_path: Path) -> None:
    """SIGKILL (an OOM kill, a CI timeout) gives ``run`` no chance to stop its workers: each
    stops itself once its lifeline to ``run`` is cut (app/cli/lifeline.py), instead of training
    on as an orphan against the API that died with ``run``."""
    long = {**TINY, "parameters": {**TINY["parameters"], "epochs": 10000, "hidden_units": [8]}}
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump(long))
    db = f"sqlite:///{tmp_path / 'run.db'}"
    args = [sys.executable, "-m", "app.cli", "run", str(spec), "--db", db, "--device", "cpu"]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    from app.db import Database
    from app.models import TrialEpoch

    database = Database(db)

    def epochs_stored() -> int:
        try:
            with database.session(readonly=True) as s:
                return s.query(TrialEpoch).count()
        except Exception:  # not migrated yet
            return 0

    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while epochs_stored() == 0:  # training, mid-way through 10,000 epochs
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        workers = children(proc.pid)
        assert workers
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # a guard against hanging: a step, then out
        while any(alive(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their killed run"
            time.sleep(0.1)
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        database.dispose()


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has a CUDA device")
def test_a_missing_cuda_device_is_a_usage_error_before_the_sweep_is_stored(tmp_path: Path) -> None:
    r = subprocess.run(
        [*run_args(tmp_path, "--json")[:-3], "--device", "cuda", "--json"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "CUDA is not available" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["exit_code"] == 2
    from app.db import Database
    from app.models import Sweep

    database = Database(f"sqlite:///{tmp_path / 'run.db'}")
    try:
        with database.session(readonly=True) as s:
            assert s.query(Sweep).count() == 0
    finally:
        database.dispose()
