"""A split's metrics from float64 sums: the one rule both training paths use (issue 13).

Also what a trial records: ``EpochMetrics`` (one epoch) and ``TrialResult`` (its outcome).

Pure: torch only. The reference path (``worker.train.evaluate``) sums over the whole split, the
fused engine (``worker.fused_model.evaluate_block``) per trial over chunks; both hand the sums
to ``split_metrics``, so the formulas (and the units) are the same everywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


def target_sst(y: torch.Tensor) -> float:
    """``sum (y - mean y)^2`` of regression targets, in float64 (the denominator of r2)."""
    y64 = y.reshape(-1).double()
    return float(((y64 - y64.mean()) ** 2).sum())


def split_metrics(
    task: str,
    loss: str,
    n: int,
    loss_sum: float,
    *,
    correct: float | None = None,
    sse: float | None = None,
    sae: float | None = None,
    sst: float | None = None,
    y_std: float | None = None,
) -> dict[str, float]:
    """A split's metrics from float64 sums over its ``n`` rows (the same rule on every path).

    Classification: loss, accuracy (``correct / n``), error, log_loss. Regression: loss, rmse and
    mae in the target's own units (``y_std``; None: standardized units), r2 (``sst``: the
    targets' ``target_sst``)."""
    res = {"loss": loss_sum / n}
    if task == "classification":
        assert correct is not None
        acc = correct / n
        res["accuracy"] = acc
        res["error"] = 1.0 - acc
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"no log loss for the classification loss {loss!r}")
        res["log_loss"] = res["loss"]  # both are the cross-entropy of the class probabilities
        return res
    assert sse is not None and sae is not None and sst is not None
    scale = 1.0 if y_std is None else float(y_std)
    res["rmse"] = math.sqrt(sse / n) * scale
    res["mae"] = sae / n * scale
    res["r2"] = 1.0 - sse / sst if sst > 0 else math.nan
    return res


def error_sums(out: torch.Tensor, y: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (sum d^2, sum |d|) of ``d = out - y`` (training dtype) over ``dim``: d is taken to
    float64 before squaring, so each term is exact in float32 training and only the sum rounds."""
    d = (out - y).double()
    return (d * d).sum(dim=dim), d.abs().sum(dim=dim)


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_error: float | None = None  # classification only
    val_accuracy: float | None = None  # classification only
    val_rmse: float | None = None  # regression only, target units
    val_mae: float | None = None  # regression only, target units
    val_r2: float | None = None  # regression only
    val_log_loss: float | None = None  # classification only, nats

    @classmethod
    def of(cls, epoch: int, train_loss: float, val: dict[str, float]) -> EpochMetrics:
        """From ``train_loss`` and the validation split's ``split_metrics``."""
        return cls(epoch, train_loss, **{f"val_{k}": v for k, v in val.items()})

    def value(self, metric: str) -> float | None:
        """The epoch's value of a metric name (``val_rmse``, ``train_loss``, ...); None if absent."""
        if metric == "epoch" or metric not in self.__dataclass_fields__:
            return None
        return getattr(self, metric)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    # "succeeded" | "diverged" | "canceled" | "stopped"; fused packs also "failed", "dropped" and
    # "out_of_memory" (a trial that does not fit this device even alone: to be retried elsewhere)
    status: str
    epochs: list[EpochMetrics] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    model: nn.Module | None = None
    best_epoch: int | None = None  # the selected epoch (its metrics are ``metrics``)
    stopped_epoch: int | None = None  # early stopping ended the trial after this epoch


def _final_metrics(m: EpochMetrics) -> dict[str, float]:
    """An epoch's metrics as an outcome's ``metrics`` (those the task has)."""
    return {k: v for k, v in m.to_dict().items() if k != "epoch" and v is not None}


def selected_metrics(epochs: list[EpochMetrics], epoch: int) -> dict[str, float]:
    """The outcome's ``metrics``: those of ``epoch`` (1-based), or {} before any epoch."""
    return _final_metrics(epochs[epoch - 1]) if epochs and epoch >= 1 else {}
