"""Parameter importance of a sweep's results (Optuna's PED-ANOVA and fANOVA), on SQLite and
PostgreSQL: the parameter that decides the metric ranks first, whichever way the goal points."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.services.importance import param_importance
from tests.search_helpers import flat, new_sweep, run_all, sweep_of

GRID: dict[str, Any] = {
    "learning_rate": [0.001, 0.01, 0.1],
    "hidden_units": [16, 64],
    "activation": ["relu", "tanh", "sigmoid"],
    "dropout": [0.0, 0.1, 0.2],
    "epochs": 1,
}


def noisy(f: Any, seed: int = 0) -> Any:
    rng = random.Random(seed)
    return lambda p: f(p) + rng.uniform(0, 1e-3)


def importance(database: Database, sid: int, evaluator: str = "ped_anova") -> dict[str, float]:
    with database.session() as s:
        return param_importance(s, sweep_of(database, sid), evaluator)["importances"]


@pytest.mark.parametrize("evaluator", ["ped_anova", "fanova"])
def test_only_the_learning_rate_matters_and_ranks_first(
    database: Database, settings: Settings, evaluator: str
) -> None:
    sid = new_sweep(database, settings, parameters=GRID)
    run_all(
        database, settings, flat(noisy(lambda p: {0.001: 0.9, 0.01: 0.2, 0.1: 0.6}[p["learning_rate"]])), 60
    )
    shares = importance(database, sid, evaluator)
    assert next(iter(shares)) == "learning_rate" and shares["learning_rate"] > 0.5
    assert set(shares) == {"learning_rate", "hidden_units", "activation", "dropout"}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_the_goal_decides_which_end_is_good(database: Database, settings: Settings) -> None:
    """The best configs have learning rate 0.01 when the metric is minimized, 64 units when it is
    maximized: the same numbers rank a different parameter first."""

    def value(p: dict[str, Any]) -> float:
        return 0.0 if p["learning_rate"] == 0.01 else 1.0 + 5.0 * (p["hidden_units"] == 64)

    low = new_sweep(database, settings, parameters=GRID, metric={"name": "val_loss"})
    run_all(database, settings, flat(noisy(value)), 60, metric="val_loss")
    high = new_sweep(database, settings, parameters=GRID, metric={"name": "val_accuracy"})
    run_all(database, settings, flat(noisy(value)), 60, metric="val_accuracy")
    assert next(iter(importance(database, low))) == "learning_rate"
    assert next(iter(importance(database, high))) == "hidden_units"


def test_a_search_sweep_keeps_its_ranges_numeric(database: Database, settings: Settings) -> None:
    space = {
        "learning_rate": {"min": 1e-4, "max": 1.0, "distribution": "log_uniform"},
        "dropout": {"min": 0.0, "max": 0.5},
        "epochs": 1,
    }
    sid = new_sweep(database, settings, method="random", max_trials=40, parameters=space)
    run_all(database, settings, flat(lambda p: abs(p["learning_rate"] - 0.01) + p["dropout"] / 100), 40)
    shares = importance(database, sid)
    assert list(shares) == ["learning_rate", "dropout"]


def test_fewer_than_two_scored_configs_give_no_importance(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.01, 0.1]})
    with database.session() as s:
        out = param_importance(s, sweep_of(database, sid))
    assert out["importances"] == {} and out["n_configs"] == 0
