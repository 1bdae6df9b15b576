"""Issue 13 on the worker: loss-independent metrics, the selected epoch, early stopping.

* The new metrics (val_rmse/val_mae in the target's own units, val_r2; val_error,
  val_accuracy, val_log_loss) equal numpy's, computed from the kept model's predictions.
* The fused engine and the reference path compute them alike (float64: to 1e-9).
* ``select_epoch: best`` keeps the best epoch's metrics and weights (the model, its TorchScript
  file and the test metrics are that epoch's); early stopping ends trials ``succeeded`` after
  ``patience`` epochs without an improvement of ``min_delta``, and a trial that stops early in a
  pack leaves it without changing its pack-mates' numbers (bit for bit).
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np
import pytest
import torch

from gridsweep.claims import Claim
from gridsweep.datasets import SplitData, make_dataset, split_dataset
from gridsweep.vocab import METRIC_GOALS, METRIC_UNITS, METRICS_BY_TASK, TEST_METRICS_BY_TASK, TrialConfig
from worker.fused import train_pack
from worker.fused_packs import train_one, train_packs
from worker.model_io import load_model, make_artifact, to_bytes, to_torchscript
from worker.selection import Selection, Tracker
from worker.tensors import TensorSplit, to_tensors
from worker.train import TrialResult, evaluate, n_outputs_for, train_trial

REG = ("val_loss", "val_rmse", "val_mae", "val_r2")
CLS = ("val_loss", "val_error", "val_accuracy", "val_log_loss")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@cache
def raw_split(kind: str) -> tuple[SplitData, np.ndarray]:
    """150 rows, 4 features; 'reg': a target of scale ~10 around 40 (its own units, not 1)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 4))
    if kind == "reg":
        y = 40 + 8 * (X[:, 0] - 0.5 * X[:, 1] + np.sin(2 * X[:, 2])) + rng.normal(size=150)
        ds = make_dataset(kind, "regression", X, y)
    else:
        ds = make_dataset(kind, "classification", X, np.digitize(X[:, 0] - X[:, 1], [-0.6, 0.6]))
    s = split_dataset(ds, 0.3, 0.2, seed=0)
    return s, ds.y


@cache
def data(kind: str, dtype: torch.dtype = torch.float32) -> TensorSplit:
    return to_tensors(raw_split(kind)[0], "cpu", dtype=dtype, split_seed=2)


def cfg_(**kw: object) -> TrialConfig:
    base: dict[str, object] = dict(
        layers=1, hidden_units=(32,), activation="relu", learning_rate=0.02, optimizer="adam",
        batch_size=16, epochs=12, dropout=0.0, weight_decay=0.0, loss="mse", seed=0,
    )  # fmt: skip
    base.update(kw)
    return TrialConfig(**base)  # type: ignore[arg-type]


def val_outputs(r: TrialResult, d: TensorSplit) -> np.ndarray:
    assert r.model is not None
    with torch.no_grad():
        return r.model.eval()(d.X_val).double().numpy()


def test_vocabulary_names_goals_and_units() -> None:
    assert METRICS_BY_TASK["regression"] == REG and METRICS_BY_TASK["classification"] == CLS
    assert TEST_METRICS_BY_TASK["regression"] == ("test_loss", "test_rmse", "test_mae", "test_r2")
    assert {m for m, g in METRIC_GOALS.items() if g == "maximize"} == {
        "val_accuracy", "val_r2", "test_accuracy", "test_r2",
    }  # fmt: skip
    assert METRIC_UNITS["val_rmse"] == METRIC_UNITS["test_mae"] == "target units"
    assert METRIC_UNITS["val_error"] == "fraction" and METRIC_UNITS["val_log_loss"] == "nats"


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_metrics_are_numpys_in_target_units(loss: str) -> None:
    s, _ = raw_split("reg")
    d = data("reg")
    r = train_one(cfg_(loss=loss, epochs=4), d)
    pred = val_outputs(r, d)[:, 0] * s.y_std + s.y_mean  # the model's predictions, target units
    y = s.inverse_transform_y(s.y_val)
    err = pred - y
    assert r.metrics["val_rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), abs=1e-5)
    assert r.metrics["val_mae"] == pytest.approx(float(np.mean(np.abs(err))), abs=1e-5)
    r2 = 1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2)
    assert r.metrics["val_r2"] == pytest.approx(float(r2), abs=1e-6)
    assert s.y_std is not None and s.y_std > 5  # so standardized units would be far off
    # The same numbers in the epoch's record, and the loss stays the trial's own (standardized).
    assert r.epochs[-1].val_rmse == r.metrics["val_rmse"]
    if loss == "mse":
        assert r.metrics["val_rmse"] == pytest.approx(math.sqrt(r.metrics["val_loss"]) * s.y_std, rel=1e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "bce"])
def test_classification_metrics_are_numpys(loss: str) -> None:
    s, _ = raw_split("mc")
    d = data("mc")
    y = s.y_val.astype(int)
    if loss == "bce":  # two classes: class 2 vs the rest
        s = dataclasses.replace(s, y_train=(s.y_train == 2).astype(int), y_val=(y == 2).astype(int))
        s = dataclasses.replace(s, y_test=(s.y_test == 2).astype(int), n_classes=2)
        d = to_tensors(s, "cpu", torch.float32, split_seed=2)
        y = s.y_val
    r = train_one(cfg_(loss=loss, epochs=4), d)
    out = val_outputs(r, d)
    if loss == "bce":
        p1 = 1 / (1 + np.exp(-out[:, 0]))
        probs = np.stack([1 - p1, p1], axis=1)
    else:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    acc = float(np.mean(probs.argmax(axis=1) == y))
    assert r.metrics["val_accuracy"] == acc and r.metrics["val_error"] == pytest.approx(1 - acc)
    log_loss = float(-np.mean(np.log(probs[np.arange(len(y)), y])))
    assert r.metrics["val_log_loss"] == pytest.approx(log_loss, rel=1e-5)
    assert set(r.metrics) == {"train_loss", *CLS}


@pytest.mark.parametrize(("kind", "loss"), [("reg", "mae"), ("mc", "cross_entropy")])
def test_fused_and_reference_agree_on_the_new_metrics(kind: str, loss: str) -> None:
    d = data(kind, torch.float64)
    sel = Selection(metric="val_rmse" if kind == "reg" else "val_log_loss", select_epoch="best")
    cfgs = [
        cfg_(loss=loss, epochs=5, seed=k, layers=1 + k % 2, hidden_units=(32,) * (1 + k % 2))
        for k in range(3)
    ]
    fused = train_pack(cfgs, d, selections=[sel] * 3, keep_models=True, evaluate_test=True)
    for c, f in zip(cfgs, fused, strict=True):
        ref = train_trial(c, d, selection=sel, evaluate_test=True)
        assert f.best_epoch == ref.best_epoch
        for a, b in zip(f.epochs, ref.epochs, strict=True):
            for name in METRICS_BY_TASK[d.task]:
                assert a.value(name) == pytest.approx(b.value(name), rel=1e-9, abs=1e-12), name
        assert f.test_metrics is not None and ref.test_metrics is not None
        assert set(f.test_metrics) == set(ref.test_metrics) == set(TEST_METRICS_BY_TASK[d.task])
        for name, v in ref.test_metrics.items():
            assert f.test_metrics[name] == pytest.approx(v, rel=1e-9, abs=1e-12), name


def test_tracker_ties_min_delta_and_patience() -> None:
    t = Tracker(Selection(select_epoch="best", patience=2, min_delta=0.1))
    steps = [t.update(e, v) for e, v in enumerate([1.0, 0.95, 0.95, 0.8], start=1)]
    # 0.95 beats 1.0 (selected) but by less than min_delta: no reset of patience; the tie keeps epoch 2.
    assert steps == [(True, False), (True, False), (False, True), (True, False)]
    assert t.selected_epoch == 4
    up = Tracker(Selection(metric="val_r2", goal="maximize", select_epoch="best"))
    for e, v in enumerate([0.1, 0.5, 0.5, float("nan"), 0.4], start=1):
        up.update(e, v)
    assert up.selected_epoch == 2
    last = Tracker(Selection(select_epoch="last", patience=1))
    assert last.update(1, 1.0) == (False, False) and last.update(2, 2.0) == (False, True)
    assert last.selected_epoch == 2
    for bad in ({"patience": 0}, {"min_delta": -1.0}, {"select_epoch": "first"}, {"goal": "max"}):
        with pytest.raises(ValueError):
            Selection(**bad)  # type: ignore[arg-type]


def claim(**kw: object) -> Claim:
    base: dict[str, object] = dict(
        trial_id=1, sweep_id=1, lease_token="t", role="search", seed=0, attempt=1, params={},
        dataset="x", split={}, evaluate_test=False, refit=False,
    )  # fmt: skip
    return Claim(**{**base, **kw})  # type: ignore[arg-type]


def test_selection_from_claim() -> None:
    c = claim(metric="val_rmse", early_stopping={"patience": 3, "min_delta": 0.01})
    assert Selection.from_claim(c, "regression") == Selection("val_rmse", "minimize", "best", 3, 0.01)
    assert Selection.from_claim(claim(), "classification") == Selection(select_epoch="best")
    # A refit trains exactly its epochs: its last epoch, never stopped early.
    refit = Selection.from_claim(dataclasses.replace(c, refit=True, role="refit"), "regression")
    assert refit.select_epoch == "last" and refit.patience is None
    with pytest.raises(ValueError, match="does not exist for a classification task"):
        Selection.from_claim(c, "classification")


def stopping_grid() -> tuple[list[TrialConfig], list[Selection]]:
    """Six trials (widths of 32/64: their own canonical shapes); the odd ones stop early."""
    cfgs = [
        cfg_(epochs=14, seed=k, learning_rate=0.03 + 0.01 * k, hidden_units=(32 * (1 + k % 3 // 2),))
        for k in range(6)
    ]
    stop = Selection(metric="val_rmse", select_epoch="best", patience=2, min_delta=0.05)
    keep = Selection(metric="val_rmse", select_epoch="best")
    return cfgs, [stop if k % 2 else keep for k in range(6)]


def test_early_stopping_stops_trials_and_scores_the_best_epoch() -> None:
    d = data("reg")
    cfgs, sels = stopping_grid()
    res = train_packs(cfgs, d, selections=sels, keep_models=True, evaluate_test=True)
    assert all(r.status == "succeeded" for r in res)
    stopped = [k for k, r in enumerate(res) if r.stopped_epoch is not None]
    assert stopped and set(stopped) <= {1, 3, 5}
    for k, (r, sel) in enumerate(zip(res, sels, strict=True)):
        values = [m.val_rmse for m in r.epochs]
        best = min(range(len(values)), key=lambda e: (values[e], e)) + 1  # earliest of the minima
        assert r.best_epoch == best and r.metrics["val_rmse"] == values[best - 1]
        assert r.metrics == {
            k2: v for k2, v in r.epochs[best - 1].to_dict().items() if k2 != "epoch" and v is not None
        }
        if r.stopped_epoch is None:
            assert len(r.epochs) == 14
            continue
        assert len(r.epochs) == r.stopped_epoch < 14
        # The last `patience` epochs did not beat the best before them by min_delta.
        assert sel.patience is not None
        before = min(values[: -sel.patience])
        assert all(before - v < sel.min_delta for v in values[-sel.patience :]), (k, values)


def test_the_kept_weights_are_the_selected_epochs() -> None:
    s, _ = raw_split("reg")
    d = data("reg")
    cfg = cfg_(epochs=14, learning_rate=0.08, hidden_units=(64,))  # overfits: the best epoch is early
    sel = Selection(metric="val_rmse", select_epoch="best")
    for r in (
        train_one(cfg, d, selection=sel, evaluate_test=True),
        train_trial(cfg, d, selection=sel, evaluate_test=True),
    ):
        assert r.best_epoch is not None and r.best_epoch < len(r.epochs) == 14
        assert r.model is not None and r.test_metrics is not None
        val = evaluate(r.model, d.X_val, d.y_val, "mse", d.task, d.y_std)
        for name in REG:
            assert val[name.removeprefix("val_")] == pytest.approx(r.metrics[name], rel=1e-6), name
        test = evaluate(r.model, d.X_test, d.y_test, "mse", d.task, d.y_std)
        assert test["rmse"] == pytest.approx(r.test_metrics["test_rmse"], rel=1e-6)
        # The saved files (state_dict and TorchScript) predict that epoch's val_rmse, in target units.
        artifact = make_artifact(
            r.model, cfg, task=d.task, n_classes=d.n_classes, n_outputs=n_outputs_for("mse", 0),
            classes=[], feature_names=["a", "b", "c", "e"], x_mean=s.x_mean, x_std=s.x_std,
            y_mean=s.y_mean, y_std=s.y_std, meta={},
        )  # fmt: skip
        raw_val = s.X_val * s.x_std + s.x_mean
        y = s.inverse_transform_y(s.y_val)
        for blob in (to_bytes(artifact), to_torchscript(artifact)):
            pred = load_model(blob).predict(raw_val)
            rmse = float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - y) ** 2)))
            assert rmse == pytest.approx(r.metrics["val_rmse"], abs=1e-4)
    last = train_one(cfg, d, selection=dataclasses.replace(sel, select_epoch="last"))
    assert last.best_epoch == 14 and last.metrics["val_rmse"] == last.epochs[-1].val_rmse


def test_a_stopped_trial_does_not_change_its_pack_mates() -> None:
    d = data("reg")
    cfgs, sels = stopping_grid()
    with_stops = train_packs(cfgs, d, selections=sels, keep_models=True)
    without = train_packs(
        cfgs, d, selections=[dataclasses.replace(s, patience=None) for s in sels], keep_models=True
    )
    assert any(r.stopped_epoch for r in with_stops)
    for k, (a, b) in enumerate(zip(with_stops, without, strict=True)):
        n = len(a.epochs)
        assert [m.to_dict() for m in a.epochs] == [m.to_dict() for m in b.epochs[:n]], k
        if a.stopped_epoch is None:
            assert a.metrics == b.metrics and a.best_epoch == b.best_epoch
            assert a.model is not None and b.model is not None
            wa, wb = a.model.state_dict(), b.model.state_dict()
            assert all(torch.equal(wa[key], wb[key]) for key in wa), k
    # Alone (as a worker trains a trial claimed alone), a stopped trial gets its pack numbers too.
    k = next(k for k, r in enumerate(with_stops) if r.stopped_epoch)
    alone = train_one(cfgs[k], d, selection=sels[k])
    assert [m.to_dict() for m in alone.epochs] == [m.to_dict() for m in with_stops[k].epochs]
    assert alone.stopped_epoch == with_stops[k].stopped_epoch


def test_a_refit_never_stops_early() -> None:
    d = data("reg")
    cfgs, sels = stopping_grid()
    res = train_pack(cfgs[:2], d, selections=sels[:2], train_on_validation=True)
    assert all(r.stopped_epoch is None and len(r.epochs) == 14 and r.best_epoch == 14 for r in res)
    ref = train_trial(cfgs[1], d, selection=sels[1], train_on_validation=True)
    assert ref.stopped_epoch is None and ref.best_epoch == 14
