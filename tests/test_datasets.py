"""gridsweep.datasets: the built-in table, loading, and the deterministic standardized split."""

from __future__ import annotations

import numpy as np
import pytest

from gridsweep import generators
from gridsweep.datasets import BUILTIN_DATASETS, Dataset, load_builtin, make_dataset, split_dataset


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_info_table_matches_generated_data(name: str) -> None:
    info = BUILTIN_DATASETS[name]
    ds = load_builtin(name)
    assert info.name == ds.name == name
    assert ds.task == info.task
    assert ds.X.dtype == np.float64 and ds.X.shape == (info.n_rows, info.n_features)
    assert len(ds.feature_names) == info.n_features
    assert ds.n_classes == info.n_classes
    if info.task == "classification":
        assert ds.y.dtype == np.int64 and ds.y.shape == (info.n_rows,)
        assert sorted(np.unique(ds.y)) == list(range(info.n_classes))
        assert len(ds.classes) == info.n_classes
    else:
        assert info.n_classes == 0 and ds.classes == []
        assert ds.y.dtype == np.float64 and ds.y.shape == (info.n_rows,)
    assert np.isfinite(ds.X).all() and np.isfinite(ds.y).all()


def test_expected_builtins_and_shapes() -> None:
    assert set(BUILTIN_DATASETS) == {"moons", "circles", "friedman1", "digits", "diabetes", "synthetic16"}
    assert (BUILTIN_DATASETS["digits"].n_features, BUILTIN_DATASETS["digits"].n_classes) == (64, 10)
    assert BUILTIN_DATASETS["friedman1"].n_rows == 2000


@pytest.mark.parametrize("name", ["moons", "friedman1"])
def test_builtins_are_deterministic(name: str) -> None:
    a, b = load_builtin(name), load_builtin(name)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1])
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_numpy_generators_repeat_scikit_learns_bit_for_bit(seed: int, n: int) -> None:
    """moons, circles and friedman1 no longer import sklearn.datasets: same arrays, same dtypes."""
    skd = pytest.importorskip("sklearn.datasets")
    for noise in (None, 0.2):
        pairs = [
            (
                skd.make_moons(n, noise=noise, random_state=seed),
                generators.make_moons(n, noise=noise, random_state=seed),
            ),
            (
                skd.make_circles(n, noise=noise, factor=0.5, random_state=seed),
                generators.make_circles(n, noise=noise, factor=0.5, random_state=seed),
            ),
        ]
        for (X_ref, y_ref), (X, y) in pairs:
            assert np.array_equal(X, X_ref) and X.dtype == X_ref.dtype and X.shape == X_ref.shape
            assert np.array_equal(y, y_ref) and y.dtype == y_ref.dtype
    X_ref, y_ref = skd.make_friedman1(n_samples=n, n_features=10, noise=1.0, random_state=seed)
    X, y = generators.make_friedman1(n_samples=n, n_features=10, noise=1.0, random_state=seed)
    assert np.array_equal(X, X_ref) and np.array_equal(y, y_ref)


def test_builtin_synthetic_data_is_scikit_learns() -> None:
    """The stored results of moons, circles and friedman1 sweeps stay valid: the rows did not change."""
    skd = pytest.importorskip("sklearn.datasets")
    refs = {
        "moons": skd.make_moons(n_samples=1000, noise=0.2, random_state=0),
        "circles": skd.make_circles(n_samples=1000, noise=0.1, factor=0.5, random_state=0),
        "friedman1": skd.make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0),
    }
    for name, (X_ref, y_ref) in refs.items():
        ds = load_builtin(name)
        assert np.array_equal(ds.X, X_ref), name
        assert np.array_equal(ds.y, y_ref), name


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'iris'") as exc:
        load_builtin("iris")
    for name in BUILTIN_DATASETS:
        assert name in str(exc.value)


def _rows(X: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(r) for r in X}


def test_split_is_deterministic_disjoint_and_covering() -> None:
    ds = load_builtin("moons")  # moons rows are distinct, so rows identify examples
    a = split_dataset(ds, 0.2, 0.2, seed=3)
    b = split_dataset(ds, 0.2, 0.2, seed=3)
    c = split_dataset(ds, 0.2, 0.2, seed=4)
    for f in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.X_train, c.X_train)

    assert (len(a.X_train), len(a.X_val), len(a.X_test)) == (600, 200, 200)
    # Undo the standardization and check the three splits partition the raw rows.
    raw = [np.round(X * a.x_std + a.x_mean, 9) for X in (a.X_train, a.X_val, a.X_test)]
    sets = [_rows(r) for r in raw]
    assert sum(len(s) for s in sets) == ds.n_rows
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == _rows(np.round(ds.X, 9))
    # Labels travel with their rows.
    lookup = {tuple(r): y for r, y in zip(np.round(ds.X, 9), ds.y, strict=True)}
    assert all(lookup[tuple(r)] == y for r, y in zip(raw[1], a.y_val, strict=True))


def test_test_rows_do_not_depend_on_validation_fraction() -> None:
    ds = load_builtin("moons")
    a, b = split_dataset(ds, 0.1, 0.2, seed=0), split_dataset(ds, 0.3, 0.2, seed=0)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_standardization_uses_training_statistics_only() -> None:
    sp = split_dataset(load_builtin("friedman1"), 0.2, 0.2, seed=0)
    np.testing.assert_allclose(sp.X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(sp.X_train.std(axis=0), 1.0, atol=1e-12)
    assert abs(sp.y_train.mean()) < 1e-12 and abs(sp.y_train.std() - 1.0) < 1e-12
    # val/test are transformed with the train statistics, so they are only roughly standardized.
    for X in (sp.X_val, sp.X_test):
        assert np.abs(X.mean(axis=0)).max() > 1e-6
        assert np.abs(X.mean(axis=0)).max() < 0.3
    assert abs(sp.y_val.mean()) > 1e-6
    # The kept statistics map raw rows and targets exactly.
    ds = load_builtin("friedman1")
    np.testing.assert_allclose(sp.x_mean, ds.X.mean(axis=0), atol=0.05)
    assert sp.y_mean is not None and sp.y_std is not None
    raw_val = sp.inverse_transform_y(sp.y_val)
    assert set(np.round(raw_val, 9)) <= set(np.round(ds.y, 9))
    np.testing.assert_allclose(sp.transform_X(sp.X_train * sp.x_std + sp.x_mean), sp.X_train, atol=1e-12)


def test_classification_labels_untouched_and_constant_columns_safe() -> None:
    sp = split_dataset(load_builtin("digits"), 0.2, 0.2, seed=1)
    assert sp.y_train.dtype == np.int64 and sp.y_mean is None and sp.y_std is None
    assert set(np.unique(sp.y_train)) == set(range(10))
    # digits has pixels that are always 0: std 1 is used, so no NaN/inf appears.
    assert (sp.x_std == 1.0).any()
    assert np.isfinite(sp.X_train).all() and np.isfinite(sp.X_test).all()


def test_make_dataset_encodes_labels_and_defaults_names() -> None:
    ds = make_dataset("up", "classification", [[0, 1], [1, 0], [2, 2]], ["b", "a", "b"])
    assert isinstance(ds, Dataset)
    assert ds.classes == ["a", "b"] and ds.y.tolist() == [1, 0, 1] and ds.n_classes == 2
    assert ds.feature_names == ["x0", "x1"]
    reg = make_dataset("r", "regression", np.ones((4, 1)), np.arange(4), ["f"])
    assert reg.y.dtype == np.float64 and reg.n_classes == 0 and reg.feature_names == ["f"]


@pytest.mark.parametrize(
    ("X", "y", "task", "match"),
    [
        ([[0.0], [1.0]], [0, 0], "classification", "at least 2 classes"),
        ([[0.0], [np.nan]], [0, 1], "classification", "NaN"),
        ([[0.0], [1.0]], [0, 1, 1], "regression", "rows"),
        ([[0.0], [1.0]], [0, 1], "clustering", "unknown task"),
    ],
)
def test_make_dataset_rejects_bad_input(X: list, y: list, task: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset("bad", task, X, y)


@pytest.mark.parametrize(
    ("validation", "test", "match"),
    [
        (0.0, 0.2, "validation fraction"),
        (0.2, 1.0, "test fraction"),
        (0.6, 0.4, "< 1"),
        (0.5, 0.49, "empty split"),
    ],
)
def test_split_rejects_bad_fractions(validation: float, test: float, match: str) -> None:
    ds = make_dataset("tiny", "regression", np.arange(10.0).reshape(-1, 1), np.arange(10.0))
    with pytest.raises(ValueError, match=match):
        split_dataset(ds, validation, test)


def test_split_needs_two_classes_in_training_split() -> None:
    # 9 rows of class 0 and 1 of class 1: whichever split the lone 1 lands in,
    # some seed puts it outside the training split.
    ds = make_dataset("skew", "classification", np.arange(10.0).reshape(-1, 1), [0] * 9 + [1])
    errors = 0
    for seed in range(20):
        try:
            split_dataset(ds, 0.2, 0.2, seed=seed)
        except ValueError as exc:
            assert "at least 2" in str(exc)
            errors += 1
    assert 0 < errors < 20
