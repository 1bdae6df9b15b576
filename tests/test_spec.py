"""The sweep spec: every rejection the issue lists, and grid expansion (pure, no database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.db import Database
from app.services.sweeps import dataset_facts
from app.spec import DataFacts, SpecError, SweepSpec, count_trials, expand, format_loc, validate_spec
from app.spec_errors import plain_errors

ROOT = Path(__file__).resolve().parents[1]
MOONS = DataFacts("classification", 2, n_features=2)
DIGITS = DataFacts("classification", 10, n_features=64)
REGRESSION = DataFacts("regression", 0, n_features=10)


def spec(**kw: Any) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", "dataset": "moons", **kw})


def rejected(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The (field path, message) pairs a spec is rejected with at parse time, in plain words."""
    body = {"name": "t", "dataset": "moons", **raw}
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate(body)
    return [(format_loc(e["loc"]), e["msg"]) for e in plain_errors(info.value.errors(), body, SweepSpec)]


def spec_errors(
    s: SweepSpec,
    facts: DataFacts,
    max_trials: int = 10_000,
    max_epochs: int = 10_000,
    max_parameters: int = 10**8,
) -> dict:
    """The {field path: message} a parsed spec is rejected with once its dataset is known."""
    with pytest.raises(SpecError) as info:
        validate_spec(s, facts, max_trials, max_epochs, max_parameters)
    return {format_loc(e["loc"]): e["msg"] for e in info.value.errors}


# --------------------------------------------------------------------------- parse-time rejections

PARSE_REJECTIONS = [
    # (spec fields, field path, a piece of the reason): plain words, the allowed values without
    # Python syntax, a scalar's error at the scalar's own path (not `[0]`).
    ({"dataset_name": "moons"}, "dataset_name", "unknown key 'dataset_name': did you mean dataset?"),
    ({"parameters": {"depth": [1, 2]}}, "parameters.depth", "unknown key 'depth'"),
    ({"parameters": {"hiden_units": 8}}, "parameters.hiden_units", "did you mean hidden_units?"),
    ({"metric": {"name": "val_loss", "direction": "min"}}, "metric.direction", "allowed keys: name, goal"),
    ({"split": {"train": 0.6}}, "split.train", "allowed keys: validation, test, seed"),
    ({"parameters": {"activation": ["relu", "swish"]}}, "parameters.activation[1]", "relu, tanh, sigmoid"),
    ({"parameters": {"optimizer": "rmsprop"}}, "parameters.optimizer", "not one of sgd, momentum, adam"),
    ({"parameters": {"loss": "hinge"}}, "parameters.loss", "mae, huber, bce, cross_entropy"),
    ({"metric": {"name": "accuracy"}}, "metric.name", "did you mean val_accuracy?"),
    ({"metric": [1]}, "metric", "must be a mapping with keys name, goal, threshold, got [1]"),
    ({"parameters": {"learning_rate": [0.1, 0]}}, "parameters.learning_rate[1]", "greater than 0"),
    ({"parameters": {"learning_rate": -0.01}}, "parameters.learning_rate", "must be greater than 0"),
    ({"parameters": {"batch_size": "big"}}, "parameters.batch_size", "must be a whole number, got 'big'"),
    (
        {"parameters": {"learning_rate": {"values": [0.01, -1]}}},
        "parameters.learning_rate[1]",
        "greater than 0",
    ),
    ({"parameters": {"learning_rate": float("inf")}}, "parameters.learning_rate", "finite"),
    ({"parameters": {"layers": []}}, "parameters.layers", "must not be empty"),
    ({"parameters": {"activation": {"values": []}}}, "parameters.activation", "must not be empty"),
    ({"parameters": {"hidden_units": [[]]}}, "parameters.hidden_units[0]", "must not be empty"),
    ({"seeds": []}, "seeds", "must not be empty"),
    ({"seeds": [0, 1, 0]}, "seeds", "distinct"),
    ({"refit": "maybe"}, "refit", "must be true or false"),
    ({"split": {"validation": 0.5, "test": 0.5}}, "split", "leaves no training data"),
    ({"split": {"validation": 0.7, "test": 0.4}}, "split", "leaves no training data"),
    ({"split": {"seed": 2**62}}, "split.seed", "must be at most 2147483647"),
    (
        {"parameters": {"learning_rate": {"min": 0.1, "max": 0.001}}},
        "parameters.learning_rate.max",
        "max must be above min",
    ),
    (
        {"parameters": {"dropout": {"distribution": "log_uniform", "min": 0, "max": 0.5}}},
        "parameters.dropout.min",
        "log_uniform needs min > 0",
    ),
    (
        {"parameters": {"dropout": {"distribution": "uniform", "values": [0.1]}}},
        "parameters.dropout.values",
        "unknown key 'values'",
    ),
    ({"parameters": {"epochs": 0}}, "parameters.epochs", "greater than 0"),
    ({"parameters": {"dropout": 1.0}}, "parameters.dropout", "less than 1"),
    ({"parameters": {"layers": 65}}, "parameters.layers", "must be at most 64"),
    ({"parameters": {"activation": {"min": 1, "max": 2}}}, "parameters.activation", "not a distribution"),
    ({"parameters": {"layers": {"min": 1, "max": 3.5}}}, "parameters.layers.max", "whole number, got 3.5"),
    ({"parameters": {"dropout": {"min": 0, "max": 1}}}, "parameters.dropout.max", "less than 1"),
    ({"parameters": {"batch_size": {"min": 8, "max": 64}}}, "parameters.batch_size", "not a distribution"),
    ({"parameters": {"epochs": {"value": 3, "min": 1}}}, "parameters.epochs", "not a distribution"),
    ({"parameters": [{"layers": [1]}, {"depth": 2}]}, "parameters[1].depth", "unknown key 'depth'"),
    ({"parameters": []}, "parameters", "at least one grid"),
    ({"method": "bayes"}, "method", "'bayes' is not one of grid, random, tpe, qmc"),
    ({"pruner": {"type": "median", "reduction_factor": 2}}, "pruner.reduction_factor", "asha pruner"),
    ({"pruner": {"type": "asha", "audit": 1.5}}, "pruner.audit", "must be at most 1, got 1.5"),
    ({"max_trials": 0}, "max_trials", "must be at least 1, got 0"),
]


@pytest.mark.parametrize(
    ("raw", "loc", "reason"), PARSE_REJECTIONS, ids=[r[1] + ":" + r[2] for r in PARSE_REJECTIONS]
)
def test_parse_rejections_name_the_field_and_the_reason(raw: dict, loc: str, reason: str) -> None:
    errors = rejected(raw)
    assert any(e_loc == loc or e_loc.startswith(loc + ".") for e_loc, _ in errors), errors
    assert any(reason in msg for e_loc, msg in errors if e_loc.startswith(loc)), errors


def test_dataset_is_required_name_is_not() -> None:
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate({"parameters": {}})
    assert [(e["loc"], e["msg"]) for e in plain_errors(info.value.errors(), {}, SweepSpec)] == [
        (["dataset"], "is required")
    ]
    assert SweepSpec.model_validate({"dataset": "moons"}).name is None


def test_scalars_where_lists_are_taken_and_the_wandb_spellings() -> None:
    s = SweepSpec.model_validate({"dataset": "moons", "seeds": 0, "method": "grid", "metric": "val_error"})
    assert s.seeds == [0] and s.method == "grid" and s.metric.name == "val_error"
    assert s.metric.goal == "minimize"


def test_a_union_is_one_message_at_the_scalars_path() -> None:
    # hidden_units takes a width or a per-layer list: both branches refuse "x", one message says so.
    assert rejected({"parameters": {"hidden_units": "x"}}) == [
        ("parameters.hidden_units", "must be a whole number or a list, got 'x'")
    ]
    assert rejected({"parameters": {"hidden_units": [8, [0]]}}) == [
        ("parameters.hidden_units[1][0]", "must be greater than 0, got 0")
    ]


# --------------------------------------------------------------------------- rejections that need the dataset


def test_unknown_dataset_is_rejected_at_dataset(database: Database) -> None:
    # Neither built-in nor uploaded: the lookup reaches the store (both backends).
    with database.session(readonly=True) as session, pytest.raises(SpecError) as info:
        dataset_facts(session, "mnist")
    (err,) = info.value.errors
    assert format_loc(err["loc"]) == "dataset"
    assert "unknown dataset 'mnist'" in err["msg"] and "moons" in err["msg"]
    assert "uploaded" in err["msg"]


def test_builtin_datasets_resolve_to_their_task() -> None:
    assert dataset_facts(None, "moons") == MOONS  # type: ignore[arg-type]
    assert dataset_facts(None, "digits") == DIGITS  # type: ignore[arg-type]
    assert dataset_facts(None, "friedman1") == REGRESSION  # type: ignore[arg-type]
    assert dataset_facts(None, "diabetes") == REGRESSION  # type: ignore[arg-type]


def test_grid_over_the_limit_says_how_many_trials_it_makes() -> None:
    s = spec(parameters={"layers": [1, 2, 3], "learning_rate": [0.1, 0.01, 0.001, 1.0]}, seeds=[0, 1])
    assert count_trials(s) == 24
    errs = spec_errors(s, MOONS, max_trials=23)
    assert "makes 24 trials" in errs["parameters"] and "12 configs x 2 seeds" in errs["parameters"]
    assert "limit of 23" in errs["parameters"]
    assert validate_spec(s, MOONS, max_trials=24, max_epochs=100, max_parameters=10**8) == 24


def test_a_model_over_the_size_limit_is_rejected_at_its_widths() -> None:
    """64 layers of 65,536 units passed before: ~275 billion parameters, which no worker trains."""
    s = spec(parameters={"layers": [1, 64], "hidden_units": [16, 65_536]})
    errs = spec_errors(s, MOONS)
    assert set(errs) == {"parameters.hidden_units[1]"}
    assert (
        "layers=64, hidden_units=65536 makes a model of 270,587,330,561 parameters"
        in errs["parameters.hidden_units[1]"]
    )
    assert "over the limit of 100,000,000" in errs["parameters.hidden_units[1]"]
    # The count is exact (inputs and outputs included): 2 -> 16 -> 16 -> 1 is 48 + 272 + 17 = 337.
    ok = spec(parameters={"layers": 2, "hidden_units": 16})
    assert validate_spec(ok, MOONS, 10_000, 10_000, max_parameters=337) == 1
    assert "337 parameters" in spec_errors(ok, MOONS, max_parameters=336)["parameters.hidden_units[0]"]


def test_repeated_grid_values_are_rejected_at_their_axis() -> None:
    """A value twice would train the same configs twice (seeds already must be distinct)."""
    assert rejected({"parameters": {"learning_rate": [0.1, 0.01, 0.1]}}) == [
        ("parameters.learning_rate", "values must be distinct, got [0.1, 0.01, 0.1] (0.1 twice)")
    ]
    # `auto` is bce on two classes: [auto, bce] is one loss twice; on three classes it is two.
    s = spec(parameters={"loss": ["auto", "bce", "cross_entropy"]})
    errs = spec_errors(s, MOONS)
    assert errs == {"parameters.loss[1]": "'bce' is 'bce' on 'moons', the same as parameters.loss[0]"}
    three = spec(dataset="digits", parameters={"loss": ["auto", "cross_entropy"]})
    assert "parameters.loss[1]" in spec_errors(three, DIGITS)
    assert validate_spec(spec(parameters={"loss": ["auto", "cross_entropy"]}), MOONS, 100, 100, 10**8) == 2


def test_default_limit_is_ten_thousand_trials() -> None:
    from app.config import Settings

    huge = spec(
        parameters={"learning_rate": [i / 1000 for i in range(1, 101)], "batch_size": list(range(1, 102))}
    )
    assert Settings(database_url="sqlite://").max_trials == 10_000
    assert "makes 10100 trials" in spec_errors(huge, MOONS)["parameters"]


@pytest.mark.parametrize(
    ("loss", "facts", "reason"),
    [
        ("bce", REGRESSION, "does not fit a regression task"),
        ("cross_entropy", REGRESSION, "does not fit a regression task"),
        ("mse", MOONS, "does not fit a classification task"),
        ("huber", DIGITS, "does not fit a classification task"),
        ("bce", DIGITS, "needs exactly 2 classes"),
    ],
)
def test_loss_must_fit_the_task(loss: str, facts: DataFacts, reason: str) -> None:
    errs = spec_errors(spec(parameters={"loss": ["auto", loss]}), facts)
    assert list(errs) == ["parameters.loss[1]"]  # `auto` always fits
    assert reason in errs["parameters.loss[1]"]


@pytest.mark.parametrize("metric", ["val_error", "val_accuracy"])
def test_classification_metric_on_a_regression_dataset(metric: str) -> None:
    errs = spec_errors(spec(dataset="friedman1", metric={"name": metric}), REGRESSION)
    assert "regression dataset" in errs["metric.name"] and "val_loss" in errs["metric.name"]


def test_epochs_over_the_limit() -> None:
    errs = spec_errors(spec(parameters={"epochs": [5, 50]}), MOONS, max_epochs=10)
    assert errs == {"parameters.epochs[1]": "50 epochs is over the limit of 10"}


def test_several_problems_are_reported_together() -> None:
    s = spec(dataset="friedman1", metric={"name": "val_error"}, parameters={"loss": "bce", "epochs": 99})
    assert set(spec_errors(s, REGRESSION, max_epochs=10)) == {
        "metric.name",
        "parameters.loss[0]",
        "parameters.epochs[0]",
    }


# --------------------------------------------------------------------------- parameter forms


def test_wandb_forms_equal_the_plain_forms() -> None:
    wandb = spec(
        parameters={
            "learning_rate": {"values": [0.001, 0.01]},
            "epochs": {"value": 20},
            "layers": {"value": 2},
        }
    )
    plain = spec(parameters={"learning_rate": [0.001, 0.01], "epochs": 20, "layers": 2})
    assert wandb == plain
    assert wandb.parameters.epochs == [20] and wandb.parameters.learning_rate == [0.001, 0.01]


def test_metric_goal_defaults_by_metric() -> None:
    assert spec(metric={"name": "val_accuracy"}).metric.goal == "maximize"
    assert spec(metric={"name": "val_error"}).metric.goal == "minimize"
    assert spec(metric={"name": "val_r2"}).metric.goal == "maximize"
    assert spec(metric={"name": "val_rmse"}).metric.goal == "minimize"


def test_the_default_metric_is_the_tasks_and_every_loss_shares_it() -> None:
    # No metric named: filled in once the dataset's task is known.
    assert spec().metric.name is None
    s = spec()
    validate_spec(s, MOONS, 100, 100, 10**8)
    assert (s.metric.name, s.metric.goal) == ("val_error", "minimize")
    r = spec(dataset="friedman1", parameters={"loss": ["mse", "huber"]})
    validate_spec(r, REGRESSION, 100, 100, 10**8)
    assert (r.metric.name, r.metric.goal) == ("val_rmse", "minimize")
    assert r.model_dump(mode="json")["metric"]["name"] == "val_rmse"  # the stored spec names it
    assert (s.select_epoch, s.early_stopping) == ("best", None)


def test_val_loss_over_a_loss_grid_is_refused_naming_metric() -> None:
    errs = spec_errors(
        spec(dataset="friedman1", metric="val_loss", parameters={"loss": ["mse", "huber"]}), REGRESSION
    )
    msg = errs["metric.name"]
    assert "different scales" in msg and "huber, mse" in msg and "val_rmse" in msg
    # One loss: val_loss is on one scale, and allowed.
    assert (
        validate_spec(
            spec(dataset="friedman1", metric="val_loss", parameters={"loss": "huber"}),
            REGRESSION,
            100,
            100,
            10**8,
        )
        == 1
    )


@pytest.mark.parametrize(
    ("raw", "path", "piece"),
    [
        ({"select_epoch": "first"}, "select_epoch", "best, last"),
        ({"early_stopping": {"patience": 0}}, "early_stopping.patience", "1"),
        ({"early_stopping": {"patience": 3, "min_delta": -0.1}}, "early_stopping.min_delta", "0"),
        ({"early_stopping": {"patience": 2.5}}, "early_stopping.patience", ""),
        ({"early_stopping": {"min_delta": 0.1}}, "early_stopping.patience", ""),
        ({"early_stopping": {"patience": 3, "delta": 0.1}}, "early_stopping.delta", "min_delta"),
        ({"metric": "val_mse"}, "metric.name", "val_rmse"),
    ],
)
def test_bad_epoch_rules_are_refused_with_their_path(raw: dict, path: str, piece: str) -> None:
    errors = dict(rejected(raw))
    assert path in errors, errors
    assert piece in errors[path]


def test_early_stopping_on_a_metric_the_task_lacks_is_refused() -> None:
    s = spec(metric="val_rmse", early_stopping={"patience": 2})
    errs = spec_errors(s, MOONS)
    assert "classification dataset" in errs["metric.name"]
    assert "val_rmse does not exist" in errs["early_stopping"]
    ok = spec(early_stopping={"patience": 2, "min_delta": 0.01}, select_epoch="last")
    assert validate_spec(ok, MOONS, 100, 100, 10**8) == 1
    assert ok.early_stopping is not None and ok.early_stopping.patience == 2


def test_per_layer_widths_are_accepted_and_fix_their_depth() -> None:
    s = spec(parameters={"layers": [1, 2, 3], "hidden_units": {"values": [64, [128, 64], [32, 16, 8]]}})
    rows = list(expand(s, MOONS))
    archs = [(r.params["layers"], r.params["hidden_units"]) for r in rows]
    assert archs == [(1, 64), (2, 64), (2, [128, 64]), (3, 64), (3, [32, 16, 8])]
    assert count_trials(s) == 5
    assert validate_spec(s, MOONS, 100, 100, 10**8) == 5


def test_a_per_layer_list_matching_no_depth_is_rejected() -> None:
    s = spec(parameters={"layers": [1, 3], "hidden_units": {"values": [64, [128, 64]]}})
    errs = spec_errors(s, MOONS)
    assert list(errs) == ["parameters.hidden_units[1]"]
    assert "2 widths" in errs["parameters.hidden_units[1]"] and "[1, 3]" in errs["parameters.hidden_units[1]"]


# --------------------------------------------------------------------------- expansion

GRIDS = [
    {},
    {"parameters": {"layers": [1, 2, 3], "hidden_units": [16, 64], "activation": ["relu", "tanh"]}},
    {
        "parameters": {"learning_rate": [0.1, 0.01], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.5]},
        "seeds": [0, 1, 2],
    },
    {
        "parameters": {
            "layers": [1, 2],
            "hidden_units": {"values": [8, [8, 4], [4, 4, 4]]},
            "loss": ["auto", "bce"],
        }
    },
    {
        "parameters": {"batch_size": [16, 32, 64], "epochs": [1, 2], "weight_decay": [0, 1e-4]},
        "seeds": [5, 7],
    },
]


@pytest.mark.parametrize("raw", GRIDS)
def test_count_equals_expansion(raw: dict) -> None:
    s = spec(**raw)
    rows = list(expand(s, MOONS))
    assert count_trials(s) == len(rows)
    assert len({(r.config_index, r.seed) for r in rows}) == len(rows)  # no (config, seed) twice


def test_counts_of_the_examples() -> None:
    expected = {"moons.yaml": 54, "regression.yaml": 120, "lecture.yaml": 72}
    expected |= {"subgrids.yaml": 10, "search.yaml": 60}
    for name, n in expected.items():
        s = SweepSpec.model_validate(yaml.safe_load((ROOT / "examples" / name).read_text()))
        facts = dataset_facts(None, s.dataset)  # type: ignore[arg-type]
        assert validate_spec(s, facts, 10_000, 10_000, 10**8) == n, name
        # A search sweep's configs are suggested as it runs: nothing to expand up front.
        assert len(list(expand(s, facts))) == (0 if s.method != "grid" else n), name


def test_expansion_order_is_deterministic_and_seeds_vary_fastest() -> None:
    raw = {
        "parameters": {"layers": [1, 2], "learning_rate": [0.1, 0.01], "activation": ["relu", "tanh"]},
        "seeds": [3, 1],
    }
    a, b = list(expand(spec(**raw), MOONS)), list(expand(spec(**raw), MOONS))
    assert a == b
    assert [(r.config_index, r.seed) for r in a] == [(i, s) for i in range(8) for s in (3, 1)]
    # Axes vary in spec order, the first slowest: layers, then activation, then learning_rate.
    configs = [(r.params["layers"], r.params["activation"], r.params["learning_rate"]) for r in a[::2]]
    assert configs == [(la, ac, lr) for la in (1, 2) for ac in ("relu", "tanh") for lr in (0.1, 0.01)]


def test_config_key_is_shared_by_seeds_and_distinct_across_configs() -> None:
    rows = list(expand(spec(parameters={"hidden_units": [8, 16, 32]}, seeds=[0, 1, 2]), MOONS))
    keys: dict[int, set[str]] = {}
    for r in rows:
        keys.setdefault(r.config_index, set()).add(r.config_key)
    assert all(len(k) == 1 for k in keys.values())
    assert len({next(iter(k)) for k in keys.values()}) == 3
    # The key is a function of the config alone: the same grid point in another sweep has it too.
    other = list(expand(spec(parameters={"hidden_units": [32]}, seeds=[9]), MOONS))
    assert other[0].config_key == next(iter(keys[2]))


def test_params_carry_every_axis() -> None:
    (row,) = expand(spec(), MOONS)
    assert set(row.params) == {
        "layers",
        "hidden_units",
        "activation",
        "learning_rate",
        "optimizer",
        "batch_size",
        "epochs",
        "dropout",
        "weight_decay",
        "loss",
    }


@pytest.mark.parametrize(
    ("facts", "resolved"), [(MOONS, "bce"), (DIGITS, "cross_entropy"), (REGRESSION, "mse")]
)
def test_auto_loss_is_resolved_for_the_task(facts: DataFacts, resolved: str) -> None:
    rows = list(expand(spec(), facts))
    assert [r.params["loss"] for r in rows] == [resolved]


def test_pack_key_groups_trials_that_can_train_together() -> None:
    rows = list(expand(spec(parameters={"hidden_units": [8, 16], "batch_size": [16, 32]}), MOONS))
    by_bs: dict[int, set[str]] = {}
    for r in rows:
        by_bs.setdefault(r.params["batch_size"], set()).add(r.pack_key)
    assert all(len(k) == 1 for k in by_bs.values()) and len(set().union(*by_bs.values())) == 2


# --------------------------------------------------------------------------- spec files (YAML)


def test_spec_files_name_file_line_and_column_and_refuse_duplicated_keys(tmp_path: Path) -> None:
    from gridsweep.specfile import SpecFileError, load_spec_file

    def load(text: str, name: str = "s.yaml") -> dict:
        path = tmp_path / name
        path.write_text(text)
        return load_spec_file(path)

    assert load("dataset: moons\n", "my-grid.yaml")["name"] == "my-grid"  # named after the file
    assert load("name: kept\ndataset: moons\n")["name"] == "kept"
    with pytest.raises(SpecFileError) as info:
        load("dataset: moons\nparameters:\n  epochs: 3\n  layers: [1]\n  epochs: 5\n")
    assert str(info.value) == (
        f"{tmp_path / 's.yaml'}, line 5, column 3: key 'epochs' appears twice in one mapping "
        "(first at line 3); keep one of them"
    )
    with pytest.raises(SpecFileError) as info:
        load("dataset: moons\n  seeds: [0]\n")
    where = f"{tmp_path / 's.yaml'}, line 2, column 8"
    assert str(info.value).startswith(f"{where}: mapping values are not allowed")
    assert (info.value.line, info.value.column) == (2, 8)
    with pytest.raises(SpecFileError, match=r"s.yaml: a spec is a mapping \(name, dataset, parameters"):
        load("- moons\n")
    with pytest.raises(SpecFileError, match="this is an empty file"):
        load("")
    with pytest.raises(SpecFileError, match=r"missing.yaml: cannot read it: No such file or directory"):
        load_spec_file(tmp_path / "missing.yaml")
    # A YAML merge key may override what it merges: that is no duplicate.
    merged = load("base: &b {epochs: 2, layers: 1}\ndataset: moons\nparameters:\n  <<: *b\n  epochs: 3\n")
    assert merged["parameters"] == {"epochs": 3, "layers": 1}


# --------------------------------------------------------------------------- sub-grids and search


def test_sub_grids_expand_to_their_union_each_config_once() -> None:
    s = spec(
        parameters=[
            {"optimizer": "sgd", "learning_rate": [0.1, 0.5], "hidden_units": [8, 16]},
            {"optimizer": "adam", "learning_rate": [0.01, 0.1], "hidden_units": 8},
            {"optimizer": "sgd", "learning_rate": 0.1, "hidden_units": [16, 32]},  # sgd 0.1 x 16 again
        ],
        seeds=[0, 1],
    )
    rows = list(expand(s, MOONS))
    configs = [
        (r.params["optimizer"], r.params["learning_rate"], r.params["hidden_units"])
        for r in rows
        if r.seed == 0
    ]
    assert configs == [
        ("sgd", 0.1, 8), ("sgd", 0.5, 8), ("sgd", 0.1, 16), ("sgd", 0.5, 16),
        ("adam", 0.01, 8), ("adam", 0.1, 8),
        ("sgd", 0.1, 32),
    ]  # fmt: skip
    assert [r.config_index for r in rows] == [i for i in range(7) for _ in (0, 1)]
    assert len({r.config_key for r in rows}) == 7
    assert count_trials(s, MOONS) == validate_spec(s, MOONS, 10_000, 10_000, 10**8) == 14


def test_sub_grids_that_meet_only_once_loss_is_resolved_are_counted_once() -> None:
    s = spec(
        parameters=[{"loss": "auto", "learning_rate": [0.1, 0.2]}, {"loss": "bce", "learning_rate": 0.1}]
    )
    assert validate_spec(s, MOONS, 10_000, 10_000, 10**8) == 2  # auto is bce on moons
    assert count_trials(s) == 3  # without the dataset: an upper bound (the dry run says so)


def test_a_sub_grids_errors_carry_its_index() -> None:
    s = spec(parameters=[{"learning_rate": 0.1}, {"loss": "mse", "epochs": 10**6}])
    errors = spec_errors(s, MOONS)
    assert set(errors) == {"parameters[1].loss[0]", "parameters[1].epochs[0]"}
    union = spec(parameters=[{"learning_rate": [0.1, 0.2], "layers": [1, 2]}, {"learning_rate": [0.3, 0.4]}])
    assert "3 configs" not in spec_errors(union, MOONS, max_trials=5)["parameters"]
    assert "the grid makes 6 trials" in spec_errors(union, MOONS, max_trials=5)["parameters"]


RANGE = {"learning_rate": {"min": 0.001, "max": 0.1, "distribution": "log_uniform"}}


@pytest.mark.parametrize(
    ("raw", "loc", "reason"),
    [
        ({"parameters": RANGE}, "parameters.learning_rate", "needs method random, tpe or qmc"),
        ({"method": "tpe", "parameters": RANGE}, "max_trials", "needs max_trials"),
        (
            {"method": "random", "max_trials": 4000, "seeds": [0, 1, 2], "parameters": RANGE},
            "max_trials",
            "12000",
        ),
        ({"max_trials": 10}, "max_trials", "method grid runs every config"),
        ({"method": "tpe", "max_trials": 10}, "parameters", "every parameter is fixed"),
        (
            {"method": "tpe", "max_trials": 10, "parameters": {"learning_rate": [0.1, 0.2]}},
            "max_trials",
            "2 configs",
        ),
        ({"method": "qmc", "max_trials": 5, "parameters": [RANGE, {"layers": 2}]}, "parameters", "sub-grids"),
        (
            {
                "method": "random",
                "max_trials": 13,
                "parameters": {"hidden_units": {"min": 1, "max": 6}, "activation": ["relu", "tanh"]},
            },
            "max_trials",
            "more than the 12 configs",
        ),
        (
            {
                "method": "random",
                "max_trials": 7,
                "parameters": {"layers": {"min": 1, "max": 3}, "hidden_units": [[4, 4], 8]},
            },
            "max_trials",
            "more than the 4 configs",
        ),
        (
            {"method": "tpe", "max_trials": 5, "parameters": {"hidden_units": {"min": 8, "max": 10**6}}},
            "parameters.hidden_units.max",
            "less than or equal to 65536",
        ),
    ],
)
def test_search_specs_are_checked_with_the_field_path(raw: dict, loc: str, reason: str) -> None:
    try:
        s = spec(**raw)
    except ValidationError as exc:  # a bound of the axis: at parse time
        errors = {format_loc(e["loc"]): e["msg"] for e in exc.errors()}
    else:
        errors = spec_errors(s, MOONS)
    assert loc in errors and reason in errors[loc], errors


def test_a_range_is_checked_at_its_ends() -> None:
    wide = spec(
        method="tpe", max_trials=5, parameters={"layers": {"min": 1, "max": 64}, "hidden_units": 65_536}
    )
    assert "parameters.hidden_units[0]" in spec_errors(wide, MOONS)  # the deepest, widest model is too big
    ok = spec(
        method="tpe", max_trials=4, parameters={"layers": {"min": 1, "max": 3}, "hidden_units": [[8, 8], 16]}
    )
    assert validate_spec(ok, MOONS, 10_000, 10_000, 10**8) == 4  # [8, 8] fits depth 2 of 1..3: 4 configs


def test_the_json_schema_has_the_epoch_rules_and_every_metric() -> None:
    from app.cli.spec_schema import spec_json_schema

    s = spec_json_schema()
    props = s["properties"]
    assert props["select_epoch"]["enum"] == ["best", "last"] and props["select_epoch"]["default"] == "best"
    es = s["$defs"]["EarlyStopping"]
    assert es["properties"]["patience"]["minimum"] == 1 and es["properties"]["min_delta"]["minimum"] == 0
    assert es["required"] == ["patience"]
    short = props["metric"]["anyOf"][0]
    assert {"val_rmse", "val_error", "val_log_loss", "val_r2"} <= set(short["enum"])
    assert "val_rmse (regression)" in props["metric"]["description"]
