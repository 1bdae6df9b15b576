"""The trials a worker holds and what both training paths share about them: the leases
(kept alive by the heartbeat), the API's verdicts (``lost``, ``cancel``, ``prune``), the exceptions
that end a trial early, the narrow handle the fused path gets, and the one place that
builds a trial's reproducibility record and its outcome.
"""

from __future__ import annotations

import math
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from gridsweep.claims import Claim
from gridsweep.client import ApiClient
from worker.data import DataCache
from worker.handback import versions
from worker.recall import Recall
from worker.train import TrialResult


class TrialLost(Exception):
    """The lease is gone (expired and reclaimed): drop the trial, write nothing."""


class Abandon(Exception):
    """The worker is stopping: give the trial back to the queue."""


@dataclass
class Held:
    """Trials in hand, shared with the heartbeat thread."""

    leases: dict[int, str] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    cancel: set[int] = field(default_factory=set)
    prune: set[int] = field(default_factory=set)  # the sweep's pruner stopped them: report them pruned
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, claims: list[Claim]) -> None:
        with self.lock:
            for c in claims:
                self.leases[c.trial_id] = c.lease_token

    def as_refs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"trial_id": t, "lease_token": tok} for t, tok in self.leases.items()]

    def apply(self, states: dict[int, str]) -> None:
        """The API's word on each lease (from a heartbeat or an epoch report)."""
        with self.lock:
            for tid, st in states.items():
                if st == "lost":
                    self.lost.add(tid)
                elif st == "cancel":
                    self.cancel.add(tid)
                elif st == "prune":
                    self.prune.add(tid)

    def forget(self, trial_id: int) -> None:
        """The trial left our hands (reported, released or lost): no more heartbeats for it."""
        with self.lock:
            self.leases.pop(trial_id, None)
            self.lost.discard(trial_id)
            self.cancel.discard(trial_id)
            self.prune.discard(trial_id)

    def verdict(self, trial_id: int) -> str | None:
        """``drop`` (the lease is lost), ``cancel`` (the sweep was canceled or the trial pruned:
        the engine ends it and keeps its epochs) or None."""
        with self.lock:
            if trial_id in self.lost:
                return "drop"
            return "cancel" if trial_id in self.cancel or trial_id in self.prune else None

    def stop(self, trial_id: int) -> bool:
        """The one-by-one path: stop the trial at this epoch (canceled or pruned)."""
        with self.lock:
            return trial_id in self.cancel or trial_id in self.prune

    def ended_as(self, trial_id: int, status: str) -> str:
        """The status to report for a trial that trained: a stopped trial the pruner stopped is pruned."""
        with self.lock:
            return "pruned" if status == "canceled" and trial_id in self.prune else status


@dataclass
class PackHandle:
    """What the fused path may use of its worker: the client, the leases, the stop flag, the data."""

    client: ApiClient
    worker_id: str
    held: Held
    stopping: threading.Event
    data: DataCache
    device: torch.device
    device_name: str
    pack_threads: int
    allow_tf32: bool = False
    recall: Recall | None = None  # search trials' results kept for their final trial


def finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    """JSON has no NaN: a non-finite metric is sent as missing."""
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}


def failure_message(exc: BaseException) -> str:
    """A failed trial's error: the exception and the last frames of its traceback."""
    tb = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tb}"[:20_000]


def repro_record(claim: Claim, device_name: str, data_hash: str | None) -> dict[str, Any]:
    """What a rerun needs to reproduce the trial: split, data fingerprint, versions, device."""
    record: dict[str, Any] = {"split": claim.split, "versions": versions(), "device": device_name}
    if data_hash is not None:
        record["data_hash"] = data_hash
    return record


def outcome(claim: Claim, repro: dict[str, Any], result: TrialResult) -> dict[str, Any]:
    """The ``complete`` entry of a trial that trained (succeeded, diverged, canceled)."""
    return {
        **claim.ref,
        **repro,
        "status": result.status,
        "metrics": finite({**result.metrics, **(result.test_metrics or {})}),
        "epochs_done": len(result.epochs),
        "best_epoch": result.best_epoch,  # the epoch whose metrics (and model) these are
        "stopped_epoch": result.stopped_epoch,  # early stopping ended it after this epoch
        "error": result.error,
        "duration_seconds": result.duration_seconds,
    }


def failed(claim: Claim, repro: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The ``complete`` entry of a trial that training could not run (an exception)."""
    return {**claim.ref, **repro, "status": "failed", "error": failure_message(exc)}
