"""Search and pruning: TPE against the grid on a 500-config space, and pruning against the unpruned grid.

Prints its figures; it is not a test. Every run is a whole sweep through ``gridsweep run``
(in-process API on a fresh SQLite store, one worker, fused packs), read back from the store:

  grid    the 500 configs of the space, each trained to the end;
  tpe     ``method: tpe`` over the same 500 configs (lists: TPE picks among them), ``max_trials``
          of them, and over the same bounds as ranges (log-uniform widths and learning rates);
          time to reach the grid's best value, and to get within 5 % and 10 % of it;
  pruned  the grid with ``pruner: median`` (Optuna's defaults, then a warm-up of a third of the
          epochs) and ``pruner: asha``, each with ``audit: 0.1``: epochs trained against the
          unpruned grid's, whether the best config is the same, and what the audit saw.

Times are from the sweep's start (its first claim) to the finish of the trial that first
reached the value, so start-up and imports are left out.

    python bench/search.py [--quick] [--pack-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from app.db import Database  # noqa: E402
from app.models import Sweep, Trial  # noqa: E402


def space(quick: bool) -> dict[str, Any]:
    """layers 2 x hidden 5 x activation 2 x 25 learning rates = 500 configs (quick: 2 x 2 x 2 x 10 = 80)."""
    n_lr = 10 if quick else 25
    return {
        "layers": [1, 2],
        "hidden_units": [16, 64] if quick else [8, 16, 32, 64, 128],
        "activation": ["relu", "tanh"],
        "learning_rate": [float(f"{v:.3g}") for v in np.logspace(-4, -0.5, n_lr)],
        "optimizer": "adam",
        "batch_size": 64,
        "epochs": 6 if quick else 12,
    }


def run(spec: dict[str, Any], pack_size: int, workdir: Path) -> dict[str, Any]:
    """One sweep through ``gridsweep run``; returns its trials (finish order) and summary."""
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = workdir / f"{spec['name']}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSWEEP_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "app.cli", "run", str(path), "--db", f"sqlite:///{db}", "--json"]
    cmd += ["--pack-size", str(pack_size), "--device", "cpu"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"gridsweep run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    database = Database(f"sqlite:///{db}")
    try:
        with database.session(readonly=True) as s:
            sweep = s.scalars(select(Sweep)).one()
            rows = s.execute(
                select(Trial.finished_at, Trial.val_loss, Trial.status, Trial.epochs_done, Trial.config_key)
                .where(Trial.sweep_id == sweep.id, Trial.role == "search")
                .order_by(Trial.finished_at, Trial.id)
            ).all()
            t0 = sweep.started_at
    finally:
        database.dispose()
    return {
        "wall": wall,
        "best": out["best"],
        "pruning": out["sweep"].get("pruning"),
        "trials": [
            ((r[0] - t0).total_seconds(), r[1] if r[2] == "succeeded" else None, r[3], r[4]) for r in rows
        ],
        "span": max((r[0] - t0).total_seconds() for r in rows),
    }


def time_to(result: dict[str, Any], target: float) -> tuple[float | None, int | None]:
    """Seconds and trials until a finished trial's val_loss is <= ``target``."""
    for k, (t, v, _, _) in enumerate(result["trials"], start=1):
        if v is not None and v <= target:
            return t, k
    return None, None


def show(label: str, t: float | None, k: int | None) -> str:
    return f"{label:<34} " + ("not reached" if t is None else f"{t:7.1f} s after {k:4d} trials")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="an 80-config space, fewer epochs")
    ap.add_argument("--pack-size", type=int, default=16)
    ap.add_argument("--tpe-trials", type=int, default=0, help="max_trials of the TPE sweep (default: 20 %%)")
    args = ap.parse_args()
    params = space(args.quick)
    n_configs = int(np.prod([len(v) if isinstance(v, list) else 1 for v in params.values()]))
    base = {"dataset": "friedman1", "parameters": params, "seeds": [0]}
    tpe_trials = args.tpe_trials or n_configs // 5
    print(f"space: {n_configs} configs on friedman1, {params['epochs']} epochs, packs of {args.pack_size}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        grid = run({**base, "name": "grid"}, args.pack_size, work)
        best = grid["best"]["validation"]["mean"]
        print(f"grid: best val_loss {best:.4f} ({grid['best']['params']})")
        tpe = run({**base, "name": "tpe", "method": "tpe", "max_trials": tpe_trials}, args.pack_size, work)
        print(
            f"tpe ({tpe_trials} of the {n_configs} configs): "
            f"best val_loss {tpe['best']['validation']['mean']:.4f}"
        )
        # The same bounds as ranges: TPE then knows that learning rates and widths are ordered.
        ranged = {
            **params,
            "hidden_units": {"min": min(params["hidden_units"]), "max": max(params["hidden_units"]),
                             "distribution": "log_uniform"},
            "learning_rate": {"min": min(params["learning_rate"]), "max": max(params["learning_rate"]),
                              "distribution": "log_uniform"},
        }  # fmt: skip
        tpe_r = run(
            {**base, "parameters": ranged, "name": "tpe-ranges", "method": "tpe", "max_trials": tpe_trials},
            args.pack_size,
            work,
        )
        print(
            f"tpe over ranges ({tpe_trials} configs): best val_loss {tpe_r['best']['validation']['mean']:.4f}"
        )
        print("time to the grid's best value (val_loss, seed 0), and to within 5 % / 10 % of it:")
        for label, factor in (("", 1.0), (", within 5 %", 1.05), (", within 10 %", 1.10)):
            print(show(f"  grid{label}", *time_to(grid, best * factor)))
            print(show(f"  tpe{label}", *time_to(tpe, best * factor)))
            print(show(f"  tpe over ranges{label}", *time_to(tpe_r, best * factor)))
        print(
            f"  whole sweeps: grid {grid['span']:.1f} s, tpe {tpe['span']:.1f} s, "
            f"over ranges {tpe_r['span']:.1f} s"
        )
        epochs_grid = sum(e for _, _, e, _ in grid["trials"])
        print(f"pruning (the grid: {epochs_grid} epochs, {grid['span']:.1f} s):")
        warmup = params["epochs"] // 3
        pruners = {
            "median": {"type": "median", "audit": 0.1},
            f"median, warmup {warmup}": {"type": "median", "n_warmup_steps": warmup, "audit": 0.1},
            "asha": {"type": "asha", "audit": 0.1},
        }
        for k, (label, pruner) in enumerate(pruners.items()):
            p = run({**base, "name": f"pruned{k}", "pruner": pruner}, args.pack_size, work)
            epochs = sum(e for _, _, e, _ in p["trials"])
            same = p["best"]["params"] == grid["best"]["params"]
            a = p["pruning"]
            margin = "" if a["max_margin"] is None else f" by up to {a['max_margin']:.4f}"
            print(
                f"  {label:<16} {epochs:6d} epochs ({1 - epochs / epochs_grid:5.1%} saved), "
                f"{p['span']:6.1f} s; best val_loss {p['best']['validation']['mean']:.4f}, "
                f"same best config: {same}; audit: {a['n_audited']} kept, "
                f"{a['n_beat_best_survivor']} beat the best survivor{margin}"
            )


if __name__ == "__main__":
    main()
