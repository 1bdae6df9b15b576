"""The synthetic built-in datasets' generators, in numpy alone.

``make_moons``, ``make_circles`` and ``make_friedman1`` repeat scikit-learn's generators of
the same names (``sklearn.datasets``, 1.4 to 1.9) step for step with the same legacy
``np.random.RandomState`` draws, so they give the same arrays, bit for bit, for the same
seed (``tests/test_datasets.py`` compares them with scikit-learn's). Importing
``sklearn.datasets`` takes ~1.5 s; a worker that trains on moons now pays for numpy only.

Only what the built-ins use: an integer ``n_samples`` and an integer seed.
"""

from __future__ import annotations

import numpy as np


def _shuffle_rows(X: np.ndarray, y: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    # sklearn.utils.shuffle -> resample(replace=False): shuffle an arange in place, index by it.
    idx = np.arange(X.shape[0])
    rng.shuffle(idx)
    return X[idx], y[idx]


def _two_groups(
    n_out: int, n_in: int, xs: tuple[np.ndarray, np.ndarray], ys: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    X = np.vstack([np.append(xs[0], xs[1]), np.append(ys[0], ys[1])]).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    return X, y


def make_moons(
    n_samples: int = 100, *, shuffle: bool = True, noise: float | None = None, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (``sklearn.datasets.make_moons``)."""
    n_out = n_samples // 2
    n_in = n_samples - n_out
    rng = np.random.RandomState(random_state)
    X, y = _two_groups(
        n_out,
        n_in,
        (np.cos(np.linspace(0, np.pi, n_out)), 1 - np.cos(np.linspace(0, np.pi, n_in))),
        (np.sin(np.linspace(0, np.pi, n_out)), 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5),
    )
    if shuffle:
        X, y = _shuffle_rows(X, y, rng)
    if noise is not None:
        X += rng.normal(scale=noise, size=X.shape)
    return X, y


def make_circles(
    n_samples: int = 100,
    *,
    shuffle: bool = True,
    noise: float | None = None,
    random_state: int = 0,
    factor: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """A circle in a circle (``sklearn.datasets.make_circles``)."""
    n_out = n_samples // 2
    n_in = n_samples - n_out
    rng = np.random.RandomState(random_state)
    lin_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    lin_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    X, y = _two_groups(
        n_out,
        n_in,
        (np.cos(lin_out), np.cos(lin_in) * factor),
        (np.sin(lin_out), np.sin(lin_in) * factor),
    )
    if shuffle:
        X, y = _shuffle_rows(X, y, rng)
    if noise is not None:
        X += rng.normal(scale=noise, size=X.shape)
    return X, y


def make_friedman1(
    n_samples: int = 100, n_features: int = 10, *, noise: float = 0.0, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Friedman #1 regression problem (``sklearn.datasets.make_friedman1``)."""
    rng = np.random.RandomState(random_state)
    X = rng.uniform(size=(n_samples, n_features))
    y = (
        10 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 20 * (X[:, 2] - 0.5) ** 2
        + 10 * X[:, 3]
        + 5 * X[:, 4]
        + noise * rng.standard_normal(size=(n_samples))
    )
    return X, y
