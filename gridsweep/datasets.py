"""Datasets a trial trains on, and the deterministic train/val/test split.

Pure: numpy (+ scikit-learn for digits and diabetes, imported only for them) -- no torch,
no database, no HTTP -- so the API can import ``BUILTIN_DATASETS`` to validate a spec
without generating any data.

Every built-in dataset is deterministic: the synthetic ones use a fixed
``random_state`` (moons, circles and friedman1 from ``gridsweep.generators``, scikit-learn's
generators repeated bit for bit in numpy) and the real ones (digits, diabetes) ship inside
scikit-learn, so nothing is downloaded at run time and every worker sees the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gridsweep import generators
from gridsweep.vocab import TASKS

# Seed for the synthetic generators. Changing it changes every stored result.
_DATA_RANDOM_STATE = 0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without generating it. ``n_classes`` is 0 for regression."""

    name: str
    task: str
    n_classes: int
    n_features: int
    n_rows: int
    description: str


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("moons", "classification", 2, 2, 1000, "Two interleaving half circles (noise 0.2)."),
        DatasetInfo("circles", "classification", 2, 2, 1000, "A circle in a circle (noise 0.1, factor 0.5)."),
        DatasetInfo("friedman1", "regression", 0, 10, 2000, "Friedman #1: 5 of 10 features used (noise 1)."),
        DatasetInfo("digits", "classification", 10, 64, 1797, "8x8 images of handwritten digits 0-9."),
        DatasetInfo("diabetes", "regression", 0, 10, 442, "Disease progression one year after baseline."),
        DatasetInfo(
            "synthetic16",
            "regression",
            0,
            16,
            30_000,
            "The public benchmark: a fixed smooth function of 16 features plus noise "
            "(split validation and test 1/6 each: 20,000 training rows).",
        ),
    )
}


@dataclass
class Dataset:
    """A whole dataset in memory.

    ``X`` is float64 ``[n, d]``. ``y`` is int64 labels ``0..n_classes-1`` for
    classification (``classes[i]`` is the original label of class ``i``) and
    float64 ``[n]`` for regression (``n_classes == 0`` and ``classes == []``).
    """

    name: str
    task: str
    n_classes: int
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    classes: list[Any] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def make_dataset(name: str, task: str, X: Any, y: Any, feature_names: Sequence[str] | None = None) -> Dataset:
    """Validate raw arrays and wrap them as a ``Dataset`` (used for built-in and uploaded data).

    Classification labels may be any sortable values; they are encoded as
    int64 indices into the sorted unique labels (kept in ``classes``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (use one of {TASKS})")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-d array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must be 1-d with {X.shape[0]} rows, got shape {y.shape}")
    names = [f"x{i}" for i in range(X.shape[1])] if feature_names is None else [str(f) for f in feature_names]
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} feature names for {X.shape[1]} features")

    if task == "regression":
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        return Dataset(name, task, 0, np.ascontiguousarray(X), y, names, [])

    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"a classification dataset needs at least 2 classes, got {len(classes)}")
    return Dataset(
        name,
        task,
        len(classes),
        np.ascontiguousarray(X),
        codes.astype(np.int64).reshape(-1),
        names,
        [c.item() if hasattr(c, "item") else c for c in classes],
    )


def _skd() -> Any:
    """scikit-learn's datasets, imported only for the datasets it ships (digits, diabetes):
    it takes ~1.5 s, and the API (which imports this module for ``BUILTIN_DATASETS``) never
    generates data."""
    from sklearn import datasets

    return datasets


def _moons() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    X, y = generators.make_moons(n_samples=1000, noise=0.2, random_state=_DATA_RANDOM_STATE)
    return X, y, None


def _circles() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    X, y = generators.make_circles(n_samples=1000, noise=0.1, factor=0.5, random_state=_DATA_RANDOM_STATE)
    return X, y, None


def _friedman1() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    X, y = generators.make_friedman1(
        n_samples=2000, n_features=10, noise=1.0, random_state=_DATA_RANDOM_STATE
    )
    return X, y, None


def _digits() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    d = _skd().load_digits()
    return d.data, d.target, list(d.feature_names)


def _diabetes() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    d = _skd().load_diabetes()
    return d.data, d.target, list(d.feature_names)


def _synthetic16() -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    # A fixed function: a random 8-unit sine layer, one interaction, a little noise.
    rng = np.random.default_rng(_DATA_RANDOM_STATE)
    X = rng.normal(size=(30_000, 16))
    A = rng.normal(size=(16, 8)) / 4
    v = rng.normal(size=8)
    y = np.sin(X @ A) @ v + 0.5 * np.tanh(X[:, 0] * X[:, 1]) + 0.1 * rng.normal(size=30_000)
    return X, y, None


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str] | None]]] = {
    "moons": _moons,
    "circles": _circles,
    "friedman1": _friedman1,
    "digits": _digits,
    "diabetes": _diabetes,
    "synthetic16": _synthetic16,
}


def load_builtin(name: str) -> Dataset:
    """Generate (or load from scikit-learn's package data) a built-in dataset by name."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(BUILTIN_DATASETS))}")
    info = BUILTIN_DATASETS[name]
    X, y, names = _LOADERS[name]()
    return make_dataset(name, info.task, X, y, names)


@dataclass
class SplitData:
    """A standardized train/val/test split plus the statistics needed to undo it.

    Features: ``X_split = (X_raw - x_mean) / x_std`` with train-split statistics.
    Regression targets: ``y_split = (y_raw - y_mean) / y_std`` likewise, so losses
    are in standardized target units. Classification: labels untouched and
    ``y_mean``/``y_std`` are ``None``.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str
    n_classes: int
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float | None
    y_std: float | None

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def transform_X(self, X_raw: Any) -> np.ndarray:
        """Standardize raw feature rows the same way the split was (for predicting on new rows)."""
        return (np.asarray(X_raw, dtype=np.float64) - self.x_mean) / self.x_std

    def inverse_transform_y(self, y_std_units: Any) -> np.ndarray:
        """Map regression outputs from standardized units back to raw target units."""
        if self.y_mean is None or self.y_std is None:
            raise ValueError("targets of a classification split are not standardized")
        return np.asarray(y_std_units, dtype=np.float64) * self.y_std + self.y_mean


def _safe_std(values: np.ndarray, mean: np.ndarray) -> np.ndarray:
    # A constant column has std 0 (or a rounding-error std ~1e-17 when its mean is
    # not exactly representable); dividing by it would blow the column up, so use 1.
    std = values.std(axis=0)
    return np.where(std <= 1e-12 * (1.0 + np.abs(mean)), 1.0, std)


def split_dataset(ds: Dataset, validation: float = 0.2, test: float = 0.2, seed: int = 0) -> SplitData:
    """Split ``ds`` into train/val/test and standardize it with training statistics only.

    Rows are shuffled by ``np.random.default_rng(seed).permutation(n)``; the first
    ``round(n * test)`` shuffled rows are the test split, the next
    ``round(n * validation)`` the validation split and the rest the training split
    (test first, so the test rows for a seed do not depend on ``validation``).

    Features are standardized per column with the mean and (population) std of the
    TRAINING rows only, so no information leaks from val/test; a (near-)constant
    column gets std 1. Regression targets are standardized the same way, so every
    regression loss is in standardized target units: an MSE of 1.0 is what
    predicting the training mean scores, whatever the raw scale of the target.
    Classification labels are left as int64 class indices.
    """
    for label, frac in (("validation", validation), ("test", test)):
        if not 0.0 < float(frac) < 1.0:
            raise ValueError(f"{label} fraction must be in (0, 1), got {frac}")
    if validation + test >= 1.0:
        raise ValueError(f"validation + test fractions must be < 1, got {validation} + {test}")
    n = ds.n_rows
    n_test = round(n * test)
    n_val = round(n * validation)
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(
            f"{n} rows split with validation={validation}, test={test} leaves an empty split "
            f"(train {n_train}, val {n_val}, test {n_test}); every split needs at least 1 row"
        )

    perm = np.random.default_rng(seed).permutation(n)
    test_idx, val_idx, train_idx = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]

    if ds.task == "classification":
        present = np.unique(ds.y[train_idx])
        if len(present) < 2:
            raise ValueError(
                f"the training split has only {len(present)} class(es); need at least 2 "
                "(use more rows or a smaller validation/test fraction)"
            )

    X_train = ds.X[train_idx]
    x_mean = X_train.mean(axis=0)
    x_std = _safe_std(X_train, x_mean)

    def fx(idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((ds.X[idx] - x_mean) / x_std)

    y_mean: float | None = None
    y_std: float | None = None
    if ds.task == "regression":
        y_train_raw = ds.y[train_idx]
        y_mean = float(y_train_raw.mean())
        y_std = float(_safe_std(y_train_raw, np.asarray(y_mean)))

        def fy(idx: np.ndarray) -> np.ndarray:
            return (ds.y[idx] - y_mean) / y_std
    else:

        def fy(idx: np.ndarray) -> np.ndarray:
            return ds.y[idx].copy()

    return SplitData(
        X_train=fx(train_idx),
        y_train=fy(train_idx),
        X_val=fx(val_idx),
        y_val=fy(val_idx),
        X_test=fx(test_idx),
        y_test=fy(test_idx),
        task=ds.task,
        n_classes=ds.n_classes,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
    )
