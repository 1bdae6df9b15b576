"""What a worker hands back besides metrics: its versions, and a final trial's model."""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np
import torch

from gridsweep import __version__
from gridsweep.claims import Claim
from gridsweep.client import ApiClient
from gridsweep.vocab import TrialConfig
from worker.data import SplitInfo
from worker.model_io import make_artifact, to_bytes, to_torchscript
from worker.tensors import TensorSplit
from worker.train import TrialResult, n_outputs_for


def versions() -> dict[str, Any]:
    """The software a trial ran on (CPU results are exact only under the same versions and CPU kind).

    ``cpu_capability``: the SIMD level torch's CPU kernels run at (AVX512, AVX2, ...), a hint
    of the CPU kind. The fused engine's numbers do not depend on it, but the BLAS (MKL) picks
    its own kernels by CPU, so an AVX2 and an AVX-512 CPU round matmuls differently."""
    return {
        "gridsweep": __version__,
        "torch": str(torch.__version__),  # a TorchVersion: plain str for JSON and weights_only loads
        "numpy": str(np.__version__),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def model_files(
    claimed: Claim, cfg: TrialConfig, data: TensorSplit, info: SplitInfo, result: TrialResult
) -> dict[str, bytes]:
    """The trained model as a state_dict file and a TorchScript file (see worker.model_io)."""
    assert result.model is not None
    artifact = make_artifact(
        result.model,
        cfg,
        task=data.task,
        n_classes=data.n_classes,
        n_outputs=n_outputs_for(cfg.loss, data.n_classes),
        classes=info.classes,
        feature_names=info.feature_names,
        x_mean=info.x_mean,
        x_std=info.x_std,
        y_mean=info.y_mean,
        y_std=info.y_std,
        meta={
            "kind": claimed.upload_model,
            "sweep_id": claimed.sweep_id,
            "trial_id": claimed.trial_id,
            "dataset": claimed.dataset,
            "dataset_id": claimed.dataset_id,
            "data_hash": info.data_hash,
            "split": claimed.split,
            "trained_on": "train+validation" if claimed.refit else "train",
            "epoch": result.best_epoch,  # the weights are this epoch's (the selected one)
            # that epoch's train_loss and val_* numbers (JSON has no NaN: a non-finite one is left out)
            "metrics": {k: v for k, v in result.metrics.items() if math.isfinite(v)},
            "test_metrics": result.test_metrics or {},
            "versions": versions(),
            **info.meta,
        },
    )
    return {"state_dict": to_bytes(artifact), "torchscript": to_torchscript(artifact)}


def upload_model(client: ApiClient, worker_id: str, claimed: Claim, files: dict[str, bytes]) -> None:
    """POST the model files, fenced by the trial's lease (an ApiError 409 means the lease is lost)."""
    client.request(
        "POST",
        f"/api/v1/workers/{worker_id}/trials/{claimed.trial_id}/model",
        data={"lease_token": claimed.lease_token, "kind": claimed.upload_model},
        files={name: (f"{name}.pt", blob, "application/octet-stream") for name, blob in files.items()},
    )
