"""A claimed trial as the worker receives it: the typed mirror of the API's ``ClaimedTrial``.

The API answers ``POST /api/v1/workers/{id}/claim`` with JSON objects of this shape
(``app.schemas.ClaimedTrial``); the worker reads them as ``Claim`` rather than by string keys.
``tests/test_layers.py`` checks that the two stay field for field alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Claim:
    """One trial in hand: what to train, on which data, and the lease that fences every write."""

    trial_id: int
    sweep_id: int
    lease_token: str
    role: str  # "search" | "final" | "refit" | "rerun"
    seed: int
    attempt: int
    params: dict[str, Any]
    dataset: str  # a built-in's name, or an uploaded dataset's name
    split: dict[str, Any]  # {"validation": f, "test": f, "seed": n}
    evaluate_test: bool
    refit: bool  # train on train + validation
    dataset_id: int | None = None  # an uploaded dataset: GET /api/v1/datasets/{id}/data
    data_hash: str | None = None  # the uploaded dataset's fingerprint, to check the cache against
    upload_model: str | None = None  # "best" | "refit": upload the trained model before completing
    rungs: tuple[int, ...] | list[int] = ()  # epochs the sweep's pruner judges: wait for its answer
    metric: str = "val_loss"  # the sweep's metric (gridsweep.vocab.METRICS_BY_TASK): picks the epoch
    goal: str = "minimize"  # "minimize" | "maximize"
    select_epoch: str = "best"  # "best" | "last": the epoch whose metrics and weights are kept
    early_stopping: dict[str, Any] | None = None  # {"patience": n >= 1, "min_delta": d >= 0}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Claim:
        """From the API's JSON; unknown keys (a newer API) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    @property
    def ref(self) -> dict[str, Any]:
        """The lease reference every fenced request carries."""
        return {"trial_id": self.trial_id, "lease_token": self.lease_token}

    @property
    def source(self) -> tuple[str, dict[str, Any], int | None, str | None]:
        """What identifies the trial's data: (dataset, split, dataset_id, data_hash)."""
        return (self.dataset, self.split, self.dataset_id, self.data_hash)
