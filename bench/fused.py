"""The fused-training benchmark (issue 3). Prints its figures; it is not a test.

The public grid: synthetic16 (20,000 train / 5,000 validation rows, 16 features),
layers {1,2,3} x hidden {32,128} x activation {relu,tanh} x 16 learning rates
log-spaced 1e-4..3e-2 (192 configs), Adam, batch 256, 5 epochs, MSE. Run in one
process, one after another:

  (a) a plain per-trial PyTorch loop with a DataLoader (an Optuna/Ray Tune objective)
  (b) gridsweep's single-trial reference loop (worker.train.train_trial; --pack-size 1 used it
      until the worker trained a lone trial as a fused pack of one)
  (c) gridsweep fused (worker.fused_packs.train_packs, packs of --pack-size in claim order, each
      in one part per core as the worker does), also as one part on all cores (OpenMP, with
      worker.fused.train_pack: the worker trains each part on one torch thread), and
      with blocks forced to whole exact architectures ("group": auto on a CPU also cuts them to fit
      a core's cache) or padded ("pad", "pad_all")
  (d) scikit-learn MLPRegressor (adam, batch 256, 5 iterations)
  (e) early stopping (issue 13), on its own small grid: synthetic16 cut to 1,500 train / 500
      validation rows, layers {1,2} x hidden 256 x {relu,tanh} x 8 learning rates log-spaced
      1e-3..1e-1 (32 configs), Adam, batch 128, 16 epochs, one pack in one part per core,
      selected by val_rmse; with ``early_stopping: {patience: 2, min_delta: 0.01}`` (target
      units) about half to two thirds of the trials stop early and leave the pack (on a busy
      2-core VM: 23 of 32 stopped, 0.68 of the epochs trained, time ratio 0.75). Prints both
      times and their ratio (~1 minute on 2 busy cores), and checks that the trials that ran
      on got the same numbers.

    python bench/fused.py [--quick] [--pack-size 64] [--only a,b,c,d,e] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gridsweep.datasets import load_builtin, split_dataset
from gridsweep.vocab import TrialConfig
from worker.fused import train_pack
from worker.fused_packs import train_packs
from worker.packing import auto_pack_size, matmul_flops
from worker.selection import Selection
from worker.tensors import TensorSplit, to_tensors
from worker.train import train_trial

EPOCHS, BATCH = 5, 256


def grid(quick: bool) -> list[TrialConfig]:
    lrs = np.logspace(np.log10(1e-4), np.log10(3e-2), 16)
    if quick:
        lrs = lrs[::4]
    return [
        TrialConfig(layers, (h,) * layers, act, float(lr), "adam", BATCH, EPOCHS, 0.0, 0.0, "mse", 0)
        for layers in (1, 2, 3)
        for h in (32, 128)
        for act in ("relu", "tanh")
        for lr in lrs
    ]


def load() -> TensorSplit:
    split = split_dataset(load_builtin("synthetic16"), validation=1 / 6, test=1 / 6, seed=0)
    return to_tensors(split, "cpu", torch.float32, split_seed=0)


def useful_flops(cfgs: list[TrialConfig], data: TensorSplit) -> float:
    """Matmul FLOPs of the true (unpadded) models: training steps plus the per-epoch validation."""
    n_tr, n_va = data.X_train.shape[0], data.X_val.shape[0]
    total = 0.0
    for c in cfgs:
        dims = [data.n_features, *c.hidden_units, 1]
        total += c.epochs * (n_tr * matmul_flops(dims) + n_va * matmul_flops(dims, train=False))
    return total


def mm_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


# ----------------------------------------------------------------------------- (a) plain loop


def plain_trial(c: TrialConfig, data: TensorSplit) -> float:
    """The usual objective: nn.Sequential, DataLoader(shuffle=True), Adam, per-epoch validation."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(c.seed)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[c.activation]
    layers: list[nn.Module] = []
    width = data.n_features
    for h in c.hidden_units:
        layers += [nn.Linear(width, h), act()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    opt = torch.optim.Adam(model.parameters(), lr=c.learning_rate)
    loader = DataLoader(TensorDataset(data.X_train, data.y_train), batch_size=c.batch_size, shuffle=True)
    val = float("nan")
    for _ in range(c.epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(nn.functional.mse_loss(model(data.X_val), data.y_val))
    return val


# ----------------------------------------------------------------------------- (d) scikit-learn


def sklearn_trial(c: TrialConfig, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    m = MLPRegressor(
        hidden_layer_sizes=c.hidden_units,
        activation=c.activation,
        solver="adam",
        alpha=0.0,
        batch_size=c.batch_size,
        learning_rate_init=c.learning_rate,
        max_iter=c.epochs,
        shuffle=True,
        random_state=c.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X, y)
    return float(np.mean((m.predict(Xv) - yv) ** 2))


# ----------------------------------------------------------------------------- (e) early stopping

ES_ROWS, ES_EPOCHS, ES_PATIENCE, ES_MIN_DELTA, ES_WIDTH = 1500, 16, 2, 0.01, 256


def early_stopping_case(data: TensorSplit, threads: int) -> None:
    """Case (e): one pack with and without early stopping (see the module docstring)."""
    sub = dataclasses.replace(
        data,
        X_train=data.X_train[:ES_ROWS],
        y_train=data.y_train[:ES_ROWS],
        X_val=data.X_val[: ES_ROWS // 3],
        y_val=data.y_val[: ES_ROWS // 3],
    )
    lrs = np.logspace(-3, -1, 8)
    cfgs = [
        TrialConfig(layers, (ES_WIDTH,) * layers, act, float(lr), "adam", 128, ES_EPOCHS, 0.0, 0.0, "mse", 0)
        for layers in (1, 2)
        for act in ("relu", "tanh")
        for lr in lrs
    ]
    n = len(cfgs)
    best = Selection(metric="val_rmse", select_epoch="best")
    stop = dataclasses.replace(best, patience=ES_PATIENCE, min_delta=ES_MIN_DELTA)
    rows = f"{sub.X_train.shape[0]} train / {sub.X_val.shape[0]} val rows"
    print(f"(e) early stopping: {n} configs, {ES_EPOCHS} epochs, batch 128, {rows}, {threads} parts")
    train_packs([dataclasses.replace(c, epochs=1) for c in cfgs], sub, threads=threads)  # warm-up
    t = time.perf_counter()
    plain = train_packs(cfgs, sub, threads=threads, selections=[best] * n)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    early = train_packs(cfgs, sub, threads=threads, selections=[stop] * n)
    t_early = time.perf_counter() - t
    stopped = [r for r in early if r.stopped_epoch is not None]
    epochs = sum(len(r.epochs) for r in early)
    same = all(
        [m.to_dict() for m in a.epochs] == [m.to_dict() for m in b.epochs[: len(a.epochs)]]
        for a, b in zip(early, plain, strict=True)
    )
    lost = [b.metrics["val_rmse"] - a.metrics["val_rmse"] for a, b in zip(early, plain, strict=True)]
    print(f"  without early stopping                       {t_plain:8.1f} s")
    print(
        f"  patience {ES_PATIENCE}, min_delta {ES_MIN_DELTA}: {len(stopped)} of {n} trials stopped early, "
        f"{epochs} of {n * ES_EPOCHS} epochs trained  {t_early:8.1f} s"
    )
    print(
        f"  early stopping / without = {t_early / t_plain:.2f} (speed-up {t_plain / t_early:.2f}x; "
        f"epochs ratio {epochs / (n * ES_EPOCHS):.2f}); every trial's epochs as without: {same}; "
        f"best val_rmse {min(r.metrics['val_rmse'] for r in early):.4f} vs "
        f"{min(r.metrics['val_rmse'] for r in plain):.4f} (median per-trial score cost "
        f"{-statistics.median(lost):.4f} target units)"
    )


# ----------------------------------------------------------------------------- runs


def timed(label: str, fn, n: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    vals = fn()
    dt = time.perf_counter() - t
    print(f"  {label:<44} {dt:8.1f} s   {n / dt:7.2f} trials/s", flush=True)
    return n / dt, vals


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average {load:.2f} at start"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="48 configs (every 4th learning rate)")
    ap.add_argument("--pack-size", type=int, default=None, help="trials per pack (default: auto for CPU)")
    ap.add_argument("--only", default="a,b,c,d,e", help="which runs (a,b,c,d,e)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    cfgs = grid(args.quick)
    pack = args.pack_size or auto_pack_size("cpu")
    data = load()
    n = len(cfgs)
    print(f"machine: {machine()}")
    rows = f"{data.X_train.shape[0]} train / {data.X_val.shape[0]} val rows, {data.n_features} features"
    print(f"grid: {n} configs, Adam, batch {BATCH}, {EPOCHS} epochs, MSE; synthetic16 {rows}")
    peak = mm_peak()
    print(f"float32 torch.mm 2048x2048 peak: {peak:.1f} GFLOP/s")
    rate: dict[str, float] = {}
    vals: dict[str, list[float]] = {}

    threads = torch.get_num_threads()

    def packs(mode: str, threads: int = threads) -> list[float]:
        return [
            r.metrics["val_loss"]
            for s in range(0, n, pack)
            for r in train_packs(cfgs[s : s + pack], data, mode=mode, threads=threads)
        ]

    def omp_packs() -> list[float]:  # one part on every torch thread (not what a worker does)
        return [
            r.metrics["val_loss"] for s in range(0, n, pack) for r in train_pack(cfgs[s : s + pack], data)
        ]

    if "c" in only:
        # Warm-up (allocator, page faults, kernels), as a running worker has: one epoch of a pack.
        train_packs([dataclasses.replace(c, epochs=1) for c in cfgs[-pack:]], data, threads=threads)
        rate["c"], vals["c"] = timed(
            f"(c) fused, packs of {pack} in {threads} parts (threads)", lambda: packs("auto"), n
        )
        gflops = useful_flops(cfgs, data) / (n / rate["c"]) / 1e9
        rate["omp"], _ = timed(f"    fused, one part on {threads} torch threads", omp_packs, n)
        rate["group"], _ = timed("    fused, blocks by whole exact architecture", lambda: packs("group"), n)
        rate["pad"], _ = timed("    fused, widths padded (blocks by depth)", lambda: packs("pad"), n)
        rate["pad_all"], _ = timed("    fused, widths and depths padded", lambda: packs("pad_all"), n)
    if "b" in only:
        rate["b"], vals["b"] = timed(
            "(b) reference loop (train_trial)",
            lambda: [train_trial(c, data).metrics["val_loss"] for c in cfgs],
            n,
        )
    if "a" in only:
        rate["a"], vals["a"] = timed(
            "(a) plain PyTorch loop + DataLoader", lambda: [plain_trial(c, data) for c in cfgs], n
        )
    if "d" in only:
        X, y = data.X_train.numpy(), data.y_train.numpy().ravel()
        Xv, yv = data.X_val.numpy(), data.y_val.numpy().ravel()
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=torch.get_num_threads()):  # the same cores as the others
            rate["d"], vals["d"] = timed(
                "(d) scikit-learn MLPRegressor", lambda: [sklearn_trial(c, X, y, Xv, yv) for c in cfgs], n
            )

    if "e" in only:
        early_stopping_case(data, threads)

    print("results:")
    for k in ("c/a", "c/b", "c/d"):
        num, den = k.split("/")
        if num in rate and den in rate:
            print(f"  {k} = {rate[num] / rate[den]:.2f}")
    if "c" in rate:
        print(
            f"  fused by architecture / widths padded = {rate['group'] / rate['pad']:.2f}; "
            f"/ widths and depths padded = {rate['group'] / rate['pad_all']:.2f}"
        )
        print(
            f"  fused useful matmul throughput: {gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of peak mm"
        )
    if "b" in vals and "c" in vals:
        d = [abs(x - y) / abs(y) for x, y in zip(vals["c"], vals["b"], strict=True)]
        same = int(np.argmin(vals["c"])) == int(np.argmin(vals["b"]))
        print(
            f"  fused vs reference final val loss: median rel. diff {statistics.median(d):.1e}, "
            f"max {max(d):.1e}; same best config: {same}"
        )
    for k in ("a", "b", "c", "d"):
        if k in vals:
            best = int(np.nanargmin(vals[k]))
            c = cfgs[best]
            arch = f"layers={c.layers} hidden={c.hidden_units[0]} {c.activation} lr={c.learning_rate:.2e}"
            print(f"  best by ({k}): val MSE {vals[k][best]:.4f} {arch}")


if __name__ == "__main__":
    main()
