"""gridsweep against the tools people already use, whole commands on the same split.

Prints its figures; it is not a test. Every run is a child process timed from outside
(interpreter start-up, imports, migrations and exit included), one after another:

  gridsweep run      the fused engine (default pack size), and ``--pack-size 1`` (one by one);
  GridSearchCV       scikit-learn's MLPClassifier / MLPRegressor (by task) over the same grid,
                     a PredefinedSplit (train rows -1, validation rows 0), n_jobs = cores,
                     refit=True (the best config refitted, as users leave it);
  Optuna             GridSampler over the same grid, SQLite storage, the usual objective:
                     an nn.Sequential, a DataLoader over a TensorDataset, Adam; in one process
                     (torch on every core), and one process per core on one study (1 thread each);
  1-trial sweep      ``gridsweep run`` of one config, one epoch, against the import floor
                     ``python -c "import torch, sklearn.datasets"``.

Each tool trains on the rows of ``gridsweep.datasets.split_dataset`` (standardized with the
training rows' statistics) and reports its best validation score on the validation rows:
accuracy for circles, MSE in standardized target units for synthetic16.

Grids (issue 15): small = circles, layers {1, 2} x hidden {64, 128} x {relu, tanh, sigmoid}
x 12 learning rates, Adam, batch 128, 3 epochs (144 configs); synthetic16 = layers {1, 2, 3} x
hidden {32, 128} x {relu, tanh} x 4 learning rates, Adam, batch 256, 5 epochs (48 configs).
``--quick`` (``QUICK``): 4 configs of the small grid and 2 of synthetic16, 1 epoch each: the
tools' fixed costs only, in about 90 s on a 2-core machine.

``--repeat N``: N rounds of every tool per grid (each round every tool once, the order rotated),
figures the medians and ratios the medians of each round's own ratios (the host's speed drifts
by tens of percent over minutes on a shared VM); ``--no-optuna`` leaves Optuna out.

    python bench/peers.py [--quick] [--only small,synthetic16,floor] [--repeat N] [--no-optuna]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL_LRS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1]
GRIDS: dict[str, dict[str, Any]] = {
    "small": {
        "dataset": "circles",
        "task": "classification",
        "split": {"validation": 0.2, "test": 0.2, "seed": 0},
        "grid": {
            "layers": [1, 2],
            "hidden_units": [64, 128],
            "activation": ["relu", "tanh", "sigmoid"],
            "learning_rate": SMALL_LRS,
        },
        "batch_size": 128,
        "epochs": 3,
    },
    "synthetic16": {
        "dataset": "synthetic16",
        "task": "regression",
        "split": {"validation": 1 / 6, "test": 1 / 6, "seed": 0},
        "grid": {
            "layers": [1, 2, 3],
            "hidden_units": [32, 128],
            "activation": ["relu", "tanh"],
            "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
        },
        "batch_size": 256,
        "epochs": 5,
    },
}
# --quick: a few configs of each grid, one epoch (the tools' fixed costs dominate).
QUICK = {
    "small": {
        "layers": [1, 2],
        "hidden_units": [64],
        "activation": ["relu", "tanh"],
        "learning_rate": [1e-2],
    },
    "synthetic16": {
        "layers": [1],
        "hidden_units": [32],
        "activation": ["relu"],
        "learning_rate": [1e-2, 3e-2],
    },
}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def setting(name: str, quick: bool) -> dict[str, Any]:
    g = dict(GRIDS[name])
    if quick:
        g = {**g, "grid": QUICK[name], "epochs": 1}
    return g


def configs(g: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(g["grid"])
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*g["grid"].values())]


def score_name(g: dict[str, Any]) -> tuple[str, str]:
    return ("val_accuracy", "max") if g["task"] == "classification" else ("val_mse", "min")


# ----------------------------------------------------------------------------- the children


def split_arrays(g: dict[str, Any]) -> Any:
    from gridsweep.datasets import load_builtin, split_dataset

    return split_dataset(load_builtin(g["dataset"]), **g["split"])


def child_sklearn(g: dict[str, Any]) -> float:
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    s = split_arrays(g)
    X = np.vstack([s.X_train, s.X_val])
    y = np.concatenate([s.y_train, s.y_val])
    fold = np.concatenate([np.full(len(s.y_train), -1), np.zeros(len(s.y_val), dtype=int)])
    act = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic"}
    grid = [
        {
            "hidden_layer_sizes": [(c["hidden_units"],) * c["layers"]],
            "activation": [act[c["activation"]]],
            "learning_rate_init": [c["learning_rate"]],
        }
        for c in configs(g)
    ]
    cls = MLPClassifier if g["task"] == "classification" else MLPRegressor
    est = cls(solver="adam", batch_size=g["batch_size"], max_iter=g["epochs"], random_state=0, tol=0.0)
    scoring = "accuracy" if g["task"] == "classification" else "neg_mean_squared_error"
    search = GridSearchCV(est, grid, scoring=scoring, cv=PredefinedSplit(fold), n_jobs=cores())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return float(search.best_score_) if g["task"] == "classification" else -float(search.best_score_)


def objective_for(g: dict[str, Any], s: Any) -> Any:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    classify = g["task"] == "classification"
    Xt, Xv = torch.tensor(s.X_train, dtype=torch.float32), torch.tensor(s.X_val, dtype=torch.float32)
    yt = torch.tensor(s.y_train, dtype=torch.float32)
    yv = torch.tensor(s.y_val, dtype=torch.float32)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

    def objective(trial: Any) -> float:
        layers = trial.suggest_categorical("layers", g["grid"]["layers"])
        hidden = trial.suggest_categorical("hidden_units", g["grid"]["hidden_units"])
        act = trial.suggest_categorical("activation", g["grid"]["activation"])
        lr = trial.suggest_categorical("learning_rate", g["grid"]["learning_rate"])
        torch.manual_seed(0)
        mods: list[nn.Module] = []
        width = Xt.shape[1]
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), acts[act]()]
            width = hidden
        model = nn.Sequential(*mods, nn.Linear(width, 1))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        lossf = nn.BCEWithLogitsLoss() if classify else nn.MSELoss()
        loader = DataLoader(TensorDataset(Xt, yt), batch_size=g["batch_size"], shuffle=True)
        for _ in range(g["epochs"]):
            model.train()
            for xb, yb in loader:
                opt.zero_grad()
                lossf(model(xb).squeeze(1), yb).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            out = model(Xv).squeeze(1)
        if classify:
            return float(((out > 0).float() == yv).float().mean())
        return float(((out - yv) ** 2).mean())

    return objective


def child_optuna(g: dict[str, Any], storage: str, n_trials: int, threads: int | None) -> float:
    import optuna
    import torch

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {k: list(v) for k, v in g["grid"].items()}
    direction = "maximize" if g["task"] == "classification" else "minimize"
    study = optuna.create_study(
        study_name="peers",
        storage=storage,
        sampler=optuna.samplers.GridSampler(space, seed=0),
        direction=direction,
        load_if_exists=True,
    )
    study.optimize(objective_for(g, split_arrays(g)), n_trials=n_trials)
    return float(study.best_value)


# ----------------------------------------------------------------------------- the parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return wall, r.stdout


def gridsweep_spec(g: dict[str, Any], tmp: Path, name: str) -> Path:
    metric = {"name": "val_accuracy", "goal": "maximize"} if g["task"] == "classification" else None
    spec = {
        "name": name,
        "dataset": g["dataset"],
        "metric": metric or {"name": "val_loss", "goal": "minimize"},
        "parameters": {
            **g["grid"],
            "optimizer": "adam",
            "batch_size": g["batch_size"],
            "epochs": g["epochs"],
            **({} if g["task"] == "classification" else {"loss": "mse"}),
        },
        "seeds": [0],
        "split": g["split"],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_gridsweep(g: dict[str, Any], tmp: Path, name: str, *flags: str) -> tuple[float, float]:
    spec = gridsweep_spec(g, tmp, name)
    db = f"sqlite:///{tmp / (name + '.db')}"
    cmd = [sys.executable, "-m", "app.cli", "run", str(spec), "--db", db, "--device", "cpu", "-q", "--json"]
    wall, out = timed([*cmd, *flags])
    metrics = json.loads(out)["best"]["validation"]["metrics_mean"]
    return wall, metrics["val_accuracy" if g["task"] == "classification" else "val_loss"]


def run_child(kind: str, name: str, quick: bool, *extra: str) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--grid", name, *(["--quick"] if quick else []), *extra]
    wall, out = timed(cmd)
    return wall, float(out.strip().splitlines()[-1])


def run_optuna_parallel(name: str, quick: bool, storage: str, n: int) -> tuple[float, float]:
    """One process per core on one study; the wall time is the slowest one's."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    k = cores()
    per = math.ceil(n / k)
    direction = "maximize" if GRIDS[name]["task"] == "classification" else "minimize"
    optuna.create_study(study_name="peers", storage=storage, direction=direction)  # no race to create it
    base = [sys.executable, __file__, "--child", "optuna", "--grid", name, *(["--quick"] if quick else [])]
    cmd = [*base, "--storage", storage, "--n-trials", str(per), "--threads", "1"]
    t = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(k)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"optuna child exited {p.returncode}:\n{err.decode()[-3000:]}")
    wall = time.perf_counter() - t
    return wall, float(optuna.load_study(study_name="peers", storage=storage).best_value)


def machine() -> str:
    import platform

    import torch

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {cores()} usable cores, torch {torch.__version__}, Python {platform.python_version()}, "
        f"load average {load:.2f} at start"
    )


ONE_BY_ONE = ("--pack-size", "1")


def bench_grid(name: str, quick: bool, tmp: Path, repeat: int = 1, optuna: bool = True) -> None:
    """Every tool on grid ``name``, ``repeat`` rounds (each round every tool once, the order
    rotated): each figure is the median of its rounds, and the ratios are the medians of the
    ratios within a round (two runs a minute apart share the host's speed of that minute)."""
    g = setting(name, quick)
    n = len(configs(g))
    score, _ = score_name(g)
    print(f"\n{name}: {g['dataset']}, {n} configs, Adam, batch {g['batch_size']}, {g['epochs']} epoch(s)")

    def optuna_one(r: int) -> tuple[float, float]:
        return run_child("optuna", name, quick, "--storage", f"sqlite:///{tmp / f'{name}-o1-{r}.db'}")

    def optuna_per_core(r: int) -> tuple[float, float]:
        return run_optuna_parallel(name, quick, f"sqlite:///{tmp / f'{name}-ok-{r}.db'}", n)

    tools: list[tuple[str, Callable[[int], tuple[float, float]]]] = [
        ("gridsweep run (fused)", lambda r: run_gridsweep(g, tmp, f"{name}-fused-{r}")),
        ("gridsweep run --pack-size 1", lambda r: run_gridsweep(g, tmp, f"{name}-one-{r}", *ONE_BY_ONE)),
        (f"GridSearchCV (n_jobs={cores()})", lambda r: run_child("sklearn", name, quick)),
    ]
    if optuna:
        tools += [("Optuna GridSampler, 1 process", optuna_one)]
        tools += [(f"Optuna GridSampler, {cores()} processes", optuna_per_core)]
    walls: dict[str, list[float]] = {label: [] for label, _ in tools}
    bests: dict[str, float] = {}
    for r in range(repeat):
        k = r % len(tools)
        for label, fn in tools[k:] + tools[:k]:
            wall, best = fn(r)
            walls[label].append(wall)
            bests[label] = best
    for label, _ in tools:
        w = walls[label]
        spread = f" (rounds {min(w):.1f}-{max(w):.1f})" if repeat > 1 else ""
        print(f"  {label:36s} {statistics.median(w):7.1f} s   best {score} {bests[label]:.4f}{spread}")
    labels = [label for label, _ in tools]

    def ratio(a: str, b: str) -> float:  # the median of the rounds' own ratios
        return statistics.median(x / y for x, y in zip(walls[a], walls[b], strict=True))

    fused, one, gscv = labels[0], labels[1], labels[2]
    parts = [f"run / GridSearchCV {ratio(fused, gscv):.2f}x"]
    if optuna:
        parts.append(f"run / Optuna 1 process {ratio(fused, labels[3]):.2f}x")
    parts.append(f"--pack-size 1 / run {ratio(one, fused):.2f}x")
    print("  ratios: " + ", ".join(parts) + (f" (medians of {repeat} rounds)" if repeat > 1 else ""))


def bench_floor(tmp: Path) -> None:
    g = {**GRIDS["small"], "grid": {"layers": [1], "hidden_units": [64], "activation": ["relu"],
                                    "learning_rate": [1e-2]}, "epochs": 1}  # fmt: skip
    floor, _ = timed([sys.executable, "-c", "import torch, sklearn.datasets"])
    one, _ = run_gridsweep(g, tmp, "one-trial")
    print("\n1-trial sweep (circles, 1 config, 1 epoch) against the import floor")
    print(f"  python -c 'import torch, sklearn.datasets'  {floor:6.1f} s")
    print(f"  gridsweep run, 1 trial                    {one:6.1f} s   ({one / floor:.2f}x the floor)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few configs, 1 epoch (< 90 s)")
    ap.add_argument("--only", default="small,synthetic16,floor")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per grid (medians)")
    ap.add_argument("--no-optuna", action="store_true", help="leave Optuna out (slowest)")
    ap.add_argument("--child", choices=["sklearn", "optuna"], help=argparse.SUPPRESS)
    ap.add_argument("--grid", choices=list(GRIDS), help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    ap.add_argument("--n-trials", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        g = setting(args.grid, args.quick)
        if args.child == "sklearn":
            print(child_sklearn(g))
        else:
            print(child_optuna(g, args.storage, args.n_trials or len(configs(g)), args.threads))
        return
    print(f"machine: {machine()}")
    print("peers.py" + (" --quick (a few configs, 1 epoch: fixed costs dominate)" if args.quick else ""))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for part in args.only.split(","):
            if part == "floor":
                bench_floor(Path(d))
            else:
                bench_grid(part, args.quick, Path(d), max(1, args.repeat), not args.no_optuna)
    print(f"\n(whole benchmark {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
