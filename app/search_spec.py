"""The spec beyond the plain grid: sub-grids, distributions, search methods and pruners.

``app/spec.py`` calls into this module (never the other way round):

* a ``parameters`` axis may be a distribution ``{min, max, distribution}`` (methods random,
  tpe, qmc) instead of a list of values (``axis_or_range``);
* ``parameters`` may be a list of grids, expanded as their union (``one_or_more_grids``);
* ``method`` / ``max_trials`` / ``sampler_seed`` pick how configs are chosen, ``pruner`` how
  trials are stopped early (``PrunerSpec``), and ``check_search`` holds the checks that need
  the whole spec (each error with its field path).

It also reads *stored* specs (plain JSON) for the read side: ``stored_grids``, ``varying_axes``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)

METHODS = ("grid", "random", "tpe", "qmc")
SEARCH_METHODS = ("random", "tpe", "qmc")
Method = Literal["grid", "random", "tpe", "qmc"]
DistributionKind = Literal["uniform", "log_uniform", "int_uniform"]


class Distribution(BaseModel):
    """A range an axis is sampled from: ``uniform`` / ``log_uniform`` floats, ``int_uniform``
    integers (an integer axis may be ``log_uniform`` too: log-spaced integers)."""

    model_config = ConfigDict(extra="forbid")

    # Declared first: the checks of min and max read it.
    distribution: DistributionKind
    min: float
    max: float

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "distribution" not in data:
            return {"distribution": cls.model_fields["distribution"].default, **data}
        return data

    @field_validator("min")
    @classmethod
    def _log_needs_positive(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("distribution") == "log_uniform" and v <= 0:
            raise ValueError(f"log_uniform needs min > 0, got {v}")
        return v

    @field_validator("max")
    @classmethod
    def _above_min(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("min")
        if lo is not None and v <= lo:
            raise ValueError(f"max must be above min, got min {lo} and max {v}")
        return v

    @property
    def log(self) -> bool:
        return self.distribution == "log_uniform"


def _range(axis: str, number: type, kinds: tuple[str, ...], **bounds: Any) -> type[Distribution]:
    """The distribution model of one axis: its kinds (the first is the default) and its bounds."""
    value = Annotated[number, Field(allow_inf_nan=False, **bounds)]
    return create_model(
        f"{axis.title().replace('_', '')}Range",
        __base__=Distribution,
        distribution=(Literal[kinds], kinds[0]),  # type: ignore[valid-type]
        min=(value, ...),
        max=(value, ...),
    )


# The axes that may be sampled from a range, with the bounds of their values. Batch size,
# epochs, optimizer and loss are shared by a fused pack: a range would give every config a
# pack of its own, so they take lists (sampled as categories).
RANGES: dict[str, type[Distribution]] = {
    "layers": _range("layers", int, ("int_uniform", "log_uniform"), ge=1, le=64),
    "hidden_units": _range("hidden_units", int, ("int_uniform", "log_uniform"), ge=1, le=65_536),
    "learning_rate": _range("learning_rate", float, ("uniform", "log_uniform"), gt=0),
    "dropout": _range("dropout", float, ("uniform", "log_uniform"), ge=0, lt=1),
    "weight_decay": _range("weight_decay", float, ("uniform", "log_uniform"), ge=0),
}


def is_distribution(value: Any) -> bool:
    return isinstance(value, Distribution) or (
        isinstance(value, dict) and bool({"distribution", "min", "max"} & set(value))
    )


def axis_or_range(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """Wraps an axis' validation: a distribution becomes a ``Distribution``, anything else a list."""
    if not is_distribution(value):
        return handler(value)
    if isinstance(value, Distribution):
        return value
    model = RANGES.get(info.field_name or "")
    if model is None:
        raise ValueError(
            f"{info.field_name} takes a value or a list of values, not a distribution "
            f"(distributions are for {', '.join(RANGES)})"
        )
    return model.model_validate(value)


def dump_axis(value: Any) -> Any:
    return value.model_dump() if isinstance(value, Distribution) else value


def one_or_more_grids(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """``parameters``: one grid (a mapping), or a list of grids (sub-grids) validated one by one."""
    if not isinstance(value, list):
        return handler(value)
    if not value:
        raise ValueError("a list of sub-grids needs at least one grid")
    grids = [handler(g, i) for i, g in enumerate(value)]
    return grids[0] if len(grids) == 1 else grids


def dump_grids(value: Any, handler: Any, info: SerializationInfo) -> Any:
    return [handler(g) for g in value] if isinstance(value, list) else handler(value)


class PrunerSpec(BaseModel):
    """Stop unpromising trials at epoch rungs, on the sweep's metric.

    ``median`` (Optuna's MedianPruner): at an epoch, prune a trial whose best value so far is
    worse than the median, at that epoch, of the trials that finished; checked every
    ``interval_steps`` epochs from ``n_warmup_steps``, once ``n_startup_trials`` trials finished.
    ``asha`` (Optuna's SuccessiveHalvingPruner): rungs at ``min_resource * reduction_factor **
    (min_early_stopping_rate + k)`` epochs; a trial goes on past a rung only if it is in the best
    ``1 / reduction_factor`` of the trials that reached that rung.
    ``audit``: the share of would-be-pruned trials (a seeded random choice, by config) that
    train on to the end anyway, to measure what pruning costs.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["median", "asha"]
    audit: float = Field(0.0, ge=0, le=1)
    # median
    n_startup_trials: int | None = Field(None, ge=0)
    n_warmup_steps: int | None = Field(None, ge=0)
    interval_steps: int | None = Field(None, ge=1)
    n_min_trials: int | None = Field(None, ge=1)
    # asha
    min_resource: int | None = Field(None, ge=1)
    reduction_factor: int | None = Field(None, ge=2)
    min_early_stopping_rate: int | None = Field(None, ge=0)
    bootstrap_count: int | None = Field(None, ge=0)

    @field_validator("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials")
    @classmethod
    def _median_only(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("type") != "median":
            raise ValueError(f"{info.field_name} is a setting of the median pruner")
        return v

    @field_validator("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count")
    @classmethod
    def _asha_only(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("type") != "asha":
            raise ValueError(f"{info.field_name} is a setting of the asha pruner")
        return v

    def setting(self, name: str) -> int:
        """A setting, or Optuna's default for it."""
        v = getattr(self, name)
        return PRUNER_DEFAULTS[name] if v is None else v

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which a trial of ``epochs`` epochs is judged (never its last one: then
        there is nothing left to save)."""
        if self.type == "median":
            warmup, every = self.setting("n_warmup_steps"), self.setting("interval_steps")
            return [e for e in range(max(1, warmup), epochs) if (e - warmup) % every == 0]
        out, k = [], 0
        eta, base = self.setting("reduction_factor"), self.setting("min_resource")
        while (e := base * eta ** (self.setting("min_early_stopping_rate") + k)) < epochs:
            out.append(e)
            k += 1
        return out


PRUNER_DEFAULTS = {
    "n_startup_trials": 5,
    "n_warmup_steps": 0,
    "interval_steps": 1,
    "n_min_trials": 1,
    "min_resource": 1,
    "reduction_factor": 3,
    "min_early_stopping_rate": 0,
    "bootstrap_count": 0,
}


def audited(sampler_seed: int, config_key: str, rate: float) -> bool:
    """Whether a would-be-pruned config keeps training (seeded: the same spec audits the same configs)."""
    if rate <= 0:
        return False
    h = hashlib.sha256(f"audit:{sampler_seed}:{config_key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < rate


def checkable(grid: Any) -> Any:
    """A copy of a grid with each distribution as the list of its two ends, for the checks that
    read values (the widest and deepest model, the losses, the epochs)."""
    ends: dict[str, list[Any]] = {}
    for axis, v in grid:
        if isinstance(v, Distribution):
            ends[axis] = [int(v.min), int(v.max)] if axis == "hidden_units" else [v.min, v.max]
            if axis == "layers":  # every depth: a per-layer width list must match one of them
                ends[axis] = list(range(int(v.min), int(v.max) + 1))
    return grid.model_copy(update=ends) if ends else grid


def space_size(grid: Any) -> int | None:
    """Configs of a space whose ranges are all integer ranges (None: a float range)."""
    sizes: dict[str, int] = {}
    for axis, v in grid:
        if isinstance(v, Distribution):
            if axis not in ("layers", "hidden_units"):
                return None
            sizes[axis] = int(v.max) - int(v.min) + 1
        else:
            sizes[axis] = len(v)
    layers, widths = grid.layers, grid.hidden_units
    if isinstance(widths, Distribution):  # a range of widths: every depth takes every width
        arch = sizes["layers"] * sizes["hidden_units"]
    else:
        depths = range(int(layers.min), int(layers.max) + 1) if isinstance(layers, Distribution) else layers
        # A per-layer width list fixes its depth.
        arch = sum(1 for d in depths for w in widths if not isinstance(w, list) or len(w) == d)
    rest = 1
    for axis, n in sizes.items():
        if axis not in ("layers", "hidden_units"):
            rest *= n
    return arch * rest


def check_search(spec: Any, n_grid_configs: int | None, max_trials: int) -> list[dict[str, Any]]:
    """What ``method``, ``max_trials`` and distributions need of each other (errors with paths).

    ``n_grid_configs``: the configs of the space when it is countable: lists and integer
    ranges (None: a float range).

    A pruner goes with either ``select_epoch``: it judges the metric's intermediate values at
    its rung epochs (each trial's best so far, as it trains), while ``select_epoch`` decides
    only the score of a trial that runs to its end; and with ``early_stopping``: a trial that
    stops early simply ends before its next rung.
    """
    errors: list[dict[str, Any]] = []
    grids = spec.grids
    many = len(grids) > 1

    def at(i: int, *rest: Any) -> tuple[Any, ...]:
        return ("parameters", i, *rest) if many else ("parameters", *rest)

    ranges = [(i, axis) for i, g in enumerate(grids) for axis, v in g if isinstance(v, Distribution)]
    if spec.method == "grid":
        for i, axis in ranges:
            errors.append(
                {
                    "loc": at(i, axis),
                    "msg": "a distribution is sampled: it needs method random, tpe or qmc "
                    "(method grid runs every value of a list)",
                }
            )
        if spec.max_trials is not None:
            errors.append(
                {
                    "loc": ("max_trials",),
                    "msg": "max_trials is for methods random, tpe and qmc; method grid runs every config",
                }
            )
        return errors
    if many:
        errors.append(
            {
                "loc": ("parameters",),
                "msg": f"sub-grids (a list of grids) are for method grid; "
                f"method {spec.method} samples one space",
            }
        )
    n_seeds = len(spec.seeds)
    if spec.max_trials is None:
        errors.append(
            {"loc": ("max_trials",), "msg": f"method {spec.method} needs max_trials: how many configs to try"}
        )
    elif spec.max_trials * n_seeds > max_trials:
        errors.append(
            {
                "loc": ("max_trials",),
                "msg": f"max_trials {spec.max_trials} x {n_seeds} seeds makes {spec.max_trials * n_seeds} "
                f"trials, over the limit of {max_trials}",
            }
        )
    elif n_grid_configs is not None and spec.max_trials > n_grid_configs:
        errors.append(
            {
                "loc": ("max_trials",),
                "msg": f"max_trials {spec.max_trials} is more than the {n_grid_configs} configs of the "
                "space: use method grid, or a wider range",
            }
        )
    if n_grid_configs == 1:
        errors.append({"loc": ("parameters",), "msg": "nothing to search: every parameter is fixed"})
    return errors


# --- stored specs (plain JSON) ----------------------------------------------------------


def stored_grids(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The grids of a stored spec: one, or its sub-grids."""
    params = spec.get("parameters") or {}
    return [g for g in params if isinstance(g, dict)] if isinstance(params, list) else [params]


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def varying_axes(spec: dict[str, Any], axes: tuple[str, ...]) -> list[str]:
    """The axes a stored spec varies: a list of more than one value or a distribution in a grid,
    or values that differ between sub-grids; in ``axes`` order."""
    grids = stored_grids(spec)
    out = []
    for axis in axes:
        seen: set[str] = set()
        for g in grids:
            v = g.get(axis)
            if isinstance(v, dict) or (isinstance(v, list) and len(v) > 1):
                seen.update(("range", "more"))
            elif isinstance(v, list):
                seen.update(_key(x) for x in v)
        if len(seen) > 1:
            out.append(axis)
    return out


def axis_values(spec: dict[str, Any], axis: str) -> list[Any]:
    """An axis' values over every grid of a stored spec (first seen first); a distribution as
    its text, e.g. ``log_uniform 0.0001..0.1``."""
    out: dict[str, Any] = {}
    for g in stored_grids(spec):
        v = g.get(axis)
        if isinstance(v, dict):
            text = f"{v.get('distribution')} {v.get('min'):g}..{v.get('max'):g}"
            out.setdefault(text, text)
        elif isinstance(v, list):
            for x in v:
                out.setdefault(_key(x), x)
    return list(out.values())
