"""An uploaded dataset on the wire and on disk: encoded arrays in an ``.npz`` (no pickle).

Pure: numpy only. The API packs a dataset once at upload; workers unpack it. The
fingerprint (``data_hash``) identifies the arrays a trial trained on, whatever their
source, so two trials with the same ``data_hash`` saw the same numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from gridsweep.datasets import Dataset, make_dataset

PAYLOAD_VERSION = 1


def fingerprint(ds: Dataset) -> str:
    """SHA-256 of the dataset's numbers, labels and names (hex, 64 characters)."""
    h = hashlib.sha256(b"gridsweep-data-v1")
    head = {
        "task": ds.task,
        "shape": list(ds.X.shape),
        "classes": ds.classes,
        "features": ds.feature_names,
        "y_dtype": str(ds.y.dtype),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(ds.X, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(ds.y).astype(ds.y.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def pack(ds: Dataset, meta: dict[str, Any]) -> bytes:
    """The dataset as ``.npz`` bytes: ``X``, ``y`` (class indices or targets) and JSON ``meta``."""
    info = {
        **meta,
        "version": PAYLOAD_VERSION,
        "name": ds.name,
        "task": ds.task,
        "classes": ds.classes,
        "feature_names": ds.feature_names,
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, X=ds.X, y=ds.y, meta=np.array(json.dumps(info)))
    return buf.getvalue()


def unpack(raw: bytes) -> tuple[Dataset, dict[str, Any]]:
    """Inverse of ``pack``: the ``Dataset`` (labels re-encoded the same way) and its meta."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        X, y, meta = z["X"], z["y"], json.loads(str(z["meta"]))
    if meta.get("version") != PAYLOAD_VERSION:
        raise ValueError(
            f"dataset payload version {meta.get('version')} (this worker reads {PAYLOAD_VERSION})"
        )
    if meta["task"] == "classification":
        # y holds indices into the stored classes: map back to the labels so that make_dataset
        # rebuilds the same sorted classes and the same codes.
        classes = meta["classes"]
        labels = np.asarray(classes, dtype=object)[y]
        ds = make_dataset(meta["name"], "classification", X, _uniform(labels), meta["feature_names"])
    else:
        ds = make_dataset(meta["name"], "regression", X, y, meta["feature_names"])
    return ds, meta


def _uniform(labels: np.ndarray) -> np.ndarray:
    """Object labels as a numpy array of one type (ints, floats or strings) so np.unique sorts them."""
    if all(isinstance(v, bool | int) for v in labels):
        return labels.astype(np.int64)
    if all(isinstance(v, int | float) for v in labels):
        return labels.astype(np.float64)
    return labels.astype(str)
