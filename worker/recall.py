"""Trained trials a worker remembers, so that a final trial is not trained a second time.

A final trial (the best config, scored once on the held-out test split) repeats a search
trial's training: the same config, seed, data, split and epoch selection give the same weights
and the same per-epoch metrics bit for bit in any pack (worker/fused.py, Reproducibility). When
this worker trained that search trial it still holds the result (the selected epoch's model and
every epoch's metrics), and the final trial is that result's epochs replayed plus one evaluation
on the test split: the numbers a retrain gives, without the retrain. Refits (trained on train +
validation) and reruns (a reproducibility check must train) are always trained.

What is held is bounded: per board (the data, split, metric and seed) the best few results by
the sweep's metric (the final is the best config, so it is among them unless another worker
trained it: then it is trained again, as before), and a byte budget over all boards, oldest
result first.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from gridsweep.claims import Claim
from gridsweep.vocab import TrialConfig
from worker.fused import scored_on_test
from worker.metrics import TrialResult
from worker.selection import Selection
from worker.tensors import TensorSplit

KEEP_PER_BOARD = 8  # results kept per board, best first
RECALL_BYTES = 256 << 20  # the models' weights held in all


@dataclass(frozen=True)
class TrainedKey:
    """What a trial's trained result is a function of (the worker's versions and device fixed)."""

    cfg: TrialConfig
    selection: Selection
    source: str  # the claim's data source (dataset, split, uploaded id and fingerprint), as JSON
    dtype: str

    @classmethod
    def of(cls, claim: Claim, cfg: TrialConfig, selection: Selection, data: TensorSplit) -> TrainedKey:
        return cls(cfg, selection, json.dumps(claim.source, sort_keys=True), str(data.dtype))

    @property
    def board(self) -> tuple[str, str, str, int]:
        return (self.source, self.selection.metric, self.selection.goal, self.cfg.seed)


def reusable(claim: Claim) -> bool:
    """A final trial scored on the test split and trained on the training rows only."""
    return claim.role == "final" and claim.evaluate_test and not claim.refit


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class Recall:
    """The results held (thread-safe: a pack's parts finish trials from their own threads)."""

    def __init__(self, budget_bytes: int = RECALL_BYTES, per_board: int = KEEP_PER_BOARD) -> None:
        self.budget_bytes = budget_bytes
        self.per_board = per_board
        self._held: OrderedDict[TrainedKey, tuple[float, int, TrialResult]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def remember(self, key: TrainedKey, result: TrialResult) -> None:
        """Hold a search trial's result if it may be the final's: succeeded, with a model and a
        finite score, and among the board's best."""
        if self.budget_bytes <= 0 or result.status != "succeeded" or result.model is None:
            return
        value = result.metrics.get(key.selection.metric)
        if value is None or not math.isfinite(value):
            return
        score = value if key.selection.goal == "minimize" else -value  # lower is better
        size = model_bytes(result.model)
        if size > self.budget_bytes:
            return
        with self._lock:
            if key in self._held:
                return
            board = [(s, k) for k, (s, _, _) in self._held.items() if k.board == key.board]
            if len(board) >= self.per_board:
                worst, worst_key = max(board, key=lambda e: e[0])
                if score >= worst:
                    return
                self._drop(worst_key)
            self._held[key] = (score, size, result)
            self._bytes += size
            while self._bytes > self.budget_bytes:
                self._drop(next(iter(self._held)))

    def _drop(self, key: TrainedKey) -> None:
        _, size, _ = self._held.pop(key)
        self._bytes -= size

    def get(self, key: TrainedKey) -> TrialResult | None:
        with self._lock:
            entry = self._held.get(key)
        return None if entry is None else entry[2]


def as_final(held: TrialResult, cfg: TrialConfig, data: TensorSplit) -> TrialResult:
    """The final trial's result from its search trial's: the same epochs, selected epoch, metrics
    and model, and the model's test metrics; its duration is the time this took, not the training's."""
    assert held.model is not None
    started = time.perf_counter()
    test = scored_on_test(cfg, held.model, data)
    return replace(
        held,
        epochs=list(held.epochs),
        metrics=dict(held.metrics),
        test_metrics=test,
        duration_seconds=time.perf_counter() - started,
    )
