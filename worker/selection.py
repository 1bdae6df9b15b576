"""Which epoch of a trial counts, and when a trial stops early: the same rule on every path.

Pure: gridsweep only (no torch). Both training paths (``worker.train.train_trial`` and the
fused engine) feed each epoch's metrics to a trial's ``Tracker``, which says whether that epoch
is the selected one so far (the caller then snapshots the weights) and whether the trial stops.

Rules (issue 13):

* ``select_epoch="best"``: the selected epoch is the one with the best value of ``metric`` in
  the direction of ``goal``; on a tie the earliest wins (a later epoch must be strictly better).
  ``"last"``: the last epoch trained. A non-finite value never wins; when no epoch has a finite
  value the last one is selected.
* Early stopping ``{patience: N, min_delta: d}``: an epoch improves when it beats the best value
  so far by at least ``d`` (and by more than 0) in the metric's direction; after N epochs in a
  row without an improvement the trial stops (it ends ``succeeded``, ``stopped_epoch`` = that
  epoch). The best value so far is the selection's best (every strict improvement counts),
  so the selected epoch is always the true best epoch of what was trained.
* A refit (train + validation, no validation split of its own) selects its last epoch and never
  stops early: it trains exactly its ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gridsweep.claims import Claim
from gridsweep.vocab import GOALS, METRICS_BY_TASK, SELECT_EPOCHS


@dataclass(frozen=True)
class Selection:
    """How a trial picks its epoch and whether it stops early (``patience`` None: never)."""

    metric: str = "val_loss"
    goal: str = "minimize"
    select_epoch: str = "last"
    patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.goal not in GOALS:
            raise ValueError(f"goal {self.goal!r} is not one of {', '.join(GOALS)}")
        if self.select_epoch not in SELECT_EPOCHS:
            raise ValueError(f"select_epoch {self.select_epoch!r} is not one of {', '.join(SELECT_EPOCHS)}")
        if self.patience is not None and (isinstance(self.patience, bool) or int(self.patience) < 1):
            raise ValueError(f"early_stopping.patience must be an integer >= 1, got {self.patience!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {self.min_delta!r}")

    @classmethod
    def from_claim(cls, claim: Claim, task: str) -> Selection:
        """The claim's rule, checked against the task (a refit: its last epoch, no early stop)."""
        allowed = ("train_loss", *METRICS_BY_TASK[task])
        if claim.metric not in allowed:
            raise ValueError(
                f"metric {claim.metric!r} does not exist for a {task} task (use one of {', '.join(allowed)})"
            )
        if claim.refit:
            return cls(metric=claim.metric, goal=claim.goal, select_epoch="last")
        es: dict[str, Any] = claim.early_stopping or {}
        patience = es.get("patience")
        return cls(
            metric=claim.metric,
            goal=claim.goal,
            select_epoch=claim.select_epoch,
            patience=None if patience is None else int(patience),
            min_delta=float(es.get("min_delta") or 0.0),
        )

    def for_refit(self) -> Selection:
        """The rule of a model trained on train + validation: the last epoch, never stopped early."""
        return Selection(metric=self.metric, goal=self.goal, select_epoch="last")


LAST = Selection()  # the engine's default: the last epoch, no early stopping


class Tracker:
    """One trial's selected epoch and early-stopping count, fed epoch by epoch."""

    def __init__(self, sel: Selection) -> None:
        self.sel = sel
        self.best: float | None = None  # the best finite value so far
        self.best_epoch: int | None = None  # its epoch (1-based)
        self.last_epoch = 0
        self.waited = 0  # epochs in a row without an improvement of at least min_delta

    def _gain(self, value: float) -> float:
        """How much ``value`` beats the best so far in the goal's direction (inf: nothing yet)."""
        if self.best is None:
            return math.inf
        return self.best - value if self.sel.goal == "minimize" else value - self.best

    def update(self, epoch: int, value: float | None) -> tuple[bool, bool]:
        """Feed ``epoch``'s value of the metric; return (snapshot: ``best`` selects this epoch so
        far, keep its weights; stop: early stopping ends the trial after this epoch)."""
        self.last_epoch = epoch
        gain = self._gain(value) if value is not None and math.isfinite(value) else -math.inf
        if gain > 0 and value is not None:
            self.best, self.best_epoch = float(value), epoch
        if gain > 0 and gain >= self.sel.min_delta:
            self.waited = 0
        else:
            self.waited += 1
        snapshot = self.sel.select_epoch == "best" and gain > 0
        stop = self.sel.patience is not None and self.waited >= self.sel.patience
        return snapshot, stop

    @property
    def selected_epoch(self) -> int:
        """The epoch whose metrics and weights the trial keeps (0 before any epoch)."""
        if self.sel.select_epoch == "best" and self.best_epoch is not None:
            return self.best_epoch
        return self.last_epoch
