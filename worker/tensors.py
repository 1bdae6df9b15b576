"""The data a trial trains on, as tensors on its device: the device, the split, the batch order.

Pure: torch + gridsweep; no database or HTTP. The reference loop (``worker.train``) and the
fused engine (``worker.fused``) both take a ``TensorSplit`` and cut its epochs with
``epoch_permutation``, so every trial of a sweep sees the same batches in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gridsweep.datasets import SplitData
from gridsweep.vocab import device_name

BATCH_SEED_MULTIPLIER = 1_000_003


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = device_name(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
        if spec != "cuda" and int(spec.split(":", 1)[1]) >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ValueError(f"device {spec!r} does not exist ({n} CUDA device(s))")
    return torch.device(spec)


@dataclass
class TensorSplit:
    """A split as tensors on the training device.

    X_*: ``[n, d]`` in the training dtype. y_*: int64 ``[n]`` class indices for
    classification, ``[n, 1]`` standardized targets in the training dtype for regression.
    ``y_std``: regression's target scale (raw = standardized * y_std + y_mean), which turns
    rmse and mae into the target's own units (None: classification, or standardized units).
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    n_classes: int
    n_features: int
    split_seed: int
    y_std: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.X_train.dtype

    @property
    def device(self) -> torch.device:
        return self.X_train.device


def to_tensors(
    split: SplitData, device: torch.device | str, dtype: torch.dtype = torch.float32, split_seed: int = 0
) -> TensorSplit:
    """Move a ``SplitData`` onto ``device``. ``split_seed`` seeds the minibatch order."""
    device = torch.device(device)

    def xs(a: Any) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype).to(device).contiguous()

    def ys(a: Any) -> torch.Tensor:
        if split.task == "classification":
            return torch.as_tensor(a, dtype=torch.int64).reshape(-1).to(device)
        return torch.as_tensor(a, dtype=dtype).reshape(-1, 1).to(device)

    return TensorSplit(
        X_train=xs(split.X_train),
        y_train=ys(split.y_train),
        X_val=xs(split.X_val),
        y_val=ys(split.y_val),
        X_test=xs(split.X_test),
        y_test=ys(split.y_test),
        task=split.task,
        n_classes=split.n_classes,
        n_features=split.n_features,
        split_seed=int(split_seed),
        y_std=split.y_std,
    )


def epoch_permutation(n: int, split_seed: int, epoch: int) -> torch.Tensor:
    """Row order of (1-based) ``epoch``: a CPU int64 permutation of ``range(n)``."""
    g = torch.Generator().manual_seed(split_seed * BATCH_SEED_MULTIPLIER + epoch)
    return torch.randperm(n, generator=g)
