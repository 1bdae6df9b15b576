"""Fused training agrees with the single-trial reference path (worker.train).

float64: every per-step loss of the first epoch to 1e-9 relative, for every
activation, optimizer, loss, with dropout and weight decay, grouped and padded.
float32: a benchmark-like grid agrees to round-off (median relative difference of
the final validation loss <= 1e-5) and picks the same best config.
"""

from __future__ import annotations

import dataclasses
import statistics
from functools import cache

import numpy as np
import pytest
import torch

import worker.fused_model as fused_model
import worker.fused_packs as fused_packs
import worker.train as train
from gridsweep.datasets import load_builtin, make_dataset, split_dataset
from gridsweep.vocab import ACTIVATIONS, OPTIMIZERS, TrialConfig
from worker.fused import train_pack
from worker.fused_model import Block, SigmoidTanh, activation_fn, pack_losses
from worker.fused_opt import StackedOptimizer
from worker.fused_packs import train_packs
from worker.packing import pack_bytes_per_trial, plan_blocks
from worker.tensors import TensorSplit, to_tensors
from worker.train import TrialResult, train_trial

RTOL64 = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def cfg_(**kw: object) -> TrialConfig:
    base: dict[str, object] = dict(
        layers=1, hidden_units=(16,), activation="relu", learning_rate=0.01, optimizer="adam",
        batch_size=16, epochs=2, dropout=0.0, weight_decay=0.0, loss="mse", seed=0,
    )  # fmt: skip
    base.update(kw)
    if "hidden_units" not in kw:
        base["hidden_units"] = (16,) * int(base["layers"])  # type: ignore[call-overload]
    return TrialConfig(**base)  # type: ignore[arg-type]


@cache
def easy(kind: str, dtype: torch.dtype = torch.float64) -> TensorSplit:
    """240 rows, 3 features: 'reg' (regression), 'bin' (2 classes) or 'mc' (3 classes)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 3))
    if kind == "reg":
        ds = make_dataset(kind, "regression", X, X @ np.array([1.0, -2.0, 0.5]) + np.sin(2 * X[:, 0]))
    elif kind == "bin":
        ds = make_dataset(kind, "classification", X, (X[:, 0] + X[:, 1] > 0).astype(int))
    else:
        ds = make_dataset(kind, "classification", X, np.digitize(X[:, 0] - X[:, 1], [-0.6, 0.6]))
    return to_tensors(split_dataset(ds, 0.25, 0.25, seed=0), "cpu", dtype=dtype, split_seed=3)


DATA_FOR_LOSS = {"mse": "reg", "mae": "reg", "huber": "reg", "bce": "bin", "cross_entropy": "mc"}


def reference_steps(
    cfg: TrialConfig, data: TensorSplit, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[float], TrialResult]:
    """``train_trial`` and every one of its training-step losses."""
    seen: list[float] = []
    real = train.compute_loss

    def recording(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        value = real(out, y, loss)
        if torch.is_grad_enabled():
            seen.append(float(value.detach()))
        return value

    with monkeypatch.context() as m:
        m.setattr(train, "compute_loss", recording)
        result = train_trial(cfg, data)
    return seen, result


def fused_steps(cfgs: list[TrialConfig], data: TensorSplit, **kw: object) -> tuple[list, dict[int, list]]:
    steps: dict[int, list[float]] = {i: [] for i in range(len(cfgs))}

    def on_step(epoch: int, ids: list[int], losses: torch.Tensor) -> None:
        for i, v in zip(ids, losses.tolist(), strict=True):
            steps[i].append(v)

    return train_pack(cfgs, data, on_step=on_step, **kw), steps  # type: ignore[arg-type]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def assert_same_trial(pack: list[float], ref: list[float], tol: float = RTOL64) -> None:
    assert len(pack) == len(ref) > 0
    worst = max(rel(a, b) for a, b in zip(pack, ref, strict=True))
    assert worst <= tol, f"per-step losses differ by {worst:.3g} relative"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", sorted(DATA_FOR_LOSS))
def test_float64_every_step_matches_reference(
    optimizer: str, loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pack holds every activation, with and without dropout and weight decay."""
    data = easy(DATA_FOR_LOSS[loss])
    cfgs = [
        cfg_(activation=act, optimizer=optimizer, loss=loss, dropout=drop, weight_decay=wd, seed=11 * i + j,
             learning_rate=0.05 if optimizer in ("sgd", "momentum") else 0.01, epochs=1)
        for i, act in enumerate(ACTIVATIONS)
        for j, (drop, wd) in enumerate([(0.0, 0.0), (0.3, 0.01)])
    ]  # fmt: skip
    results, steps = fused_steps(cfgs, data, mode="group")
    for i, c in enumerate(cfgs):
        ref_steps, ref = reference_steps(c, data, monkeypatch)
        assert_same_trial(steps[i], ref_steps)
        assert results[i].status == ref.status == "succeeded"
        assert rel(results[i].metrics["val_loss"], ref.metrics["val_loss"]) <= RTOL64
        assert results[i].metrics.get("val_accuracy") == ref.metrics.get("val_accuracy")


def test_float64_padded_widths_and_depths_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widths and depths padded to the largest in one block per activation, still exact."""
    data = easy("reg")
    archs = [(1, (5,)), (2, (16, 4)), (3, (8, 8, 8)), (2, (12, 12)), (1, (16,))]
    cfgs = [
        cfg_(layers=layers, hidden_units=hu, activation=act, dropout=0.2 * (k % 2), seed=k, epochs=2)
        for k, (act, (layers, hu)) in enumerate(
            (a, arch) for a in ("sigmoid", "tanh", "gelu") for arch in archs
        )
    ]  # fmt: skip
    assert len(plan_blocks(cfgs, 3, 1, mode="pad_all")) == 3  # one padded block per activation
    results, steps = fused_steps(cfgs, data, mode="pad_all")
    for i, c in enumerate(cfgs):
        ref_steps, ref = reference_steps(c, data, monkeypatch)
        assert_same_trial(steps[i], ref_steps)
        for got, want in zip(results[i].epochs, ref.epochs, strict=True):
            assert rel(got.val_loss, want.val_loss) <= RTOL64
            assert rel(got.train_loss, want.train_loss) <= RTOL64


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_padded_units_stay_exactly_zero(optimizer: str, activation: str) -> None:
    data = easy("reg")
    cfgs = [
        cfg_(layers=1, hidden_units=(4,), weight_decay=0.1, seed=1),
        cfg_(layers=3, hidden_units=(8, 2, 6), dropout=0.5, seed=2),
    ]
    cfgs = [dataclasses.replace(c, activation=activation, optimizer=optimizer) for c in cfgs]
    block = Block(cfgs, [0, 1], 3, 1, torch.float64, torch.device("cpu"))
    opt = StackedOptimizer(optimizer, [block])
    padding = [(p == 0).clone() for p in block.params]  # every zero entry at init is padding
    for start in range(0, 120, 16):
        xb, yb = data.X_train[start : start + 16], data.y_train[start : start + 16]
        losses = pack_losses(block.forward(xb, train=True), yb, "mse")
        opt.step(torch.autograd.grad(losses.sum(), block.params))
    for p, pad in zip(block.params, padding, strict=True):
        assert pad.any() or p.shape[-1] == 1
        assert (p.detach()[pad] == 0).all()
        assert (p.detach()[~pad] != 0).all()  # the real weights did train
    # Trial 0 is one layer deep: its layers 2 and 3 are padding, whole.
    assert (block.params[2][0] == 0).all() and (block.params[4][0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", ["SigmoidTanh", "this CPU's choice"])
def test_cpu_tanh_is_torch_tanh_to_round_off(dtype: torch.dtype, which: str) -> None:
    """The fused CPU tanh (2 sigmoid(2x) - 1 in place, or torch.tanh_ where that is the faster)
    and its gradient against torch.tanh."""
    tanh = SigmoidTanh.apply if which == "SigmoidTanh" else activation_fn("tanh", torch.device("cpu"))
    x = torch.cat([torch.linspace(-20, 20, 4001, dtype=dtype), torch.tensor([0.0, -0.0], dtype=dtype)])
    want = torch.tanh(x)
    got = tanh(x.clone())
    eps = torch.finfo(dtype).eps
    assert (got - want).abs().max() <= 2 * eps  # absolute: within ~1 ulp of 1.0
    assert got[-2:].eq(0).all() and got.abs().max() <= 1  # tanh(0) = 0 exactly: padding stays zero
    leaf = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(tanh(leaf * 1).sum(), leaf)
    assert torch.allclose(g, 1 - want**2, rtol=0, atol=4 * eps)


@pytest.mark.parametrize(
    ("capability", "vendor", "sigmoid_tanh"),
    [
        ("AVX512", "GenuineIntel", False),  # torch's AVX-512 tanh is the faster there
        ("AVX512", "AuthenticAMD", True),  # 512-bit ops in two 256-bit halves: tanh ~3.5x slower
        ("AVX2", "GenuineIntel", True),
        ("AVX2", "AuthenticAMD", True),
        ("DEFAULT", "", True),
    ],
)
def test_tanh_kernel_is_chosen_by_cpu_kind_not_by_timing(
    monkeypatch: pytest.MonkeyPatch, capability: str, vendor: str, sigmoid_tanh: bool
) -> None:
    """The choice of tanh is a function of the CPU's kind (the same on every run of a machine:
    the two round differently, and a kind reproduces its own numbers bit for bit)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fused_model, "cpu_vendor", lambda: vendor)
    assert fused_model.sigmoid_tanh_is_faster() is sigmoid_tanh
    fn = fused_model.activation_fn("tanh", torch.device("cpu"))
    assert (fn == SigmoidTanh.apply) is sigmoid_tanh
    assert fused_model.activation_fn("tanh", torch.device("cuda")) is torch.tanh_  # CUDA: its own


def test_cpu_vendor_reads_proc_cpuinfo() -> None:
    """The vendor comes from /proc/cpuinfo where there is one (Linux)."""
    fused_model.cpu_vendor.cache_clear()
    try:
        with open("/proc/cpuinfo") as f:
            want = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")), "")
    except OSError:
        want = ""
    assert fused_model.cpu_vendor() == want


def test_optimizer_step_is_bitwise_torch_optim_in_float32() -> None:
    """The stacked step on random gradients equals torch.optim (foreach=False) per trial, bit for bit."""
    torch.manual_seed(0)
    for kind in OPTIMIZERS:
        cfgs = [cfg_(optimizer=kind, learning_rate=lr, weight_decay=wd, seed=i)
                for i, (lr, wd) in enumerate([(0.01, 0.0), (0.003, 0.05), (0.1, 1e-4)])]  # fmt: skip
        block = Block(cfgs, [0, 1, 2], 3, 1, torch.float32, torch.device("cpu"))
        opt = StackedOptimizer(kind, [block])
        singles = [[p[k].detach().clone().requires_grad_() for p in block.params] for k in range(3)]
        refs = [train.make_optimizer(c, ps) for c, ps in zip(cfgs, singles, strict=True)]
        for _ in range(4):
            grads = [torch.randn_like(p) for p in block.params]
            opt.step(grads)
            for k, (ps, ref) in enumerate(zip(singles, refs, strict=True)):
                for p, g in zip(ps, grads, strict=True):
                    p.grad = g[k].clone()
                ref.step()
        for k, ps in enumerate(singles):
            for p, stacked in zip(ps, block.params, strict=True):
                assert torch.equal(p.detach(), stacked.detach()[k]), kind


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimizer_step_across_blocks_is_torch_optim_per_trial(dtype: torch.dtype) -> None:
    """Two blocks (one learning rate shared across them: one fused call on CPU), trials
    leaving between steps: every remaining trial's parameters stay torch.optim's, bit for bit."""
    torch.manual_seed(1)
    for kind in OPTIMIZERS:
        a = [
            cfg_(optimizer=kind, learning_rate=lr, weight_decay=0.01, seed=i)
            for i, lr in enumerate([0.01, 0.03])
        ]
        b = [
            cfg_(optimizer=kind, layers=2, learning_rate=lr, seed=5 + i)
            for i, lr in enumerate([0.03, 0.002, 0.01])
        ]
        blocks = [Block(a, [0, 1], 3, 1, dtype, torch.device("cpu")),
                  Block(b, [2, 3, 4], 3, 1, dtype, torch.device("cpu"))]  # fmt: skip
        opt = StackedOptimizer(kind, blocks)
        cfgs = [*a, *b]
        singles = {blk.ids[k]: [p[k].detach().clone().requires_grad_() for p in blk.params]
                   for blk in blocks for k in range(blk.K)}  # fmt: skip
        refs = {i: train.make_optimizer(cfgs[i], ps) for i, ps in singles.items()}
        for step in range(5):
            if step == 2:  # a trial of each block leaves: the optimizer is bound again
                for blk in blocks:
                    blk.keep(list(range(1, blk.K)))
                opt.bind(blocks)
            grads = [torch.randn_like(p) for p in opt.params]
            opt.step(grads)
            it = iter(grads)
            for blk in blocks:
                gs = [next(it) for _ in blk.params]
                for k, i in enumerate(blk.ids):
                    for p, g in zip(singles[i], gs, strict=True):
                        p.grad = g[k].clone()
                    refs[i].step()
        for blk in blocks:
            for k, i in enumerate(blk.ids):
                for p, stacked in zip(singles[i], blk.params, strict=True):
                    assert torch.equal(p.detach(), stacked.detach()[k]), (kind, i)


@cache
def friedman32() -> TensorSplit:
    return to_tensors(split_dataset(load_builtin("friedman1"), 0.2, 0.2, seed=0), "cpu", torch.float32)


def test_float32_grid_agrees_to_round_off() -> None:
    """A benchmark-like grid (48 configs): median relative difference <= 1e-5, same best config."""
    data = friedman32()
    lrs = np.logspace(-4, np.log10(3e-2), 6)
    cfgs = [
        cfg_(layers=layers, hidden_units=(h,) * layers, activation=act, learning_rate=float(lr),
             batch_size=64, epochs=3)
        for layers in (1, 2) for h in (16, 32) for act in ("relu", "tanh") for lr in lrs
    ]  # fmt: skip
    packed = [r.metrics["val_loss"] for r in train_packs(cfgs, data)]
    alone = [train_trial(c, data).metrics["val_loss"] for c in cfgs]
    diffs = [rel(a, b) for a, b in zip(packed, alone, strict=True)]
    assert statistics.median(diffs) <= 1e-5
    assert int(np.argmin(packed)) == int(np.argmin(alone))


def test_diverging_trial_is_masked_out_and_the_others_are_unchanged() -> None:
    data = friedman32()
    tame = [cfg_(optimizer="sgd", learning_rate=lr, seed=i, epochs=3, batch_size=32)
            for i, lr in enumerate([0.01, 0.05, 0.02])]  # fmt: skip
    wild = cfg_(optimizer="sgd", learning_rate=5.0, seed=9, epochs=3, batch_size=32)
    finished: list[dict[int, str]] = []
    with_it = train_pack(
        [tame[0], wild, *tame[1:]],
        data,
        on_finish=lambda d: finished.append({i: r.status for i, r in d.items()}),
    )
    without = train_pack(tame, data)
    ref = train_trial(wild, data)
    assert with_it[1].status == ref.status == "diverged"
    assert with_it[1].error == ref.error == "train loss became nan in epoch 1"
    assert len(with_it[1].epochs) == 1 and with_it[1].model is None
    assert finished[0] == {1: "diverged"}  # reported as soon as it diverged, the rest at the end
    assert finished[1] == {0: "succeeded", 2: "succeeded", 3: "succeeded"}
    for a, b in zip([with_it[0], *with_it[2:]], without, strict=True):
        assert a.status == "succeeded" and a.epochs == b.epochs and a.metrics == b.metrics


def test_cancel_and_drop_per_trial() -> None:
    data = easy("bin", torch.float32)
    cfgs = [cfg_(loss="bce", seed=s, epochs=4) for s in range(4)]
    seen: list[tuple[int, list[int]]] = []

    def on_epoch(epoch: int, metrics: dict) -> dict[int, str]:
        seen.append((epoch, sorted(metrics)))
        return {1: "cancel", 2: "drop"} if epoch == 2 else {}

    res = train_pack(cfgs, data, on_epoch=on_epoch, keep_models=True)
    assert [r.status for r in res] == ["succeeded", "canceled", "dropped", "succeeded"]
    assert [len(r.epochs) for r in res] == [4, 2, 2, 4]
    assert seen == [(1, [0, 1, 2, 3]), (2, [0, 1, 2, 3]), (3, [0, 3]), (4, [0, 3])]
    alone = train_trial(cfgs[3], data)
    assert rel(res[3].metrics["val_loss"], alone.metrics["val_loss"]) <= 1e-5
    assert res[3].metrics["val_accuracy"] == alone.metrics["val_accuracy"]
    # The kept model is the trial's own function: it scores what the pack reported.
    val = train.evaluate(res[3].model, data.X_val, data.y_val, "bce", data.task)
    assert val["loss"] == pytest.approx(res[3].metrics["val_loss"], rel=1e-6)


def test_test_metrics_and_refit_match_reference() -> None:
    data = easy("mc")
    cfgs = [cfg_(loss="cross_entropy", seed=s, layers=2, dropout=0.1) for s in range(3)]
    for refit in (False, True):
        res = train_pack(cfgs, data, evaluate_test=True, train_on_validation=refit)
        for c, r in zip(cfgs, res, strict=True):
            ref = train_trial(c, data, evaluate_test=True, train_on_validation=refit)
            assert r.test_metrics is not None and ref.test_metrics is not None
            assert rel(r.test_metrics["test_loss"], ref.test_metrics["test_loss"]) <= RTOL64
            assert r.test_metrics["test_accuracy"] == ref.test_metrics["test_accuracy"]


def test_out_of_memory_splits_the_pack_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack too big for the device is split in halves until it fits; results are unchanged."""
    data = easy("reg")
    cfgs = [cfg_(seed=s, learning_rate=0.01 * (s + 1)) for s in range(5)]
    whole = train_pack(cfgs, data)
    real = fused_packs.train_pack
    sizes: list[int] = []

    def small_device(part: list[TrialConfig], *args: object, **kw: object) -> list:
        sizes.append(len(part))
        if len(part) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(part, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_packs, "train_pack", small_device)
    reported: list[int] = []
    split = train_packs(cfgs, data, on_finish=lambda d: reported.extend(d))
    assert sizes == [5, 2, 3, 1, 2]
    assert sorted(reported) == [0, 1, 2, 3, 4]
    for a, b in zip(split, whole, strict=True):
        assert rel(a.metrics["val_loss"], b.metrics["val_loss"]) <= RTOL64

    # A trial that does not fit even alone leaves (the worker gives it back); the others are trained.
    def tiny_device(part: list[TrialConfig], *args: object, **kw: object) -> list:
        if any(c.learning_rate == cfgs[1].learning_rate for c in part):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
        return real(part, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_packs, "train_pack", tiny_device)
    out = train_packs(cfgs, data)
    assert [r.status for r in out] == ["succeeded", "out_of_memory", "succeeded", "succeeded", "succeeded"]
    assert out[1].error is not None and out[1].error.startswith("out of memory")
    # A memory budget of two trials gives sub-packs of two, trained one after the other.
    sizes.clear()

    def recording(part: list[TrialConfig], *args: object, **kw: object) -> list:
        sizes.append(len(part))
        return real(part, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_packs, "train_pack", recording)
    budgeted = train_packs(cfgs, data, budget=2 * pack_bytes_per_trial(cfgs, 3, 1, dtype_bytes=8))
    assert sizes == [2, 2, 1]
    for a, b in zip(budgeted, whole, strict=True):
        assert rel(a.metrics["val_loss"], b.metrics["val_loss"]) <= RTOL64


def test_a_pack_needs_shared_training_settings() -> None:
    data = easy("reg")
    with pytest.raises(ValueError, match="must share batch_size, epochs, optimizer and loss"):
        train_pack([cfg_(), cfg_(batch_size=32)], data)
    with pytest.raises(ValueError, match="does not fit a regression task"):
        train_pack([cfg_(loss="bce")], data)


def test_plan_blocks_groups_pads_and_merges_tiny_groups() -> None:
    big = [cfg_(layers=3, hidden_units=(128,) * 3, seed=s) for s in range(16)]
    small = [cfg_(layers=1, hidden_units=(32,), seed=s) for s in range(16)]
    tanh = [dataclasses.replace(c, activation="tanh") for c in small]
    cfgs = big + small + tanh
    assert plan_blocks(cfgs, 16, 1, mode="group") == [
        list(range(16)),
        list(range(16, 32)),
        list(range(32, 48)),
    ]
    assert plan_blocks(cfgs, 16, 1, mode="pad_all") == [list(range(32)), list(range(32, 48))]
    assert plan_blocks(cfgs, 16, 1, mode="pad") == [list(range(16)), list(range(16, 32)), list(range(32, 48))]
    deep = [cfg_(layers=3, hidden_units=(32,) * 3, seed=s) for s in range(4)]
    assert plan_blocks(big + deep, 16, 1, mode="pad") == [list(range(20))]  # same depth: widths padded
    # auto on a CPU: blocks of one canonical architecture (widths padded to a multiple of 32),
    # so 16 unique tiny widths share one block and nothing else is merged.
    assert plan_blocks(cfgs, 16, 1) == plan_blocks(cfgs, 16, 1, mode="group")
    unique = [cfg_(layers=1, hidden_units=(w,), seed=w) for w in range(4, 20)]
    assert plan_blocks(unique, 16, 1) == [list(range(16))]
    assert plan_blocks([*unique, cfg_(hidden_units=(33,))], 16, 1) == [list(range(16)), [16]]
    # auto on a GPU: a block costs launches, so padding 16 small trials to 3x128 is cheaper.
    gpu = plan_blocks(cfgs, 16, 1, device="cuda")
    assert sorted(map(sorted, gpu)) == [list(range(32)), list(range(32, 48))]
    with pytest.raises(ValueError, match="unknown packing mode"):
        plan_blocks(cfgs, 16, 1, mode="bogus")


def test_cpu_blocks_are_cut_to_fit_a_cores_cache() -> None:
    """auto on a CPU cuts an architecture into near-equal blocks whose [K, batch, width]
    activations fit BLOCK_CACHE_BYTES (1 MiB: 8 float32 trials of width 128 at batch 256)."""
    wide = [cfg_(layers=2, hidden_units=(128, 100), batch_size=256, seed=s) for s in range(20)]
    narrow = [cfg_(layers=1, hidden_units=(32,), batch_size=256, seed=s) for s in range(20)]
    assert plan_blocks(wide, 16, 1) == [list(range(7)), list(range(7, 14)), list(range(14, 20))]
    assert plan_blocks(wide, 16, 1, dtype_bytes=8) == [list(range(s, s + 4)) for s in range(0, 20, 4)]
    assert plan_blocks(wide, 16, 1, mode="group") == [list(range(20))]  # group: never cut
    assert plan_blocks(narrow, 16, 1) == [list(range(20))]  # 20 x 256 x 32 x 4 bytes fit
    huge = [cfg_(hidden_units=(4096,), batch_size=512, seed=s) for s in range(3)]
    assert plan_blocks(huge, 16, 1) == [[0], [1], [2]]  # one trial per block at the least
    assert plan_blocks(wide, 16, 1, device="cuda") == [list(range(20))]  # a GPU: never cut


def test_pack_size_option() -> None:
    from click.testing import CliRunner

    from app.cli.main import main
    from worker.packing import auto_pack_size, parse_pack_size

    assert parse_pack_size("auto") is None and parse_pack_size(None) is None
    assert parse_pack_size("8") == 8 and parse_pack_size(1) == 1
    for bad in ("0", "1025", "many"):
        with pytest.raises(ValueError, match="pack size"):
            parse_pack_size(bad)
    assert auto_pack_size("cpu") == 64 and auto_pack_size("cuda") == 512
    result = CliRunner().invoke(main, ["worker", "--pack-size", "0", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "pack size must be between 1 and 1024" in result.output


def test_threads_split_a_pack_evenly_and_change_nothing() -> None:
    from worker.packing import split_for_threads

    data = easy("reg")
    cfgs = [cfg_(layers=layers, hidden_units=(w,) * layers, learning_rate=lr, seed=s, dropout=0.1 * s)
            for layers in (1, 2) for w in (4, 8) for s, lr in enumerate([0.01, 0.02, 0.03])]  # fmt: skip
    parts = split_for_threads(cfgs, 2)
    assert sorted(i for p in parts for i in p) == list(range(12)) and [len(p) for p in parts] == [6, 6]
    # Widths 4 and 8 both train at the canonical 32: two architectures (by depth), each kept
    # whole in a part of its own (a block cut in two pays its dispatch cost twice).
    assert sorted(sorted({cfgs[i].layers for i in p}) for p in parts) == [[1], [2]]
    # One architecture alone is cut into near-equal parts; never more parts than trials.
    assert sorted(map(len, split_for_threads(cfgs[:6], 2))) == [3, 3]
    assert sorted(map(len, split_for_threads(cfgs[:3], 4))) == [1, 1, 1]
    # Cost-balanced: one 2-layer architecture against several 1-layer ones of the same total.
    deep = [cfg_(layers=2, hidden_units=(128, 128), learning_rate=0.01 * (k + 1)) for k in range(4)]
    shallow = [cfg_(layers=1, hidden_units=(w,), learning_rate=0.01 * (k + 1))
               for w in (32, 64, 96, 128) for k in range(4)]  # fmt: skip
    mixed = split_for_threads(deep + shallow, 2, n_features=16, n_outputs=1)
    assert sorted(len(p) for p in mixed) == [4, 16]
    seen: list[int] = []
    before = torch.get_num_threads()
    one = train_packs(cfgs, data, threads=1)
    two = train_packs(cfgs, data, threads=2, on_finish=lambda d: seen.extend(d))
    assert sorted(seen) == list(range(12))
    assert torch.get_num_threads() == before
    for a, b in zip(one, two, strict=True):
        assert a.status == b.status == "succeeded"
        assert rel(a.metrics["val_loss"], b.metrics["val_loss"]) <= RTOL64
