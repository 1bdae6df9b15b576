"""Datasets on the worker's device, loaded once per (dataset, split) and cached."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gridsweep.datasets import Dataset, load_builtin, split_dataset
from gridsweep.payload import fingerprint
from worker.tensors import TensorSplit, to_tensors

# Fetches an uploaded dataset by (id, expected data hash): see worker.uploaded.
Fetch = Callable[[int, str | None], tuple[Dataset, dict[str, Any]]]


@dataclass
class SplitInfo:
    """What a saved model needs besides its weights, and what a trial records to be rerun."""

    data_hash: str
    feature_names: list[str]
    classes: list[Any]
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float | None
    y_std: float | None
    meta: dict[str, Any] = field(default_factory=dict)  # uploaded: target and encoding


class DataCache:
    """Keeps each split on the device for the worker's lifetime (small tabular data)."""

    def __init__(
        self, device: torch.device, dtype: torch.dtype = torch.float32, fetch: Fetch | None = None
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.fetch = fetch
        self._cache: dict[str, TensorSplit] = {}
        self._info: dict[str, SplitInfo] = {}

    @staticmethod
    def _key(dataset: str, split: dict[str, Any], dataset_id: int | None, data_hash: str | None) -> str:
        return json.dumps([dataset, split, dataset_id, data_hash], sort_keys=True)

    def get(
        self, dataset: str, split: dict[str, Any], dataset_id: int | None = None, data_hash: str | None = None
    ) -> TensorSplit:
        key = self._key(dataset, split, dataset_id, data_hash)
        if key not in self._cache:
            meta: dict[str, Any] = {}
            if dataset_id is not None:
                if self.fetch is None:
                    raise ValueError(f"dataset {dataset!r} is an upload and this worker cannot fetch it")
                ds, meta = self.fetch(dataset_id, data_hash)
            else:
                ds = load_builtin(dataset)
            s = split_dataset(ds, validation=split["validation"], test=split["test"], seed=split["seed"])
            self._cache[key] = to_tensors(s, self.device, self.dtype, split_seed=split["seed"])
            self._info[key] = SplitInfo(
                data_hash=data_hash or fingerprint(ds),
                feature_names=ds.feature_names,
                classes=ds.classes,
                x_mean=s.x_mean,
                x_std=s.x_std,
                y_mean=s.y_mean,
                y_std=s.y_std,
                meta={k: meta[k] for k in ("target", "encoding") if k in meta},
            )
        return self._cache[key]

    def info(
        self, dataset: str, split: dict[str, Any], dataset_id: int | None = None, data_hash: str | None = None
    ) -> SplitInfo:
        """The facts of a split ``get`` loaded (call ``get`` first)."""
        return self._info[self._key(dataset, split, dataset_id, data_hash)]
