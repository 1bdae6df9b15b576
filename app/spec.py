"""The sweep spec: one pydantic model validates JSON (API) and YAML (CLI).

A parameter is a scalar (fixed), a list (a grid axis), or the W&B form
``{value: x}`` / ``{values: [...]}``. ``expand`` turns a validated spec into
trial rows; ``count_trials`` knows the count without expanding. Sub-grids,
distributions, search methods and pruners are in ``app/search_spec.py``; the metric,
``select_epoch`` and ``early_stopping`` in ``app/metric_spec.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WrapSerializer,
    WrapValidator,
    field_validator,
    model_validator,
)

from app.edge_types import NotBool, Text
from app.metric_spec import EarlyStopping, MetricSpec, metric_errors, resolve_metric
from app.search_spec import (
    Method,
    PrunerSpec,
    axis_or_range,
    check_search,
    checkable,
    dump_axis,
    dump_grids,
    one_or_more_grids,
    space_size,
)
from gridsweep.vocab import ACTIVATIONS, OPTIMIZERS, resolve_loss

# Axis order is the expansion order; seeds vary fastest.
AXES = (
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
)


class SpecError(ValueError):
    """Spec problems found after parsing; each error has a ``loc`` path and a ``msg``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in errors))


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("parameters", "loss", 0)`` -> ``parameters.loss[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _as_axis(value: Any) -> Any:
    """Normalize a parameter to a list of grid values."""
    if isinstance(value, dict):
        keys = set(value)
        if keys == {"values"}:
            return value["values"]
        if keys == {"value"}:
            return [value["value"]]
        raise ValueError(
            "a parameter is a value, a list of values, {value: x}, {values: [...]} or a "
            f"distribution {{min, max, distribution}}; got keys {sorted(keys)}"
        )
    if isinstance(value, list):
        return value
    return [value]


def Axis(item: Any) -> Any:
    # The wrap (outermost) validator takes a distribution {min, max, distribution} aside.
    return Annotated[
        list[item],
        BeforeValidator(_as_axis),
        Field(min_length=1),
        WrapValidator(axis_or_range),
        PlainSerializer(dump_axis),
    ]


# Upper bounds on every integer, so that no value is too large to store, train or even count.
MAX_BATCH_SIZE = 1_000_000
MAX_EPOCHS = 1_000_000  # the server's GRIDSWEEP_MAX_EPOCHS (default 10,000) is checked at submit
MAX_SEED = 2**31 - 1
Width = Annotated[int, Field(gt=0, le=65_536), NotBool]
Real = Annotated[float, Field(allow_inf_nan=False), NotBool]


def RealIn(**bounds: float) -> Any:
    """A finite real within ``bounds`` (``Field`` before the validator: the JSON Schema keeps them)."""
    return Annotated[float, Field(allow_inf_nan=False, **bounds), NotBool]


class Parameters(BaseModel):
    """The grid. Each field is a list of values; a scalar is a list of one."""

    model_config = ConfigDict(extra="forbid")

    layers: Axis(Annotated[int, Field(ge=1, le=64), NotBool]) = [1]
    # A width for every hidden layer, or a per-layer list (which fixes the depth itself:
    # it is combined only with the matching `layers` value).
    hidden_units: Axis(Width | Annotated[list[Width], Field(min_length=1, max_length=64)]) = [64]
    activation: Axis(Literal[ACTIVATIONS]) = ["relu"]
    learning_rate: Axis(RealIn(gt=0)) = [0.01]
    optimizer: Axis(Literal[OPTIMIZERS]) = ["adam"]
    batch_size: Axis(Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE), NotBool]) = [64]
    epochs: Axis(Annotated[int, Field(gt=0, le=MAX_EPOCHS), NotBool]) = [20]
    dropout: Axis(RealIn(ge=0, lt=1)) = [0.0]
    weight_decay: Axis(RealIn(ge=0)) = [0.0]
    loss: Axis(Literal["auto", "mse", "mae", "huber", "bce", "cross_entropy"]) = ["auto"]

    @field_validator("*")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        # A repeated value would train the same configs twice; the error's path is the axis.
        if not isinstance(values, list):  # a distribution
            return values
        seen: set[str] = set()
        for v in values:
            key = json.dumps(v)
            if key in seen:
                raise ValueError(f"values must be distinct, got {values} ({v} twice)")
            seen.add(key)
        return values


class SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validation: RealIn(gt=0, lt=1) = 0.2
    test: RealIn(gt=0, lt=1) = 0.2
    # Bounded like trial seeds: the batch order is seeded from it (torch seeds are 64-bit).
    seed: Annotated[int, NotBool] = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.validation + self.test >= 1:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves no training data (< 1 needed)"
            )
        return self


def _id_as_str(v: Any) -> Any:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _as_list(v: Any) -> Any:
    """A scalar where a list is expected is a list of one (``seeds: 0``)."""
    return v if isinstance(v, list | tuple) else [v]


def _metric_name(v: Any) -> Any:
    """``metric: val_accuracy`` is short for ``metric: {name: val_accuracy}``."""
    return {"name": v} if isinstance(v, str) else v


class SweepSpec(BaseModel):
    """A grid search: what to train on, the grid, the seeds and the split."""

    model_config = ConfigDict(extra="forbid")

    # Optional: the CLI and the Python client name a spec after its file; the API names a
    # nameless sweep ``<dataset>-<id>``.
    name: Text | None = Field(None, min_length=1, max_length=200)
    # A built-in name, or an uploaded dataset's name or id (an integer is taken as the id).
    dataset: Annotated[Text, BeforeValidator(_id_as_str), Field(min_length=1, max_length=200)]
    metric: Annotated[MetricSpec, BeforeValidator(_metric_name)] = MetricSpec()
    # One grid, or a list of grids (sub-grids: their union, each config once): see ``grids``.
    parameters: Annotated[Parameters, WrapValidator(one_or_more_grids), WrapSerializer(dump_grids)] = (
        Parameters()
    )
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_SEED), NotBool]],
        BeforeValidator(_as_list),
        Field(min_length=1, max_length=10_000),
    ] = [0]
    split: SplitSpec = SplitSpec()
    refit: bool = False
    # grid: every config; random / tpe / qmc: max_trials configs suggested by Optuna's samplers.
    method: Method = "grid"
    max_trials: int | None = Field(None, ge=1)
    sampler_seed: int = Field(0, ge=0, le=2**31 - 1)
    pruner: PrunerSpec | None = None
    # A trial's score is its best epoch's value of the metric (and that epoch's weights are
    # kept), or its last epoch's.
    select_epoch: Literal["best", "last"] = "best"
    early_stopping: EarlyStopping | None = None

    @property
    def grids(self) -> list[Parameters]:
        """The grids of ``parameters``: one, or the sub-grids."""
        p: Any = self.parameters
        return list(p) if isinstance(p, list) else [p]

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        # A field validator, so the error's path is `seeds` (not the whole spec).
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds


@dataclass(frozen=True)
class DataFacts:
    """What validation needs to know about the dataset a spec names."""

    task: str
    n_classes: int
    n_features: int = 0  # 0: not known here (the size limit then counts from the first hidden layer)


@dataclass(frozen=True)
class TrialRow:
    config_index: int
    config_key: str
    pack_key: str
    seed: int
    params: dict[str, Any]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def _depth_ok(layers: int, width: int | list[int]) -> bool:
    return not isinstance(width, list) or len(width) == layers


def _grid_count(p: Parameters) -> int:
    """Configs of one grid (every axis a list)."""
    arch = sum(1 for layers in p.layers for w in p.hidden_units if _depth_ok(layers, w))
    rest = 1
    for axis in AXES[2:]:
        rest *= len(getattr(p, axis))
    return arch * rest


# Sub-grids are counted by expanding them (their union drops shared configs); past this many
# configs in one sub-grid the sum stands in (the spec is over any limit anyway).
EXPAND_TO_COUNT = 1_000_000


def count_trials(spec: SweepSpec, facts: DataFacts | None = None) -> int:
    """How many trials ``expand`` makes, without expanding one grid (grids can be huge).

    Sub-grids: their union, each config once (with ``facts``, ``loss: auto`` is resolved
    first, as in ``expand``). Methods random / tpe / qmc: ``max_trials`` configs.
    """
    if spec.method != "grid":
        return (spec.max_trials or 0) * len(spec.seeds)
    grids = spec.grids
    sizes = [_grid_count(checkable(g)) for g in grids]
    if len(grids) == 1 or max(sizes) > EXPAND_TO_COUNT:
        return sum(sizes) * len(spec.seeds)
    return sum(1 for _ in _configs(spec, facts)) * len(spec.seeds)


def model_parameters(n_features: int, widths: list[int], n_outputs: int) -> int:
    """Weights and biases of an MLP ``n_features -> widths... -> n_outputs``."""
    dims = [n_features, *widths, n_outputs]
    return sum(i * o + o for i, o in itertools.pairwise(dims))


def _too_large(spec: SweepSpec, facts: DataFacts, max_parameters: int) -> Iterator[dict[str, Any]]:
    """An error per ``hidden_units`` entry that makes a model over ``max_parameters``."""
    p = spec.parameters
    n_out = facts.n_classes if facts.task == "classification" and facts.n_classes > 2 else 1
    for i, w in enumerate(p.hidden_units):
        for layers in sorted(p.layers, reverse=True):  # the deepest first: the largest model
            if not _depth_ok(layers, w):
                continue
            widths = w if isinstance(w, list) else [w] * layers
            n = model_parameters(facts.n_features, widths, n_out)
            if n > max_parameters:
                yield {
                    "loc": ("parameters", "hidden_units", i),
                    "msg": f"layers={layers}, hidden_units={w} makes a model of {n:,} parameters, "
                    f"over the limit of {max_parameters:,}",
                }
            break


def _grid_errors(
    spec: SweepSpec, facts: DataFacts, max_epochs: int, max_parameters: int
) -> list[dict[str, Any]]:
    """The checks of one grid (``spec.parameters`` is a single grid, ranges as their two ends)."""
    errors: list[dict[str, Any]] = []
    p = spec.parameters
    resolved: dict[str, int] = {}
    for i, loss in enumerate(p.loss):
        try:
            concrete = resolve_loss(loss, facts.task, facts.n_classes)
        except ValueError as exc:
            errors.append({"loc": ("parameters", "loss", i), "msg": str(exc)})
            continue
        if concrete in resolved:  # `auto` and the loss it stands for: the same configs twice
            errors.append(
                {
                    "loc": ("parameters", "loss", i),
                    "msg": f"{loss!r} is {concrete!r} on {spec.dataset!r}, "
                    f"the same as parameters.loss[{resolved[concrete]}]",
                }
            )
        resolved.setdefault(concrete, i)
    for i, w in enumerate(p.hidden_units):
        if isinstance(w, list) and len(w) not in p.layers:
            errors.append(
                {
                    "loc": ("parameters", "hidden_units", i),
                    "msg": f"{w} has {len(w)} widths but layers takes only {p.layers}",
                }
            )
    for i, e in enumerate(p.epochs):
        if e > max_epochs:
            errors.append(
                {"loc": ("parameters", "epochs", i), "msg": f"{e} epochs is over the limit of {max_epochs}"}
            )
    errors.extend(_too_large(spec, facts, max_parameters))
    return errors


def validate_spec(
    spec: SweepSpec, facts: DataFacts, max_trials: int, max_epochs: int, max_parameters: int
) -> int:
    """Check what depends on the dataset and the limits; return the trial count."""
    resolve_metric(spec, facts)
    errors = metric_errors(spec, facts)
    grids = spec.grids
    for gi, grid in enumerate(grids):
        one = spec.model_copy(update={"parameters": checkable(grid)})
        for e in _grid_errors(one, facts, max_epochs, max_parameters):
            # A sub-grid's errors carry its index: parameters[1].loss[0].
            loc = e["loc"] if len(grids) == 1 else ("parameters", gi, *e["loc"][1:])
            errors.append({**e, "loc": loc})
    errors.extend(check_search(spec, space_size(grids[0]) if len(grids) == 1 else None, max_trials))
    # Sub-grids are counted after resolving their losses, which the errors above may forbid.
    n = count_trials(spec, None if errors else facts)
    if spec.method == "grid" and n > max_trials:
        errors.append(
            {
                "loc": ("parameters",),
                "msg": f"the grid makes {n} trials ({n // len(spec.seeds)} configs x "
                f"{len(spec.seeds)} seeds), over the limit of {max_trials}",
            }
        )
    if errors:
        raise SpecError(errors)
    return n


def resolve_params(params: dict[str, Any], facts: DataFacts) -> dict[str, Any]:
    """A config as it is trained and stored: ``loss`` resolved for the task."""
    return {**params, "loss": resolve_loss(params["loss"], facts.task, facts.n_classes)}


def trial_keys(spec: SweepSpec, params: dict[str, Any]) -> tuple[str, str]:
    """(config_key, pack_key) of a resolved config: the canonical config hash, and what a pack shares."""
    config_key = _digest(params)
    # Trials that may be trained side by side: same data, batches, epochs, optimizer, loss.
    pack_key = _digest(
        [
            spec.dataset,
            spec.split.model_dump(),
            params["batch_size"],
            params["epochs"],
            params["optimizer"],
            params["loss"],
        ]
    )
    return config_key, pack_key


def config_rows(spec: SweepSpec, params: dict[str, Any], index: int) -> list[TrialRow]:
    """The trial rows (one per seed) of one resolved config."""
    config_key, pack_key = trial_keys(spec, params)
    return [TrialRow(index, config_key, pack_key, seed, params) for seed in spec.seeds]


def _configs(spec: SweepSpec, facts: DataFacts | None) -> Iterator[dict[str, Any]]:
    """Every config of the grid (or the union of the sub-grids, each config once), in order."""
    seen: set[str] = set()
    for grid in spec.grids:
        axes = [getattr(grid, a) for a in AXES]
        for combo in itertools.product(*axes):
            params = dict(zip(AXES, combo, strict=True))
            if not _depth_ok(params["layers"], params["hidden_units"]):
                continue
            if facts is not None:
                params = resolve_params(params, facts)
            key = _digest(params)
            if len(spec.grids) > 1:  # the same config from two sub-grids is trained once
                if key in seen:
                    continue
                seen.add(key)
            yield params


def expand(spec: SweepSpec, facts: DataFacts) -> Iterator[TrialRow]:
    """Every (config, seed) of the grid in a fixed order; ``loss`` resolved for the task.

    Methods random / tpe / qmc expand to nothing here: their configs are suggested as the
    sweep runs (``app/services/search.py``).
    """
    if spec.method != "grid":
        return
    for index, params in enumerate(_configs(spec, facts)):
        yield from config_rows(spec, params, index)
