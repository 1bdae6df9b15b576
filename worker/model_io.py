"""Trained models as files, and the ONE function that loads them: ``load_model``.

Pure: torch (+ gridsweep.vocab / worker.train); no database, HTTP, numpy or pandas.

    from worker.model_io import load_model
    m = load_model("model.pt")     # the state_dict file or the TorchScript file of a sweep
    m.feature_names                # the input columns, categorical ones one-hot ("color=red")
    m.predict(X)                   # X: raw rows [n, len(feature_names)] -> class labels / values
    m.predict_proba(X)             # classification: [n, n_classes] probabilities

A state_dict file is a ``torch.save`` of a plain dict (loaded with ``weights_only=True``, so
no code runs on load): the trial's config, the training-split standardization statistics
(features, and the target for regression), the class list, the feature encoding, the
``state_dict`` and provenance (sweep, trial, data hash, split, test metrics, versions). The
TorchScript file holds the same network with the standardization built in and the same
facts as JSON in its extra file ``gridsweep.json``; it needs torch only to run.

Predictions are computed exactly as the worker evaluated the test split: features are
standardized in float64 with the stored statistics, cast to the training dtype, and passed
through the network in eval mode (no dropout), so the recorded test metrics are reproduced.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gridsweep.vocab import TrialConfig
from worker.train import Dropout, build_model

FORMAT = "gridsweep.model"
VERSION = 1
EXTRA_FILE = "gridsweep.json"


class Standardized(nn.Module):
    """Raw (encoded) feature rows in, the trained network's outputs out (logits, or regression
    values in standardized units): the training split's standardization is built in."""

    def __init__(self, net: nn.Module, x_mean: torch.Tensor, x_std: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("x_mean", x_mean.to(torch.float64))
        self.register_buffer("x_std", x_std.to(torch.float64))
        self.register_buffer("probe", torch.zeros(0, dtype=dtype))  # carries the training dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(torch.float64) - self.x_mean) / self.x_std
        return self.net(z.to(self.probe.dtype))


def make_artifact(
    model: nn.Module,
    cfg: TrialConfig,
    *,
    task: str,
    n_classes: int,
    n_outputs: int,
    classes: list[Any],
    feature_names: list[str],
    x_mean: Any,
    x_std: Any,
    y_mean: float | None,
    y_std: float | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Everything ``load_model`` needs, as a dict of plain values and CPU tensors."""
    dtype = next(model.parameters()).dtype
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "task": task,
        "n_classes": n_classes,
        "n_outputs": n_outputs,
        "classes": list(classes),
        "feature_names": list(feature_names),
        "dtype": str(dtype).removeprefix("torch."),
        "x_mean": torch.as_tensor(x_mean, dtype=torch.float64).clone(),
        "x_std": torch.as_tensor(x_std, dtype=torch.float64).clone(),
        "y_mean": y_mean,
        "y_std": y_std,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }


def info_of(artifact: dict[str, Any]) -> dict[str, Any]:
    """The artifact's facts without tensors (what the TorchScript file carries as JSON)."""
    skip = ("state_dict", "x_mean", "x_std")
    return {k: v for k, v in artifact.items() if k not in skip}


def to_bytes(artifact: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(artifact, buf)
    return buf.getvalue()


def _network(artifact: dict[str, Any]) -> nn.Module:
    """The trained MLP rebuilt from the artifact (CPU, eval mode)."""
    cfg = TrialConfig(**{**artifact["config"], "hidden_units": tuple(artifact["config"]["hidden_units"])})
    dtype = getattr(torch, artifact["dtype"])
    net = build_model(cfg, len(artifact["feature_names"]), artifact["n_outputs"], dtype=dtype, device="cpu")
    net.load_state_dict(artifact["state_dict"])
    return net.eval()


def to_torchscript(artifact: dict[str, Any]) -> bytes:
    """The network (dropout layers left out: they are the identity at inference) as TorchScript."""
    net = _network(artifact)
    plain = nn.Sequential(*[m for m in net if not isinstance(m, Dropout)]).eval()
    dtype = getattr(torch, artifact["dtype"])
    module = Standardized(plain, artifact["x_mean"], artifact["x_std"], dtype).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the portable format
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, buf, _extra_files={EXTRA_FILE: json.dumps(info_of(artifact))})
    return buf.getvalue()


@dataclass
class LoadedModel:
    """A loaded model: ``module`` maps raw (encoded) rows to the network's outputs."""

    module: nn.Module
    info: dict[str, Any]

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def classes(self) -> list[Any]:
        return self.info["classes"]

    @property
    def feature_names(self) -> list[str]:
        return self.info["feature_names"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.info.get("meta", {})

    @torch.no_grad()
    def outputs(self, X: Any) -> torch.Tensor:
        """The network's raw outputs: logits (classification) or standardized values (regression)."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected rows of {len(self.feature_names)} features, got shape {tuple(X.shape)}"
            )
        return self.module(X)

    @torch.no_grad()
    def predict_proba(self, X: Any) -> torch.Tensor:
        if self.task != "classification":
            raise ValueError("predict_proba is for classification models")
        out = self.outputs(X).to(torch.float64)
        if self.info["config"]["loss"] == "bce":
            p = torch.sigmoid(out[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(out, dim=1)

    @torch.no_grad()
    def predict(self, X: Any) -> list[Any]:
        """Class labels (as in the uploaded target column) or regression values in the target's units."""
        out = self.outputs(X)
        if self.task == "regression":
            values = out[:, 0].to(torch.float64) * self.info["y_std"] + self.info["y_mean"]
            return values.tolist()
        idx = (out[:, 0] > 0).long() if self.info["config"]["loss"] == "bce" else out.argmax(dim=1)
        return [self.classes[i] for i in idx.tolist()]


def _is_torchscript(data: bytes) -> bool:
    """TorchScript archives are zip files with ``constants.pkl`` (torch.save files have none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_model(path: str | Path | bytes) -> LoadedModel:
    """Load a model file downloaded from ``GET /api/v1/sweeps/{id}/model`` (either format)."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    load_error: Exception | None = None
    obj = None
    if not _is_torchscript(data):
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch.save file either: TorchScript will say why below
            load_error = exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise ValueError(f"model file version {obj.get('version')} (this gridsweep reads {VERSION})")
        net = _network(obj)
        module = Standardized(net, obj["x_mean"], obj["x_std"], getattr(torch, obj["dtype"])).eval()
        return LoadedModel(module, info_of(obj))
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ValueError(
            f"not a gridsweep model file (torch.load: {load_error}; torch.jit.load: {exc})"
        ) from exc
    if not extra[EXTRA_FILE]:
        raise ValueError(f"a TorchScript file without {EXTRA_FILE}: not a gridsweep model")
    return LoadedModel(scripted.eval(), json.loads(extra[EXTRA_FILE]))
