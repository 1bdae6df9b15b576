"""A final trial served from its search trial's training (worker/recall.py) is, bit for bit, the
final trial a retrain gives; and what a worker holds for that stays bounded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gridsweep.claims import Claim
from tests.test_fused import cfg_, easy
from worker.fused_packs import train_one, train_packs
from worker.metrics import TrialResult
from worker.recall import Recall, TrainedKey, as_final, model_bytes, reusable
from worker.selection import Selection

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def claim(role: str = "search", **kw: object) -> Claim:
    base: dict[str, object] = dict(
        trial_id=1, sweep_id=1, lease_token="t", role=role, seed=0, attempt=1, params={},
        dataset="friedman1", split={"validation": 0.2, "test": 0.2, "seed": 0},
        evaluate_test=role in ("final", "refit"), refit=role == "refit",
    )  # fmt: skip
    base.update(kw)
    return Claim(**base)  # type: ignore[arg-type]


def same_result(a: TrialResult, b: TrialResult) -> None:
    """Equal bit for bit: every epoch, the selected epoch and its metrics, test metrics, weights."""
    assert [e.to_dict() for e in a.epochs] == [e.to_dict() for e in b.epochs]
    assert (a.status, a.best_epoch, a.stopped_epoch) == (b.status, b.best_epoch, b.stopped_epoch)
    assert a.metrics == b.metrics
    assert a.test_metrics == b.test_metrics and a.test_metrics
    assert a.model is not None and b.model is not None
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    ("kind", "loss", "selection"),
    [
        ("reg", "mse", Selection(metric="val_rmse", select_epoch="best", patience=2, min_delta=0.01)),
        ("mc", "cross_entropy", Selection(metric="val_accuracy", goal="maximize", select_epoch="best")),
        ("bin", "bce", Selection()),
    ],
)
def test_a_final_from_a_pack_is_the_final_a_retrain_gives(kind: str, loss: str, selection: Selection) -> None:
    data = easy(kind, torch.float32)
    # A pack of mixed architectures and widths (blocks of several trials), one of them the "best".
    cfgs = [
        cfg_(layers=layers, hidden_units=(h,) * layers, activation=act, learning_rate=lr, loss=loss, epochs=6)
        for layers in (1, 2)
        for h in (16, 40)
        for act in ("relu", "tanh")
        for lr in (0.003, 0.03)
    ]
    results = train_packs(cfgs, data, threads=2, keep_models=True, selections=[selection] * len(cfgs))
    recall = Recall()
    keys = [TrainedKey.of(claim(), c, selection, data) for c in cfgs]
    for key, r in zip(keys, results, strict=True):
        recall.remember(key, r)
    assert len(recall) == 8  # the board's best 8 of 16
    held = [i for i, k in enumerate(keys) if recall.get(k) is not None]
    assert held
    for i in held[:3]:  # a few architectures: blocks of different widths and depths
        final_key = TrainedKey.of(claim("final"), cfgs[i], selection, data)
        assert final_key == keys[i]  # the role is not part of what the result depends on
        hit = recall.get(final_key)
        assert hit is not None
        retrained = train_one(cfgs[i], data, evaluate_test=True, selection=selection)
        same_result(as_final(hit, cfgs[i], data), retrained)


def test_only_a_final_scored_on_the_training_rows_is_served() -> None:
    assert reusable(claim("final"))
    assert not reusable(claim("refit"))  # trained on train + validation: another function
    assert not reusable(claim("rerun", evaluate_test=True))  # a reproducibility check must train
    assert not reusable(claim("search"))
    assert not reusable(claim("final", evaluate_test=False))


def test_the_key_separates_what_changes_the_numbers() -> None:
    data = easy("reg", torch.float32)
    c, sel = cfg_(), Selection()
    key = TrainedKey.of(claim(), c, sel, data)
    assert TrainedKey.of(claim(trial_id=9, sweep_id=4, lease_token="x"), c, sel, data) == key
    others = [
        TrainedKey.of(claim(), dataclasses.replace(c, seed=1), sel, data),
        TrainedKey.of(claim(), dataclasses.replace(c, learning_rate=0.02), sel, data),
        TrainedKey.of(claim(), c, Selection(select_epoch="best"), data),
        TrainedKey.of(claim(split={"validation": 0.2, "test": 0.2, "seed": 1}), c, sel, data),
        TrainedKey.of(claim(dataset_id=3, data_hash="abc"), c, sel, data),
        TrainedKey.of(claim(), c, sel, easy("reg", torch.float64)),
    ]
    assert all(k != key for k in others)


def fake(value: float, status: str = "succeeded", width: int = 4) -> TrialResult:
    return TrialResult(status=status, metrics={"val_loss": value}, model=torch.nn.Linear(width, 1))


def test_a_board_keeps_its_best_and_the_budget_holds() -> None:
    data = easy("reg", torch.float32)
    keys = [TrainedKey.of(claim(), cfg_(learning_rate=0.001 * (i + 1)), Selection(), data) for i in range(6)]
    recall = Recall(per_board=3)
    for key, v in zip(keys, [5.0, 1.0, 4.0, 2.0, 3.0, 0.5], strict=True):
        recall.remember(key, fake(v))
    assert [recall.get(k) is not None for k in keys] == [False, True, False, True, False, True]
    # Not held: failed or diverged trials, a non-finite score, a model without weights kept.
    other = [TrainedKey.of(claim(), cfg_(seed=s), Selection(), data) for s in range(1, 5)]
    recall.remember(other[0], fake(0.1, status="diverged"))
    recall.remember(other[1], fake(float("nan")))
    recall.remember(other[2], TrialResult(status="succeeded", metrics={"val_loss": 0.1}))
    assert all(recall.get(k) is None for k in other[:3])
    # Another board (seed 4) does not push out seed 0's; the byte budget drops the oldest.
    size = model_bytes(fake(0).model)  # type: ignore[arg-type]
    small = Recall(budget_bytes=2 * size)
    small.remember(keys[0], fake(1.0))
    small.remember(keys[1], fake(2.0))
    small.remember(other[3], fake(3.0))
    assert [small.get(k) is not None for k in (keys[0], keys[1], other[3])] == [False, True, True]
    assert Recall(budget_bytes=0).get(keys[0]) is None
