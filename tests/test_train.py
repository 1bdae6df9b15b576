"""worker.train: the single-trial reference path and its determinism contracts."""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from gridsweep.datasets import load_builtin, make_dataset, split_dataset
from gridsweep.vocab import ACTIVATIONS, OPTIMIZERS, TrialConfig
from worker.tensors import TensorSplit, epoch_permutation, select_device, to_tensors
from worker.train import (
    DROPOUT_SEED_OFFSET,
    Dropout,
    EpochMetrics,
    build_model,
    evaluate,
    n_outputs_for,
    train_trial,
)


def cfg_(**kw: object) -> TrialConfig:
    base = dict(
        layers=1,
        hidden_units=(16,),
        activation="relu",
        learning_rate=0.01,
        optimizer="adam",
        batch_size=16,
        epochs=5,
        dropout=0.0,
        weight_decay=0.0,
        loss="mse",
        seed=0,
    )
    base.update(kw)
    if "hidden_units" not in kw:
        base["hidden_units"] = (16,) * int(base["layers"])  # type: ignore[call-overload]
    return TrialConfig(**base)  # type: ignore[arg-type]


@cache
def easy(kind: str, dtype: torch.dtype = torch.float32, split_seed: int = 0) -> TensorSplit:
    """Small, easy problems: 240 rows, 3 features; 'reg', 'bin' (2 classes) or 'mc' (3 classes)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 3))
    if kind == "reg":
        y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * np.sin(2 * X[:, 0]) + 0.1 * rng.normal(size=240)
        ds = make_dataset(kind, "regression", X, y)
    elif kind == "bin":
        ds = make_dataset(kind, "classification", X, (X[:, 0] + X[:, 1] > 0).astype(int))
    else:
        ds = make_dataset(kind, "classification", X, np.digitize(X[:, 0] - X[:, 1], [-0.6, 0.6]))
    split = split_dataset(ds, 0.25, 0.25, seed=split_seed)
    return to_tensors(split, "cpu", dtype=dtype, split_seed=split_seed)


@cache
def moons(dtype: torch.dtype = torch.float32) -> TensorSplit:
    return to_tensors(split_dataset(load_builtin("moons"), 0.2, 0.2, seed=0), "cpu", dtype=dtype)


class Const(nn.Module):
    """A model that ignores its input: the best constant predictor, as a baseline."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.expand(x.shape[0], -1)


def constant_baseline(d: TensorSplit, loss: str) -> float:
    if d.task == "regression":
        c = torch.zeros(1)  # the training mean in standardized units
    else:
        prior = torch.bincount(d.y_train, minlength=d.n_classes).double() / len(d.y_train)
        c = torch.log(prior[1] / prior[0]).reshape(1) if loss == "bce" else torch.log(prior)
    return evaluate(Const(c.float()), d.X_val, d.y_val, loss, d.task)["loss"]


def same_run(a: list[EpochMetrics], b: list[EpochMetrics]) -> bool:
    return [m.to_dict() for m in a] == [m.to_dict() for m in b]


# ----------------------------------------------------------------------------- devices & tensors


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="CUDA is not available"):
                select_device(spec)


def test_to_tensors_representation() -> None:
    reg, mc = easy("reg"), easy("mc")
    assert reg.X_train.dtype == torch.float32 and reg.y_train.shape == (120, 1)
    assert reg.y_val.dtype == torch.float32 and reg.n_features == 3 and reg.n_classes == 0
    assert mc.y_train.dtype == torch.int64 and mc.y_train.shape == (120,) and mc.n_classes == 3
    assert easy("bin", torch.float64).X_test.dtype == torch.float64


def test_n_outputs_for() -> None:
    assert n_outputs_for("mse", 0) == n_outputs_for("bce", 2) == 1
    assert n_outputs_for("cross_entropy", 10) == 10


# ----------------------------------------------------------------------------- exact contracts


def test_init_follows_the_documented_draws_in_any_dtype() -> None:
    cfg = cfg_(layers=2, hidden_units=(5, 4), seed=42)
    g = torch.Generator().manual_seed(42)
    expected = []
    for fan_in, fan_out in ((3, 5), (5, 4), (4, 2)):
        bound = 1 / math.sqrt(fan_in)
        w = torch.rand(fan_in, fan_out, generator=g, dtype=torch.float64) * 2 * bound - bound
        b = torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 * bound - bound
        expected.append((w.T, b))
    for dtype in (torch.float32, torch.float64):
        model = build_model(cfg, 3, 2, dtype=dtype, device="cpu")
        linears = [m for m in model if isinstance(m, nn.Linear)]
        assert len(linears) == 3 and all(p.dtype == dtype for p in model.parameters())
        for lin, (w, b) in zip(linears, expected, strict=True):
            assert torch.equal(lin.weight, w.to(dtype)) and torch.equal(lin.bias, b.to(dtype))
    # The global RNG plays no part.
    torch.manual_seed(123)
    a = build_model(cfg, 3, 2, dtype=torch.float32, device="cpu")
    torch.manual_seed(456)
    b = build_model(cfg, 3, 2, dtype=torch.float32, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_model_layout() -> None:
    model = build_model(
        cfg_(layers=3, activation="leaky_relu", dropout=0.25), 4, 1, dtype=torch.float32, device="cpu"
    )
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "LeakyReLU", "Dropout"] * 3 + ["Linear"]
    assert model[1].negative_slope == 0.01 and model[2].p == 0.25


def test_epoch_permutation_contract() -> None:
    perm = epoch_permutation(50, split_seed=7, epoch=3)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))
    assert torch.equal(perm, expected)
    assert not torch.equal(perm, epoch_permutation(50, 7, 4))


def test_dropout_module_draws_from_its_generator() -> None:
    x = torch.ones(4, 1000)
    d = Dropout(0.3, torch.Generator().manual_seed(5))
    y = d(x)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) >= 0.3
    assert torch.equal(y, (x * keep) * (1 / 0.7))
    d.eval()
    assert torch.equal(d(x), x)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    Dropout(0.0, g)(x)
    assert torch.equal(g.get_state(), state)  # p == 0 draws nothing


# ----------------------------------------------------------------------------- determinism


def test_same_seed_is_bit_identical_and_different_seeds_differ() -> None:
    cfg = cfg_(layers=2, epochs=4, loss="cross_entropy", dropout=0.2)
    a, b = train_trial(cfg, easy("mc")), train_trial(cfg, easy("mc"))
    assert a.status == b.status == "succeeded"
    assert same_run(a.epochs, b.epochs)
    assert a.model is not None and b.model is not None
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))
    c = train_trial(dataclasses.replace(cfg, seed=1), easy("mc"))
    assert not same_run(a.epochs, c.epochs)


def test_batch_order_comes_from_the_split_seed() -> None:
    cfg = cfg_(epochs=2, loss="bce")
    a = train_trial(cfg, easy("bin", split_seed=0))
    b = train_trial(cfg, easy("bin", split_seed=0))
    assert same_run(a.epochs, b.epochs)
    # Same rows in a different order -> different result, same init.
    d = easy("bin", split_seed=0)
    reordered = dataclasses.replace(d, split_seed=1)
    assert not same_run(a.epochs, train_trial(cfg, reordered).epochs)


def test_dropout_uses_the_trial_generator() -> None:
    cfg = cfg_(layers=2, epochs=3, loss="bce", dropout=0.5)
    torch.manual_seed(1)
    a = train_trial(cfg, easy("bin"))
    torch.manual_seed(2)  # the global RNG must not matter
    b = train_trial(cfg, easy("bin"))
    assert same_run(a.epochs, b.epochs)
    no_drop = train_trial(dataclasses.replace(cfg, dropout=0.0), easy("bin"))
    assert not same_run(a.epochs, no_drop.epochs)
    # The dropout stream is seeded from the trial seed, apart from the init stream.
    assert DROPOUT_SEED_OFFSET != 0
    assert not same_run(a.epochs, train_trial(dataclasses.replace(cfg, seed=1), easy("bin")).epochs)
    # Evaluation runs without dropout: repeated evaluation is stable.
    assert a.model is not None
    d = easy("bin")
    assert evaluate(a.model, d.X_val, d.y_val, "bce", d.task) == evaluate(
        a.model, d.X_val, d.y_val, "bce", d.task
    )


# ----------------------------------------------------------------------------- learning


LOSSES_BY_DATA = (("mse", "reg"), ("mae", "reg"), ("huber", "reg"), ("bce", "bin"), ("cross_entropy", "mc"))
# Plain SGD needs a larger step than Adam; L1's constant-size gradient wants a smaller one.
LR = {
    ("sgd", "regression"): 0.1,
    ("sgd", "classification"): 0.3,
    ("momentum", "regression"): 0.03,
    ("momentum", "classification"): 0.05,
}


# Every activation and every optimizer, each with every loss: activation i trains with optimizer
# i mod 4 (and one more pass covers the optimizers no activation drew), so each (activation, loss)
# and each (optimizer, loss) pair is trained and must learn. The full activation x optimizer
# product adds little (they meet only through the step size) and cost CI two minutes.
PAIRS = sorted(
    {(a, OPTIMIZERS[i % len(OPTIMIZERS)]) for i, a in enumerate(ACTIVATIONS)}
    | {(ACTIVATIONS[i % len(ACTIVATIONS)], o) for i, o in enumerate(OPTIMIZERS)}
)


@pytest.mark.parametrize(("activation", "optimizer"), PAIRS)
def test_every_activation_optimizer_loss_learns(activation: str, optimizer: str) -> None:
    for loss, kind in LOSSES_BY_DATA:
        d = easy(kind)
        cfg = cfg_(
            activation=activation,
            optimizer=optimizer,
            loss=loss,
            epochs=15,
            learning_rate=LR.get((optimizer, d.task), 0.01),
        )
        r = train_trial(cfg, d)
        assert r.status == "succeeded", (loss, r.error)
        assert len(r.epochs) == 15 and [m.epoch for m in r.epochs] == list(range(1, 16))
        base = constant_baseline(d, loss)
        assert r.metrics["val_loss"] < 0.6 * base, (loss, r.metrics["val_loss"], base)
        assert r.epochs[-1].train_loss < r.epochs[0].train_loss
        if d.task == "classification":
            assert r.metrics["val_accuracy"] >= 0.8, (loss, r.metrics)
            assert r.metrics["val_error"] == pytest.approx(1 - r.metrics["val_accuracy"])
        else:
            assert set(r.metrics) == {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"}
            assert r.epochs[-1].val_error is None and r.epochs[-1].val_accuracy is None


def test_weight_decay_is_applied() -> None:
    for opt in ("sgd", "adamw"):
        a = train_trial(cfg_(optimizer=opt, epochs=3), easy("reg"))
        b = train_trial(cfg_(optimizer=opt, epochs=3, weight_decay=0.5), easy("reg"))
        assert a.model is not None and b.model is not None
        norm = [sum(float(p.detach().norm()) for p in m.parameters()) for m in (a.model, b.model)]
        assert norm[1] < norm[0]


def test_moons_reaches_95_percent() -> None:
    cfg = cfg_(
        layers=2,
        hidden_units=(64, 64),
        activation="relu",
        optimizer="adam",
        learning_rate=0.01,
        batch_size=64,
        epochs=50,
        loss="bce",
    )
    r = train_trial(cfg, moons())
    assert r.status == "succeeded" and r.metrics["val_accuracy"] >= 0.95


def test_lecture_example_trains_on_moons() -> None:
    # One hidden layer of 50 ReLUs, sigmoid output + BCE, plain SGD with lr 1.0.
    cfg = cfg_(
        layers=1, hidden_units=(50,), optimizer="sgd", learning_rate=1.0, batch_size=32, epochs=20, loss="bce"
    )
    r = train_trial(cfg, moons())
    assert r.status == "succeeded" and r.metrics["val_accuracy"] > 0.85


def test_float64_mode() -> None:
    cfg = cfg_(epochs=3, loss="bce")
    r64 = train_trial(cfg, easy("bin", torch.float64))
    r32 = train_trial(cfg, easy("bin", torch.float32))
    assert r64.status == "succeeded" and r64.model is not None
    assert all(p.dtype == torch.float64 for p in r64.model.parameters())
    # Same init and batches: float32 and float64 runs agree to float32 precision.
    for a, b in zip(r32.epochs, r64.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
    assert r32.epochs[-1].val_loss != r64.epochs[-1].val_loss  # ... but the arithmetic really differs


# ----------------------------------------------------------------------------- outcomes


def test_huge_learning_rate_diverges() -> None:
    r = train_trial(cfg_(optimizer="sgd", learning_rate=1e6, epochs=20), easy("reg"))
    assert r.status == "diverged"
    assert r.error is not None and r.error.startswith(("train loss became", "val loss became"))
    assert f"in epoch {len(r.epochs)}" in r.error and ("nan" in r.error or "inf" in r.error)
    assert len(r.epochs) < 20 and r.model is None
    last = r.epochs[-1]
    assert not (math.isfinite(last.train_loss) and math.isfinite(last.val_loss))


def test_on_epoch_can_cancel() -> None:
    seen: list[EpochMetrics] = []

    def on_epoch(m: EpochMetrics) -> bool:
        seen.append(m)
        return m.epoch == 2

    r = train_trial(cfg_(epochs=10, loss="bce"), easy("bin"), on_epoch=on_epoch, evaluate_test=True)
    assert r.status == "canceled" and r.error is None
    assert [m.epoch for m in seen] == [1, 2] and r.epochs == seen
    assert r.metrics["val_loss"] == seen[-1].val_loss
    assert r.test_metrics is None

    calls: list[int] = []
    ok = train_trial(cfg_(epochs=3), easy("reg"), on_epoch=lambda m: calls.append(m.epoch))
    assert ok.status == "succeeded" and calls == [1, 2, 3]


def test_evaluate_test_metrics() -> None:
    d = easy("mc")
    r = train_trial(cfg_(epochs=5, loss="cross_entropy"), d, evaluate_test=True)
    want = {"test_loss", "test_error", "test_accuracy", "test_log_loss"}
    assert r.test_metrics is not None and set(r.test_metrics) == want
    assert r.model is not None
    direct = evaluate(r.model, d.X_test, d.y_test, "cross_entropy", d.task)
    assert r.test_metrics["test_loss"] == direct["loss"]
    assert r.test_metrics["test_error"] == pytest.approx(1 - r.test_metrics["test_accuracy"])
    reg = train_trial(cfg_(epochs=2), easy("reg"), evaluate_test=True)
    assert reg.test_metrics is not None
    assert set(reg.test_metrics) == {"test_loss", "test_rmse", "test_mae", "test_r2"}
    assert train_trial(cfg_(epochs=1), easy("reg")).test_metrics is None


def test_train_on_validation_refits_on_more_rows() -> None:
    d = easy("reg")
    plain = train_trial(cfg_(epochs=3), d)
    refit = train_trial(cfg_(epochs=3), d, train_on_validation=True)
    assert refit.status == "succeeded"
    assert not same_run(plain.epochs, refit.epochs)
    # Refit saw the validation rows, so it fits them better than a model that did not.
    assert refit.metrics["val_loss"] < plain.metrics["val_loss"]


def test_accuracy_and_bce_threshold() -> None:
    X = torch.zeros(4, 1)
    y = torch.tensor([1, 0, 1, 1])
    logits = torch.tensor([[2.0], [-1.0], [0.0], [-3.0]])  # logit 0 predicts class 0
    res = evaluate(Const(logits), X, y, "bce", "classification")  # expand keeps the [4, 1] rows
    assert res["accuracy"] == 0.5 and res["error"] == 0.5
    assert res["loss"] == pytest.approx(
        float(nn.functional.binary_cross_entropy_with_logits(logits, y.reshape(-1, 1).float()))
    )
    ce = evaluate(
        Const(torch.tensor([[0.0, 1.0, 0.5]]).repeat(4, 1)),
        X,
        torch.tensor([1, 1, 2, 0]),
        "cross_entropy",
        "classification",
    )
    assert ce["accuracy"] == 0.5


def test_loss_must_fit_the_task() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        train_trial(cfg_(loss="bce"), easy("reg"))
    with pytest.raises(ValueError, match="exactly 2 classes"):
        train_trial(cfg_(loss="bce"), easy("mc"))
