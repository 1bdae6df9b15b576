"""The metric a sweep ranks by and the epoch rules: ``metric``, ``select_epoch``, ``early_stopping``.

The metric defaults by task once the dataset is known (``resolve_metric``): regression
``val_rmse``; classification ``val_error``, its ties broken by ``val_log_loss``. ``metric_errors``
refuses a metric the task does not record and ``val_loss`` over a grid of losses (each trial's
own loss is on its own scale). The names, goals and units are ``gridsweep.vocab``'s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.edge_types import NotBool
from app.search_spec import checkable
from gridsweep.vocab import DEFAULT_METRIC, METRIC_GOALS, METRICS, METRICS_BY_TASK, resolve_loss

MAX_EPOCHS = 1_000_000  # as app.spec's bound on epochs
Real = Annotated[float, Field(allow_inf_nan=False), NotBool]
NonNegative = Annotated[float, Field(allow_inf_nan=False, ge=0), NotBool]


class MetricSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the task's default, filled in when the spec is checked against its dataset
    # (regression val_rmse; classification val_error, ties broken by val_log_loss).
    name: Literal[METRICS] | None = Field(
        None, description="null: the task's default, val_rmse (regression) or val_error (classification)"
    )
    goal: Literal["minimize", "maximize"] | None = None
    # Optional gate for CI: the best metric must be on the goal's side of it.
    threshold: Real | None = None

    @model_validator(mode="after")
    def _default_goal(self) -> MetricSpec:
        if self.goal is None and self.name is not None:
            self.goal = METRIC_GOALS[self.name]
        return self


class EarlyStopping(BaseModel):
    """Stop a trial after ``patience`` epochs without an improvement of ``min_delta`` in the metric."""

    model_config = ConfigDict(extra="forbid")

    patience: Annotated[int, NotBool] = Field(ge=1, le=MAX_EPOCHS)
    min_delta: NonNegative = 0.0


def resolve_metric(spec: Any, facts: Any) -> Any:
    """Fill in the task's default metric (and its goal) where the spec names none; in place."""
    if spec.metric.name is None:
        spec.metric.name = DEFAULT_METRIC.get(facts.task, "val_loss")
    if spec.metric.goal is None:
        spec.metric.goal = METRIC_GOALS[spec.metric.name]
    return spec


def _losses(spec: Any, facts: Any) -> set[str]:
    """The concrete losses the spec's grids train with (a loss that does not fit is left out)."""
    out: set[str] = set()
    for grid in spec.grids:
        for loss in checkable(grid).loss:
            try:
                out.add(resolve_loss(loss, facts.task, facts.n_classes))
            except ValueError:
                continue
    return out


def metric_errors(spec: Any, facts: Any) -> list[dict[str, Any]]:
    """The metric must exist for the task, and rank every config on one scale."""
    name = spec.metric.name
    errors: list[dict[str, Any]] = []
    known = METRICS_BY_TASK.get(facts.task, METRICS)
    if name not in known:
        other = next((t for t, names in METRICS_BY_TASK.items() if name in names), "other")
        errors.append(
            {
                "loc": ("metric", "name"),
                "msg": f"{name} needs a {other} dataset; {spec.dataset!r} is a {facts.task} dataset "
                f"(use one of {', '.join(known)})",
            }
        )
        if spec.early_stopping is not None:
            errors.append(
                {
                    "loc": ("early_stopping",),
                    "msg": f"early stopping watches the sweep's metric, and {name} does not exist "
                    f"for a {facts.task} dataset (metric: one of {', '.join(known)})",
                }
            )
    losses = _losses(spec, facts)
    if name == "val_loss" and len(losses) > 1:
        default = DEFAULT_METRIC.get(facts.task, "val_loss")
        errors.append(
            {
                "loc": ("metric", "name"),
                "msg": "val_loss is each trial's own loss function on the validation split, and loss "
                f"is a grid axis here ({', '.join(sorted(losses))}): the configs would be ranked on "
                "different scales. "
                f"Rank by a metric every loss shares, such as {default} (the default)",
            }
        )
    return errors
