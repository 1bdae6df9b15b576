"""Datasets on the worker's device, loaded once per (dataset, split) and cached."""

from __future__ import annotations

import json
from typing import Any

import torch

from worker.datasets import load_builtin, split_dataset
from worker.train import TensorSplit, to_tensors


class DataCache:
    """Keeps each split on the device for the worker's lifetime (small tabular data)."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.device = device
        self.dtype = dtype
        self._cache: dict[str, TensorSplit] = {}

    def get(self, dataset: str, split: dict[str, Any]) -> TensorSplit:
        key = json.dumps([dataset, split], sort_keys=True)
        if key not in self._cache:
            ds = load_builtin(dataset)
            s = split_dataset(ds, validation=split["validation"], test=split["test"], seed=split["seed"])
            self._cache[key] = to_tensors(s, self.device, self.dtype, split_seed=split["seed"])
        return self._cache[key]
