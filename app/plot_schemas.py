"""Edge schemas of the plot endpoints (columnar where a sweep can have 10,000 trials)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class CurveRead(BaseModel):
    trial_id: int
    rank: int | None = Field(
        description="rank of the trial's config in the leaderboard (1 = best); None: a running trial"
    )
    status: str = Field("succeeded", description="the trial's status (running trials' curves grow)")
    epochs_planned: int | None = Field(None, description="the trial's epochs when done")
    config_index: int
    seed: int
    params: dict[str, Any]
    value: float | None = Field(description="the trial's value of the sweep's metric")
    epochs: list[int]
    val_loss: list[float | None]
    train_loss: list[float | None]
    values: list[float | None] = Field([], description="the sweep's metric per epoch (what the plot draws)")
    best_epoch: int | None = Field(None, description="the epoch the trial is scored at")
    stopped_epoch: int | None = Field(None, description="early stopping ended the trial after this epoch")


class CurvesRead(BaseModel):
    """The top configs' trials (ranked) first, then running trials (``rank`` None)."""

    metric: str
    goal: str
    units: str | None = Field(None, description="the metric's units (RMSE, target units; fraction; ...)")
    best_trial_ids: list[int] = Field(description="the seeds of the best config")
    trials: list[CurveRead]


class HistoryRead(BaseModel):
    """Finished search trials in completion order; ``value`` is None unless the trial succeeded."""

    metric: str
    goal: str
    trial_ids: list[int]
    status: list[str]
    value: list[float | None]
    best_so_far: list[float | None]


class HeatmapCell(BaseModel):
    x: int = Field(description="index into x_values")
    y: int = Field(description="index into y_values")
    value: float | None = Field(description="best config mean over the other parameters")
    n_configs: int
    n_ranked: int
    n_diverged: int


class HeatmapRead(BaseModel):
    metric: str
    goal: str
    x: str
    y: str
    x_values: list[Any]
    y_values: list[Any]
    cells: list[HeatmapCell]


class ConfigsRead(BaseModel):
    """The best configs (mean over seeds), one row per config: ``params[i]`` follows ``axes``."""

    metric: str
    goal: str
    axes: list[str]
    axis_values: list[list[Any]]
    config_index: list[int]
    params: list[list[Any]]
    value: list[float]
    n_configs: int
    n_scored: int
    n_diverged: int
