"""worker.model_io and gridsweep.payload: a saved model predicts exactly what the worker evaluated;
an uploaded dataset survives the trip to the worker with its fingerprint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from app.tabular import prepare_table
from gridsweep.datasets import make_dataset, split_dataset
from gridsweep.payload import fingerprint, pack, unpack
from gridsweep.vocab import TrialConfig
from worker.handback import versions
from worker.model_io import load_model, make_artifact, to_bytes, to_torchscript
from worker.tensors import to_tensors
from worker.train import evaluate, n_outputs_for, train_trial


def _trained(task: str, loss: str, dropout: float = 0.2):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, -3.0]
    if task == "regression":
        y = 100.0 + 20.0 * X[:, 0] - X[:, 1]
    else:
        y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 2] > -3).astype(int)]
    ds = make_dataset("t", task, X, y, ["u", "v", "w"])
    split = split_dataset(ds, 0.2, 0.2, seed=1)
    data = to_tensors(split, "cpu", torch.float32, split_seed=1)
    cfg = TrialConfig(2, (8, 6), "gelu", 0.01, "adam", 16, 4, dropout, 0.0, loss, seed=3)
    result = train_trial(cfg, data, evaluate_test=True)
    artifact = make_artifact(
        result.model,
        cfg,
        task=task,
        n_classes=ds.n_classes,
        n_outputs=n_outputs_for(loss, ds.n_classes),
        classes=ds.classes,
        feature_names=ds.feature_names,
        x_mean=split.x_mean,
        x_std=split.x_std,
        y_mean=split.y_mean,
        y_std=split.y_std,
        meta={"versions": versions(), "test_metrics": result.test_metrics},
    )
    raw_test = split.X_test * split.x_std + split.x_mean  # rows as the user has them (up to rounding)
    return ds, split, data, cfg, result, artifact, raw_test


@pytest.mark.parametrize(("task", "loss"), [("regression", "mse"), ("classification", "cross_entropy")])
def test_saved_model_reproduces_the_workers_outputs(task: str, loss: str) -> None:
    ds, split, data, cfg, result, artifact, raw_test = _trained(task, loss)
    m = load_model(to_bytes(artifact))  # weights_only: fails if anything in the file is not plain data
    ts = load_model(to_torchscript(artifact))
    assert m.feature_names == ts.feature_names == ["u", "v", "w"] and m.task == task
    with torch.no_grad():
        expected = result.model.eval()(data.X_test)
    # Standardizing the raw rows again gives the worker's inputs up to float64 rounding, far
    # below float32 resolution: outputs agree to float32 round-off.
    for loaded in (m, ts):
        torch.testing.assert_close(loaded.outputs(raw_test), expected, rtol=1e-5, atol=1e-5)
    got = evaluate(m.module, torch.as_tensor(raw_test), data.y_test, cfg.loss, task)
    assert got["loss"] == pytest.approx(result.test_metrics["test_loss"], abs=1e-6)
    if task == "regression":
        # Values in the target's own units (not standardized).
        want = split.inverse_transform_y(expected[:, 0].double().numpy())
        np.testing.assert_allclose(m.predict(raw_test), want, rtol=1e-6)
        np.testing.assert_allclose(ts.predict(raw_test), want, rtol=1e-6)
        with pytest.raises(ValueError, match="classification"):
            m.predict_proba(raw_test)
    else:
        labels = [ds.classes[i] for i in expected.argmax(dim=1).tolist()]
        assert m.predict(raw_test) == ts.predict(raw_test) == labels
        proba = m.predict_proba(raw_test)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(labels), dtype=torch.float64))
        assert set(labels) <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="3 features"):
        m.predict(raw_test[:, :2])


def test_bce_model_probabilities_and_bad_files() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    ds = make_dataset("b", "classification", X, (X[:, 0] > 0).astype(int), None)
    split = split_dataset(ds, 0.2, 0.2, seed=0)
    data = to_tensors(split, "cpu", split_seed=0)
    cfg = TrialConfig(1, (4,), "tanh", 0.05, "sgd", 8, 2, 0.0, 0.0, "bce", seed=0)
    result = train_trial(cfg, data)
    art = make_artifact(
        result.model, cfg, task="classification", n_classes=2, n_outputs=1, classes=[0, 1],
        feature_names=["x0", "x1"], x_mean=split.x_mean, x_std=split.x_std, y_mean=None, y_std=None, meta={},
    )  # fmt: skip
    m = load_model(to_bytes(art))
    with torch.no_grad():
        logits = result.model.eval()(data.X_test)[:, 0]
    raw = split.X_test * split.x_std + split.x_mean
    assert m.predict(raw) == (logits > 0).long().tolist()
    torch.testing.assert_close(
        m.predict_proba(raw)[:, 1], torch.sigmoid(logits).double(), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="not a gridsweep model"):
        load_model(b"hello")
    buf = io.BytesIO()
    torch.save({"format": "something else"}, buf)
    with pytest.raises(ValueError, match="not a gridsweep model"):
        load_model(buf.getvalue())


def test_payload_round_trip_keeps_labels_codes_and_fingerprint() -> None:
    raw = b"a,b,kind,y\n1,x,p,cat\n2,y,q,dog\n3,x,p,cat\n4,y,q,bird\n5,x,p,dog\n"
    table = prepare_table(raw, "t.csv", "y", categorical=["b", "kind"])
    ds = make_dataset("t", table.task, table.X, table.y, table.encoding.feature_names)
    back, meta = unpack(pack(ds, {"target": "y", "encoding": table.encoding.to_dict()}))
    assert back.classes == ds.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(back.y, ds.y)
    np.testing.assert_array_equal(back.X, ds.X)
    assert fingerprint(back) == fingerprint(ds)
    assert meta["encoding"]["categorical"] == {"b": ["x", "y"], "kind": ["p", "q"]}
    assert back.feature_names == ["a", "b=x", "b=y", "kind=p", "kind=q"]
    # Any change in numbers or labels changes the fingerprint.
    other = make_dataset("t", table.task, table.X + 1e-12, table.y, table.encoding.feature_names)
    assert fingerprint(other) != fingerprint(ds)
    relabeled = make_dataset(
        "t", table.task, table.X, np.where(table.y == "dog", "cow", table.y), ds.feature_names
    )
    assert fingerprint(relabeled) != fingerprint(ds)
