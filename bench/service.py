"""Service overhead: the benchmark grid as a sweep through ``gridsweep run`` vs the engine alone.

Prints its figures; it is not a test. One after another, each as a child process of
this one (so both pay interpreter start-up and imports, and neither warms the other):

  engine   worker.fused_packs.train_packs over the grid, in claim order, in packs of the
           worker's default size and a part per core (what a worker does, without store
           or HTTP), then the best config retrained once on the reference path with its
           test evaluation (the sweep's final trial); timed inside (after a warm-up
           epoch, as a running worker has had) and as a whole command;
  service  ``gridsweep run`` on a fresh SQLite store (in-process API + one worker,
           default pack size): the sweep's own span from ``created_at`` to
           ``finished_at`` (store, HTTP, reporting, final trial and its model artifact
           included) and the whole command (with start-up, imports and migrations).

    python bench/service.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fused import grid, load, machine  # noqa: E402

from worker.fused_packs import train_packs  # noqa: E402
from worker.packing import auto_pack_size  # noqa: E402
from worker.train import train_trial  # noqa: E402


def spec(quick: bool) -> dict:
    lrs = sorted({c.learning_rate for c in grid(quick)})
    return {
        "name": "bench-synthetic16",
        "dataset": "synthetic16",
        "parameters": {
            "layers": [1, 2, 3],
            "hidden_units": [32, 128],
            "activation": ["relu", "tanh"],
            "learning_rate": lrs,
            "optimizer": "adam",
            "batch_size": 256,
            "epochs": 5,
            "loss": "mse",
        },
        "seeds": [0],
        "split": {"validation": 1 / 6, "test": 1 / 6, "seed": 0},
    }


def engine(quick: bool) -> tuple[float, float, list[float]]:
    cfgs, data, pack = grid(quick), load(), auto_pack_size("cpu")
    threads = torch.get_num_threads()  # the worker trains a CPU pack in one part per thread
    # Warm-up (allocator, page faults, kernels), as a running worker has: one epoch of a pack.
    train_packs([dataclasses.replace(c, epochs=1) for c in cfgs[-pack:]], data, threads=threads)
    t = time.perf_counter()
    vals = [
        r.metrics["val_loss"]
        for s in range(0, len(cfgs), pack)
        for r in train_packs(cfgs[s : s + pack], data, threads=threads)
    ]
    grid_s = time.perf_counter() - t
    best = cfgs[int(np.argmin(vals))]
    torch.set_num_threads(1)  # as `gridsweep run` trains a single trial
    train_trial(best, data, evaluate_test=True)
    return grid_s, time.perf_counter() - t, vals


def engine_command(quick: bool) -> tuple[float, dict]:
    """``engine`` in a child process: (its wall time, what it measured inside)."""
    cmd = [sys.executable, __file__, "--engine", *(["--quick"] if quick else [])]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"the engine run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def service(quick: bool) -> tuple[float, float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(quick)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSWEEP_")}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            str(path),
            "--db",
            f"sqlite:///{tmp}/bench.db",
            "--json",
        ]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"gridsweep run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    sweep = result["sweep"]
    span = (
        datetime.fromisoformat(sweep["finished_at"]) - datetime.fromisoformat(sweep["created_at"])
    ).total_seconds()
    return wall, span, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="48 configs (every 4th learning rate)")
    ap.add_argument("--engine", action="store_true", help="(internal) run the engine part, print JSON")
    args = ap.parse_args()
    if args.engine:
        grid_s, engine_s, vals = engine(args.quick)
        print(json.dumps({"grid_s": grid_s, "engine_s": engine_s, "vals": vals}))
        return
    n = len(grid(args.quick))
    print(f"machine: {machine()}")
    print(f"grid: {n} configs (+1 final retrain of the best config), packs of {auto_pack_size('cpu')}")
    engine_wall, inside = engine_command(args.quick)
    grid_s, engine_s, vals = inside["grid_s"], inside["engine_s"], inside["vals"]
    print(
        f"  engine: grid {grid_s:.1f} s ({n / grid_s:.2f} trials/s); "
        f"with the final retrain {engine_s:.1f} s; whole command {engine_wall:.1f} s"
    )
    wall, span, result = service(args.quick)
    print(f"  gridsweep run: sweep span {span:.1f} s; whole command {wall:.1f} s")
    print(f"  sweep span / engine (grid + final)   = {span / engine_s:.2f}   (target <= 1.2)")
    print(f"  sweep span / engine (grid only)      = {span / grid_s:.2f}")
    print(f"  whole command / engine whole command = {wall / engine_wall:.2f}")
    best = result["best"]
    print(
        f"  best config (service): config {best['config_index']} {json.dumps(best['params'], sort_keys=True)}"
    )
    # The same scale on both sides: the trial's val_loss (MSE in standardized units); the
    # sweep ranks by its own metric (the result's ``metric``), which may be another (val_rmse,
    # in the target's units).
    service_loss = best["validation"]["metrics_mean"]["val_loss"]
    print(
        f"  best config (engine): config {int(np.argmin(vals))}; val_loss {min(vals):.5f} (engine), "
        f"{service_loss:.5f} (service; it ranked by {result['metric']['name']})"
    )


if __name__ == "__main__":
    main()
