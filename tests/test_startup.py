"""How gridsweep's processes start (app/cli/startup.py): heavy imports with the cyclic GC paused
and frozen after, numpy's BLAS on one thread. Checked in fresh interpreters and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, Server, cli_env
from tests.robust_helpers import log_text


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line, as JSON."""
    cmd = [sys.executable, "-c", code]
    r = subprocess.run(cmd, cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_heavy_imports_run_without_the_gc_and_freeze_what_they_built() -> None:
    got = run_python(
        """
import gc, json
from app.cli.startup import heavy_imports
before = gc.get_freeze_count()
with heavy_imports():
    inside = gc.isenabled()
    import torch
    with heavy_imports():  # nested: the outer one resumes
        nested_inside = gc.isenabled()
    after_nested = gc.isenabled()
after, frozen = gc.isenabled(), gc.get_freeze_count()
gc.disable()  # paused by the caller: left paused, nothing frozen
with heavy_imports():
    pass
print(json.dumps({"before": before, "inside": inside, "nested_inside": nested_inside,
    "after_nested": after_nested, "after": after, "frozen": frozen,
    "caller_paused": gc.isenabled(), "frozen_again": gc.get_freeze_count()}))
"""
    )
    assert got["before"] == 0 and got["inside"] is False and got["nested_inside"] is False
    assert got["after_nested"] is False and got["after"] is True
    assert got["frozen"] > 100_000, got  # torch's modules, functions and classes
    assert got["caller_paused"] is False and got["frozen_again"] == got["frozen"]


def blas_threads_probe() -> str:
    """A ``gridsweep --help`` in this interpreter that prints, at exit, numpy's BLAS threads."""
    return """
import atexit, json, sys
def report():
    import numpy, threadpoolctl
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
    print(json.dumps({"openblas_threads": blas}))
atexit.register(report)
sys.argv = ["gridsweep", "--help"]
from app.cli.main import cli
cli()
"""


def test_a_gridsweep_process_runs_numpy_blas_on_one_thread_unless_told() -> None:
    assert run_python(blas_threads_probe())["openblas_threads"] == [1]
    assert run_python(blas_threads_probe(), OPENBLAS_NUM_THREADS="2")["openblas_threads"] == [2]


def test_the_worker_imports_torch_with_the_gc_paused(
    server: Server, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    worker = start_worker(server.url, "--exit-when-idle", GRIDSWEEP_LOG_LEVEL="debug")
    assert worker.wait(timeout=120) == 0  # --exit-when-idle: at its first empty claim
    lines = [json.loads(x) for x in log_text(tmp_path / "worker-0.log").splitlines() if x.startswith("{")]
    startup = [i for i, x in enumerate(lines) if x["logger"] == "gridsweep.startup"]
    assert len(startup) == 1 and "with the GC paused" in lines[startup[0]]["msg"], lines
    frozen = int(lines[startup[0]]["msg"].split("; ")[1].split()[0])
    assert frozen > 100_000  # torch and the worker: frozen before the first claim
    registered = next(i for i, x in enumerate(lines) if "registered as" in x["msg"])
    assert startup[0] < registered
