"""Extending a sweep, on SQLite and PostgreSQL: only configs not run are added, every finished
result is reused, and a new test evaluation happens only when the best config changed."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.models import Sweep, Trial
from app.services.extend import ExtendConflict, extend_sweep
from app.services.sweeps import cancel_sweep
from app.spec import SpecError, SweepSpec, format_loc
from tests.search_helpers import flat, new_sweep, run_all, sweep_of, trials_of

VALUE = {0.001: 0.1, 0.01: 0.3, 0.1: 0.5, 0.3: 0.9}


def value(params: dict[str, Any]) -> float:
    return VALUE[params["learning_rate"]] + params["hidden_units"] / 1000


def spec(**raw: Any) -> SweepSpec:
    base = {
        "name": "t",
        "dataset": "moons",
        "metric": "val_loss",  # the test plays the worker and reports val_loss: rank by it
        "seeds": [0, 1],
        "parameters": {"learning_rate": [0.01, 0.1], "epochs": 1},
    }
    return SweepSpec.model_validate({**base, **raw})


def extend(database: Database, settings: Settings, sid: int, s: SweepSpec) -> Any:
    with database.session() as session:
        return extend_sweep(session, sid, s, settings)


def snapshot(trials: list[Trial]) -> dict[int, tuple[Any, ...]]:
    return {t.id: (t.config_index, t.seed, t.status, t.val_loss, t.finished_at, t.attempt) for t in trials}


def test_extend_reuses_every_finished_config_and_reevaluates_only_a_new_best(
    database: Database, settings: Settings
) -> None:
    sid = new_sweep(database, settings, **spec().model_dump(mode="json"))
    run_all(database, settings, flat(value))
    first = sweep_of(database, sid)
    assert first.status == "succeeded" and len(trials_of(database, sid, "final")) == 2
    before = snapshot(trials_of(database, sid))

    # New values next to old ones: only learning rate 0.3 is new; 0.01 and 0.1 are reused.
    ext = extend(database, settings, sid, spec(parameters={"learning_rate": [0.1, 0.3], "epochs": 1}))
    assert (ext.added_trials, ext.added_configs, ext.reused_configs) == (2, 1, 1)
    assert ext.sweep.status == "running" and ext.sweep.n_trials == 6 and ext.sweep.finished_at is None
    run_all(database, settings, flat(value))
    after = snapshot(trials_of(database, sid))
    assert {k: v for k, v in after.items() if k in before} == before  # nothing ran again
    assert sorted(t.params["learning_rate"] for t in trials_of(database, sid) if t.id not in before) == [
        0.3,
        0.3,
    ]
    again = sweep_of(database, sid)
    # The best is still learning rate 0.01: no new test evaluation, the same numbers.
    assert again.status == "succeeded" and again.best_trial_id == first.best_trial_id
    assert len(trials_of(database, sid, "final")) == 2 and again.test_metrics == first.test_metrics
    assert isinstance(again.spec["parameters"], list) and len(again.spec["parameters"]) == 2  # both grids

    # A better config: the best changes, and is evaluated on the test split.
    extend(database, settings, sid, spec(parameters={"learning_rate": 0.001, "epochs": 1}))
    run_all(database, settings, flat(value))
    last = sweep_of(database, sid)
    finals = trials_of(database, sid, "final")
    assert last.status == "succeeded" and len(finals) == 4
    assert sorted(t.params["learning_rate"] for t in finals) == [0.001, 0.001, 0.01, 0.01]
    assert last.best_trial_id != first.best_trial_id
    assert last.test_metrics["test_loss"] == pytest.approx(
        value({"learning_rate": 0.001, "hidden_units": 64})
    )

    # An extension that adds nothing changes nothing.
    ext = extend(database, settings, sid, spec(parameters={"learning_rate": [0.001, 0.01], "epochs": 1}))
    assert ext.added_trials == 0 and ext.reused_configs == 2 and ext.sweep.status == "succeeded"


def test_new_seeds_add_trials_to_existing_configs(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, **spec().model_dump(mode="json"))
    run_all(database, settings, flat(value))
    ext = extend(database, settings, sid, spec(seeds=[0, 1, 2]))
    assert (ext.added_trials, ext.added_configs, ext.reused_configs) == (2, 0, 2)
    new = [t for t in trials_of(database, sid) if t.seed == 2]
    assert sorted(t.config_index for t in new) == [0, 1]  # the configs keep their index


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"dataset": "circles"}, "dataset"),
        ({"split": {"validation": 0.3}}, "split"),
        ({"metric": {"name": "val_error"}}, "metric"),
        ({"pruner": {"type": "median"}}, "pruner"),
        ({"refit": True}, "refit"),
    ],
)
def test_a_changed_fixed_parameter_is_rejected_at_its_field(
    database: Database, settings: Settings, change: dict[str, Any], loc: str
) -> None:
    sid = new_sweep(database, settings, **spec().model_dump(mode="json"))
    with pytest.raises(SpecError) as info:
        extend(database, settings, sid, spec(**change))
    assert [format_loc(e["loc"]) for e in info.value.errors] == [loc]
    assert len(trials_of(database, sid)) == 4  # nothing added


def test_a_canceled_sweep_is_not_extended(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, **spec().model_dump(mode="json"))
    with database.session() as s:
        cancel_sweep(s, s.get(Sweep, sid))
    with pytest.raises(ExtendConflict):
        extend(database, settings, sid, spec(parameters={"learning_rate": 0.3, "epochs": 1}))


def test_a_search_sweep_grows_its_budget(database: Database, settings: Settings) -> None:
    space = {"learning_rate": {"min": 0.001, "max": 0.3, "distribution": "log_uniform"}, "epochs": 1}
    raw = {"method": "tpe", "max_trials": 6, "seeds": [0], "parameters": space}
    sid = new_sweep(database, settings, **raw)
    run_all(database, settings, flat(lambda p: p["learning_rate"]))
    first = {t.config_key: t.id for t in trials_of(database, sid)}
    assert len(first) == 6 and sweep_of(database, sid).status == "succeeded"
    with pytest.raises(SpecError) as info:  # the space of a search sweep is fixed
        extend(database, settings, sid, spec(**{**raw, "parameters": {**space, "epochs": 2}}))
    assert [format_loc(e["loc"]) for e in info.value.errors] == ["parameters"]
    ext = extend(database, settings, sid, spec(**{**raw, "max_trials": 10}))
    assert ext.sweep.status == "running" and ext.sweep.n_trials == 10 and ext.reused_configs == 6
    run_all(database, settings, flat(lambda p: p["learning_rate"]))
    trials = trials_of(database, sid)
    assert len(trials) == len({t.config_key for t in trials}) == 10
    assert {t.config_key: t.id for t in trials if t.config_key in first} == first
    assert sweep_of(database, sid).status == "succeeded"
