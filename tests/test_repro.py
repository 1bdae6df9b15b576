"""A trial's numbers do not depend on the pack it trained in, bit for bit (issue 11).

One grid of mixed widths (multiples of 32 and not), depths, activations and dropout is
trained as packs of 64 (dealt into two parts on threads, as a worker does), as packs of 3,
and five of its trials again alone, as the worker trains a rerun or a trial claimed alone:
every epoch's metrics and the final weights must be equal, not close. CI runs this file twice
(see the Makefile's ``test`` target): with the machine's own CPU kernels and with
``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (an AVX2 CPU's kernels), since
which elements land in a kernel's scalar tail depends on the SIMD width.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import cache

import numpy as np
import pytest
import torch

from gridsweep.datasets import make_dataset, split_dataset
from gridsweep.vocab import TrialConfig
from worker.fused import train_pack
from worker.fused_model import Block, eval_rows, evaluate_block
from worker.fused_packs import train_one, train_packs
from worker.packing import canonical_widths, padded_widths, plan_blocks
from worker.tensors import TensorSplit, to_tensors
from worker.train import TrialResult

# Widths that are and are not multiples of 32, depths 1-3, in one grid.
ARCHS = [(1, (20,)), (2, (50, 20)), (3, (8, 32, 13)), (1, (64,)), (2, (33, 33)), (3, (32, 32, 32)), (1, (7,))]
ACTS = ["relu", "tanh", "sigmoid", "gelu"]
RERUN = [13, 23, 26, 41, 55]  # five trials trained again alone: sigmoid, gelu, tanh, relu, gelu


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@cache
def split(kind: str) -> TensorSplit:
    """203 rows, 5 features, float32: batches of 24 leave a partial one; odd validation rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 5))
    if kind == "reg":
        ds = make_dataset(kind, "regression", X, X[:, 0] - 2 * X[:, 1] + np.sin(2 * X[:, 2]))
    elif kind == "bin":
        ds = make_dataset(kind, "classification", X, (X[:, 0] + X[:, 1] > 0).astype(int))
    else:
        ds = make_dataset(kind, "classification", X, np.digitize(X[:, 0] - X[:, 1], [-0.6, 0.6]))
    return to_tensors(split_dataset(ds, 0.25, 0.2, seed=0), "cpu", dtype=torch.float32, split_seed=3)


def grid(loss: str, optimizer: str) -> list[TrialConfig]:
    return [
        TrialConfig(
            layers=layers, hidden_units=hu, activation=act, learning_rate=0.01 + 0.002 * (s % 5),
            optimizer=optimizer, batch_size=24, epochs=3, dropout=drop, weight_decay=0.01 * (s % 2),
            loss=loss, seed=s,
        )
        for s, ((layers, hu), act, drop) in enumerate(itertools.product(ARCHS, ACTS, [0.0, 0.2]))
    ]  # fmt: skip


def numbers(r: TrialResult) -> tuple[object, ...]:
    """Everything a trial records, and its final weights, as exact values."""
    assert r.status == "succeeded" and r.model is not None
    weights = [t.tolist() for t in r.model.state_dict().values()]
    return [m.to_dict() for m in r.epochs], r.metrics, r.test_metrics, weights


CASES = [("mse", "reg", "adam"), ("bce", "bin", "momentum"), ("cross_entropy", "mc", "adamw")]


@pytest.mark.parametrize(("loss", "kind", "optimizer"), CASES)
def test_packs_of_64_packs_of_3_and_alone_agree_bit_for_bit(loss: str, kind: str, optimizer: str) -> None:
    data = split(kind)
    cfgs = grid(loss, optimizer)
    assert len(cfgs) == 56
    kw: dict[str, object] = {"keep_models": True, "evaluate_test": True}
    big = train_packs(cfgs, data, threads=2, **kw)  # one pack of 56, in two parts on threads
    threes = [r for s in range(0, len(cfgs), 3) for r in train_packs(cfgs[s : s + 3], data, **kw)]
    for i in RERUN:
        want = numbers(big[i])
        assert numbers(threes[i]) == want, (i, cfgs[i])
        # Alone, as the worker trains a trial claimed alone (a rerun, --pack-size 1, a final trial) ...
        assert numbers(train_one(cfgs[i], data, evaluate_test=True)) == want, (i, cfgs[i])
        # ... and as a pack of one (a rerun claimed by a worker with packs).
        assert numbers(train_packs([cfgs[i]], data, threads=2, **kw)[0]) == want, (i, cfgs[i])
    # Every trial of the grid, not only the five: the two pack layouts agree too.
    for i, (a, b) in enumerate(zip(big, threes, strict=True)):
        assert [m.to_dict() for m in a.epochs] == [m.to_dict() for m in b.epochs], (i, cfgs[i])


def test_train_loss_is_the_float64_mean_of_the_batch_losses() -> None:
    """One rule on every path: sum(batch loss x batch rows) in float64, divided by n_fit."""
    data = split("reg")
    cfgs = grid("mse", "adam")[:5]
    steps: list[list[float]] = [[] for _ in cfgs]

    def on_step(epoch: int, ids: list[int], losses: torch.Tensor) -> None:
        for i, v in zip(ids, losses.tolist(), strict=True):
            if epoch == 1:
                steps[i].append(v)

    res = train_pack(cfgs, data, on_step=on_step)
    n = data.X_train.shape[0]
    rows = [min(24, n - s) for s in range(0, n, 24)]
    for i, r in enumerate(res):
        total = torch.tensor(steps[i], dtype=torch.float32).double() @ torch.tensor(rows, dtype=torch.float64)
        assert r.epochs[0].train_loss == float(total / n)


def test_worker_blocks_hold_trials_at_their_own_shapes() -> None:
    """auto and group stack only trials that compute at their own canonical widths."""
    cfgs = grid("mse", "adam")
    for mode in ("auto", "group"):
        for ids in plan_blocks(cfgs, 5, 1, mode=mode):
            widths = padded_widths([cfgs[i] for i in ids])
            for i in ids:
                own = canonical_widths(cfgs[i])
                assert own == tuple(widths[: len(own)]) and set(widths[len(own) :]) <= {own[-1]}
                assert all(w % 32 == 0 and w >= h for w, h in zip(own, cfgs[i].hidden_units, strict=True))
    assert canonical_widths(cfgs[16]) == (32, 32, 32) and canonical_widths(cfgs[8]) == (64, 32)


def test_a_cpu_pack_trains_on_one_torch_thread_whatever_the_worker_has() -> None:
    data = split("reg")
    seen: list[int] = []

    def record(*_: object) -> None:
        seen.append(torch.get_num_threads())

    torch.set_num_threads(2)
    train_one(grid("mse", "adam")[0], data, on_epoch=record)
    train_packs(grid("mse", "adam")[:2], data, on_epoch=record)
    assert seen == [1] * 6 and torch.get_num_threads() == 2


def test_validation_chunks_do_not_depend_on_the_block() -> None:
    """A validation split of many chunks: each trial's loss is the same in a block of 7 as alone."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(1500, 5, generator=g), torch.randn(1500, 1, generator=g)
    cfgs = [dataclasses.replace(grid("mse", "adam")[26 + k % 2], seed=k) for k in range(7)]  # tanh 64
    cpu = torch.device("cpu")
    block = Block(cfgs, list(range(7)), 5, 1, torch.float32, cpu)
    together = evaluate_block(block, X, y, "mse", "regression")
    assert eval_rows(64, 7, "cpu") < 1500  # several chunks
    for k, c in enumerate(cfgs):
        alone = evaluate_block(Block([c], [0], 5, 1, torch.float32, cpu), X, y, "mse", "regression")
        assert alone[0][0].item() == together[0][k].item(), k
