"""The pruning rules decide exactly as Optuna's MedianPruner and SuccessiveHalvingPruner do
(pure: random learning curves, trials one after another, no database)."""

from __future__ import annotations

import random

import optuna
import pytest

from app.search_spec import PrunerSpec
from app.services.pruning import asha_rule, median_rule

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = 10


def curves(seed: int, n: int) -> list[list[float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, rate = rng.uniform(0.5, 2.0), rng.uniform(0.6, 0.97)
        out.append([start * rate**e + rng.gauss(0, 0.02) for e in range(1, EPOCHS + 1)])
    return out


def optuna_pruned(pruner: optuna.pruners.BasePruner, direction: str, trials: list[list[float]]) -> list:
    """Per trial: the epoch Optuna prunes it at, or None (judged at every epoch but the last)."""
    study = optuna.create_study(direction=direction, pruner=pruner)
    out = []
    for curve in trials:
        t = study.ask()
        at = None
        for epoch, v in enumerate(curve, start=1):
            t.report(v, epoch)
            if epoch < EPOCHS and t.should_prune():
                at = epoch
                break
        study.tell(t, state=optuna.trial.TrialState.PRUNED) if at else study.tell(t, curve[-1])
        out.append(at)
    return out


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_rule_is_optunas_median_pruner(direction: str, seed: int) -> None:
    minimize = direction == "minimize"
    trials = curves(seed, 30)
    if not minimize:
        trials = [[-v for v in c] for c in trials]
    spec = PrunerSpec(type="median", n_startup_trials=3)
    rungs = spec.rungs(EPOCHS)
    finished: list[list[float]] = []
    ours = []
    for curve in trials:
        at = None
        for epoch in rungs:
            if len(finished) < 3:
                break
            history = {e: curve[e - 1] for e in range(1, epoch + 1)}
            verdict = median_rule(epoch, history, [c[epoch - 1] for c in finished], minimize, 1, "val_loss")
            if verdict is not None and verdict["would_prune"]:
                at = epoch
                break
        if at is None:
            finished.append(curve)
        ours.append(at)
    theirs = optuna_pruned(optuna.pruners.MedianPruner(n_startup_trials=3), direction, trials)
    assert ours == theirs
    assert sum(1 for a in ours if a) >= 5  # the comparison prunes something


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(("eta", "bootstrap"), [(3, 0), (2, 0), (3, 2)])
def test_asha_rule_is_optunas_successive_halving(direction: str, eta: int, bootstrap: int) -> None:
    minimize = direction == "minimize"
    trials = curves(eta * 10 + bootstrap, 40)
    if not minimize:
        trials = [[-v for v in c] for c in trials]
    spec = PrunerSpec(type="asha", reduction_factor=eta, bootstrap_count=bootstrap)
    assert spec.rungs(EPOCHS) == [e for e in (1, eta, eta**2, eta**3) if e < EPOCHS]
    reached: dict[int, list[float]] = {e: [] for e in spec.rungs(EPOCHS)}
    ours = []
    for curve in trials:
        at = None
        for epoch in spec.rungs(EPOCHS):
            v = curve[epoch - 1]
            verdict = asha_rule(epoch, v, [*reached[epoch], v], minimize, spec, "val_loss")
            reached[epoch].append(v)
            if verdict["would_prune"]:
                at = epoch
                break
        ours.append(at)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=eta, bootstrap_count=bootstrap
    )
    theirs = optuna_pruned(pruner, direction, trials)
    assert ours == theirs
    assert sum(1 for a in ours if a) >= 10


def test_median_rungs_follow_warmup_and_interval_and_skip_the_last_epoch() -> None:
    assert PrunerSpec(type="median").rungs(5) == [1, 2, 3, 4]
    assert PrunerSpec(type="median", n_warmup_steps=2, interval_steps=3).rungs(12) == [2, 5, 8, 11]
    assert PrunerSpec(type="asha", min_resource=2, reduction_factor=2).rungs(16) == [2, 4, 8]
    assert PrunerSpec(type="asha").rungs(1) == []
