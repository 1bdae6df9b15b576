"""Random / TPE / QMC sweeps in the store, on SQLite and PostgreSQL: Optuna's suggestions by
ask-and-tell, never a config twice, exactly ``max_trials`` configs, the same suggestions for the
same spec, and a study rebuilt from the store that suggests what the cached one would have."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.models import Worker
from app.services import search
from app.services.trials import claim
from tests.search_helpers import flat, new_sweep, new_worker, run_all, sweep_of, train_pack, trials_of

SPACE: dict[str, Any] = {
    "learning_rate": {"min": 1e-4, "max": 0.5, "distribution": "log_uniform"},
    "hidden_units": {"min": 4, "max": 64, "distribution": "log_uniform"},
    "activation": ["relu", "tanh"],
    "epochs": 2,
}
# 6 x 2 = 12 configs, and only ranges and lists: a space a sampler can run out of.
SMALL: dict[str, Any] = {"hidden_units": {"min": 1, "max": 6}, "activation": ["relu", "tanh"], "epochs": 1}


def score(params: dict[str, Any]) -> float:
    """A smooth objective: best at learning rate 0.01 and 32 units."""
    lr = params["learning_rate"] if "learning_rate" in params else 0.01
    return (math.log10(lr) + 2) ** 2 + (math.log2(params["hidden_units"]) - 5) ** 2 / 10


def params_of(database: Database, sweep_id: int) -> list[dict[str, Any]]:
    return [t.params for t in trials_of(database, sweep_id) if t.seed == 0]


@pytest.mark.parametrize("method", ["random", "tpe", "qmc"])
def test_a_search_ends_with_exactly_max_trials_distinct_configs(
    database: Database, settings: Settings, method: str
) -> None:
    sid = new_sweep(database, settings, method=method, max_trials=20, seeds=[0, 1], parameters=SPACE)
    assert sweep_of(database, sid).n_trials == 40 and trials_of(database, sid) == []
    claims = run_all(database, settings, flat(score), pack=6)
    trials = trials_of(database, sid)
    assert len(trials) == 40 and {t.status for t in trials} == {"succeeded"}
    assert len({t.config_key for t in trials}) == 20
    assert sorted({t.config_index for t in trials}) == list(range(20))
    assert all({t.seed for t in trials if t.config_index == i} == {0, 1} for i in range(20))
    # Each claim of 6 trials was filled (3 configs x 2 seeds) until the budget ran out.
    assert claims == math.ceil(40 / 6) + 1  # + the final evaluation of the best config
    sweep = sweep_of(database, sid)
    assert sweep.status == "succeeded" and sweep.test_metrics


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_no_config_twice_in_a_space_that_runs_out(
    database: Database, settings: Settings, method: str
) -> None:
    sid = new_sweep(database, settings, method=method, max_trials=12, parameters=SMALL)
    run_all(database, settings, flat(lambda p: p["hidden_units"] / 10), pack=5)
    trials = trials_of(database, sid)
    assert len(trials) == 12 and len({t.config_key for t in trials}) == 12
    assert {(t.params["hidden_units"], t.params["activation"]) for t in trials} == {
        (h, a) for h in range(1, 7) for a in ("relu", "tanh")
    }
    assert sweep_of(database, sid).status == "succeeded"


def test_tpe_goes_where_the_results_are_better(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, method="tpe", max_trials=40, parameters=SPACE)
    run_all(database, settings, flat(score), pack=4)
    values = [score(p) for p in params_of(database, sid)]
    # After its 10 random startup configs, TPE's suggestions are better on average.
    assert sum(values[-10:]) / 10 < sum(values[:10]) / 10


@pytest.mark.parametrize("method", ["random", "tpe", "qmc"])
def test_same_spec_same_suggestions_and_a_rebuilt_study_agrees(
    database: Database, settings: Settings, method: str
) -> None:
    raw = {"method": method, "max_trials": 16, "parameters": SPACE, "sampler_seed": 7}
    a, b = new_sweep(database, settings, **raw), new_sweep(database, settings, **raw)
    worker = new_worker(database)
    for _ in range(4):
        for sid in (a, b):
            if sid == b:
                search.forget(b)  # b's study is rebuilt from the store before every batch
            with database.session() as s:
                search.top_up(s, sid, 4, 3)
        for _ in (a, b):  # a's pack, then b's (claims go by sweep id)
            with database.session() as s:
                pack = claim(s, s.get(Worker, worker), 4, 60.0)
            train_pack(database, pack, flat(score))
    assert params_of(database, a) == params_of(database, b)
    assert len(params_of(database, a)) == 16
    other = new_sweep(database, settings, **{**raw, "sampler_seed": 8})
    with database.session() as s:
        search.top_up(s, other, 4, 3)
    assert params_of(database, other) != params_of(database, a)[:4]


def test_two_replicas_topping_up_at_once_queue_each_config_once(db_url: str, settings: Settings) -> None:
    """Suggestions are made under a row lock on the sweep: concurrent top-ups queue no config twice."""
    dbs = [Database(db_url) for _ in range(3)]
    try:
        sid = new_sweep(dbs[0], settings, method="tpe", max_trials=30, parameters=SPACE)
        errors: list[BaseException] = []

        def top_up(db: Database) -> None:
            try:
                for _ in range(3):
                    with db.session() as s:
                        search.top_up(s, sid, 8, 3)
                    # Another process would not share this one's cache.
                    search.forget(sid)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=top_up, args=(db,)) for db in dbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        trials = trials_of(dbs[0], sid)
        assert len(trials) == 8  # the queue holds 8: the later top-ups found it full
        assert len({t.config_key for t in trials}) == len({t.config_index for t in trials}) == 8
    finally:
        for db in dbs:
            db.dispose()


def test_the_api_answer_and_dry_run_count_configs(database: Database, settings: Settings) -> None:
    from app.services.sweeps import create_sweep
    from app.spec import SweepSpec, count_trials

    spec = SweepSpec.model_validate(
        {
            "name": "t",
            "dataset": "moons",
            "metric": "val_loss",  # the test plays the worker and reports val_loss: rank by it
            "method": "tpe",
            "max_trials": 25,
            "seeds": [0, 1],
            "parameters": SPACE,
        }
    )
    assert count_trials(spec) == 50
    with database.session() as s:
        assert create_sweep(s, spec, settings).n_trials == 50


def test_the_api_and_the_grid_path_do_not_import_optuna(db_url: str) -> None:
    """Optuna is imported on the first search sweep, pruner-free grids never pay for it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from app.api import create_app\n"
        "from app.config import Settings\n"
        f"create_app(Settings(database_url={db_url!r}))\n"
        "import app.services.search, app.services.pruning, app.services.importance, app.cli.main\n"
        "assert 'optuna' not in sys.modules, 'optuna imported at start-up'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
