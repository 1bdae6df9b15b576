"""Tables (CSV, Parquet) -> validated numeric arrays, and the feature encoding for predictions.

Pure: pandas + numpy, no database or HTTP; imported only where a table is read (an upload,
``gridsweep predict``): what the API needs without reading one is in ``app.tabular_types``.
Every rejection is a ``TableError`` whose errors carry a ``loc`` (the request field) and a
message that names the column and the row. Rows are numbered from 1 in file order, the header not counted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from app.tabular_checks import (
    Problems,
    bad_rows,
    is_numeric,
    missing_problems,
    row_numbers,
    rows_text,
    to_numbers,
)
from app.tabular_types import Encoding, TableError, min_rows_for_split

__all__ = ["Encoding", "PreparedTable", "TableError", "encode_frame", "min_rows_for_split", "prepare_table"]

# A numeric target with at most this many distinct integer values is taken for class labels.
MAX_INFERRED_CLASSES = 20
# An upload must leave at least one row in each part of the default split.
DEFAULT_VALIDATION, DEFAULT_TEST = 0.2, 0.2
FORMATS = ("csv", "parquet")


def _err(loc: str | tuple[Any, ...], msg: str) -> TableError:
    return TableError([{"loc": (loc,) if isinstance(loc, str) else loc, "msg": msg}])


@dataclass
class PreparedTable:
    X: np.ndarray  # float64 [n, d], categorical columns one-hot encoded
    y: np.ndarray  # class labels (python-comparable) or float64 targets
    task: str
    task_source: str  # "given" | "inferred"
    task_reason: str
    classes: list[Any]
    encoding: Encoding
    columns: list[dict[str, Any]]  # schema: name, dtype, role and statistics
    format: str
    n_dropped: int
    dropped_rows: list[int] = field(default_factory=list)  # 1-based rows of the file (drop_missing)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def detect_format(raw: bytes, filename: str | None) -> str:
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in (".parquet", ".pq") or raw[:4] == b"PAR1":
        return "parquet"
    return "csv"


def read_table(raw: bytes, filename: str | None) -> tuple[pd.DataFrame, str]:
    """Parse the bytes of a CSV or Parquet file (Parquet by extension or magic bytes)."""
    if not raw.strip():
        raise _err("file", "the file is empty")
    fmt = detect_format(raw, filename)
    try:
        df = pd.read_parquet(io.BytesIO(raw)) if fmt == "parquet" else pd.read_csv(io.BytesIO(raw))
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "not a readable table"
        raise _err("file", f"cannot read the file as {fmt.upper()}: {exc}") from exc
    df.columns = [str(c) for c in df.columns]
    if len(set(df.columns)) != len(df.columns):
        dup = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
        raise _err("file", f"duplicate column names: {dup}")
    if len(df) == 0:
        raise _err("file", "the file has a header but no data rows")
    return df.reset_index(drop=True), fmt


_is_numeric = is_numeric
MISSING_ADVICE = "fix the file, or pass drop_missing (--drop-missing) to drop such rows"


def _to_float(s: pd.Series, col: str, loc: tuple[Any, ...], hint: str) -> np.ndarray:
    """A column as float64, or a TableError with its bad cells (each with its row)."""
    problems = Problems()
    v = to_numbers(s, col, loc, hint, problems)
    problems.check()
    assert v is not None
    return v


def _infer_task(y: pd.Series, target: str) -> tuple[str, str]:
    if not _is_numeric(y) or pd.api.types.is_bool_dtype(y):
        return "classification", f"target {target!r} is not numeric, so its values are class labels"
    v = y.to_numpy(dtype=np.float64)
    distinct = len(np.unique(v))
    integral = bool(np.all(v == np.floor(v)))
    if integral and distinct <= MAX_INFERRED_CLASSES:
        return (
            "classification",
            f"target {target!r} has {distinct} distinct integer values "
            f"(at most {MAX_INFERRED_CLASSES}), so they are class labels",
        )
    why = (
        "non-integer values" if not integral else f"{distinct} distinct values (over {MAX_INFERRED_CLASSES})"
    )
    return "regression", f"target {target!r} is numeric with {why}, so it is a regression target"


def _labels(y: pd.Series) -> np.ndarray:
    """Class labels as one comparable type: ints for integral numbers, else strings."""
    if _is_numeric(y) and not pd.api.types.is_bool_dtype(y):
        v = y.to_numpy(dtype=np.float64)
        if np.all(v == np.floor(v)):
            return v.astype(np.int64)
        return v
    return y.astype(str).to_numpy()


def category_text(s: pd.Series) -> np.ndarray:
    """A categorical column's values as text; whole numbers without ".0", so a column read as
    float (because another row was empty) names its categories as one read as int does."""
    if _is_numeric(s) and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.array(
            [str(int(x)) if np.isfinite(x) and x == int(x) else repr(float(x)) for x in v], dtype=object
        )
    return s.astype(str).to_numpy(dtype=object)


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _num_stats(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def prepare_table(
    raw: bytes,
    filename: str | None,
    target: str,
    task: str | None = None,
    categorical: Sequence[str] = (),
    drop_missing: bool = False,
) -> PreparedTable:
    """Parse, validate and encode an uploaded table (see the module docstring for the rules)."""
    df, fmt = read_table(raw, filename)
    if target not in df.columns:
        raise _err("target", f"column {target!r} is not in the file; its columns are {list(df.columns)}")
    errors = [
        {"loc": ("categorical", i), "msg": f"categorical column {c!r} is not in the file"}
        for i, c in enumerate(categorical)
        if c not in df.columns
    ] + [
        {"loc": ("categorical", i), "msg": f"{c!r} is the target; only feature columns can be categorical"}
        for i, c in enumerate(categorical)
        if c == target
    ]
    if errors:
        raise TableError(errors)
    features = [c for c in df.columns if c != target]
    if not features:
        raise _err("file", f"the file has no feature columns besides the target {target!r}")
    cats = set(categorical)

    # 1. Every non-categorical feature must be numeric, with no missing or infinite value (or those
    # rows dropped): every problem of the file is collected, and reported at once.
    problems = Problems()
    numeric: dict[str, np.ndarray] = {}
    for c in features:
        if c in cats:
            continue
        hint = f"declare it categorical (--categorical {c}) or drop it"
        if (v := to_numbers(df[c], c, ("file", c), hint, problems)) is not None:
            numeric[c] = v
    y_col = df[target]
    if task == "regression":
        to_numbers(y_col, target, ("target",), "a regression target must be numeric", problems)
    checks: list[tuple[str, Any, bool]] = [
        (c, numeric[c] if c in numeric else df[c].to_numpy(dtype=object), c in numeric) for c in features
    ]
    y_numeric = is_numeric(y_col) and not pd.api.types.is_bool_dtype(y_col)
    checks.append(
        (target, y_col.to_numpy(dtype=np.float64) if y_numeric else y_col.to_numpy(dtype=object), y_numeric)
    )
    dropped: list[int] = []
    if drop_missing:
        bad = np.zeros(len(df), dtype=bool)
        for _, values, is_num in checks:
            bad |= bad_rows(values, is_num)
        dropped = row_numbers(bad)
    else:
        for c, values, is_num in checks:
            for msg in missing_problems(c, values, is_num, MISSING_ADVICE):
                problems.add(("target",) if c == target else ("file", c), msg)
    problems.check()
    n_dropped = len(dropped)
    if n_dropped:
        keep = ~bad
        df = df[keep].reset_index(drop=True)
        numeric = {c: v[keep] for c, v in numeric.items()}
        y_col = df[target]

    n = len(df)
    n_train, n_val, n_test = min_rows_for_split(n, DEFAULT_VALIDATION, DEFAULT_TEST)
    if min(n_train, n_val, n_test) < 1:
        dropped_text = (
            f" after dropping {n_dropped} with missing values ({rows_text(dropped)})" if n_dropped else ""
        )
        raise _err(
            "file",
            f"the file has {n} rows{dropped_text}; the default split (validation {DEFAULT_VALIDATION}, "
            f"test {DEFAULT_TEST}) needs at least one row in each of train, validation and test",
        )

    # 3. The task, given or inferred, and the target's values.
    if task is None:
        task, reason = _infer_task(y_col, target)
        source = "inferred"
    else:
        source, reason = "given", f"task {task!r} given at upload"
    classes: list[Any] = []
    if task == "regression":
        y = y_col.to_numpy(dtype=np.float64)
        target_stats: dict[str, Any] = _num_stats(y)
    else:
        y = _labels(y_col)
        uniq, counts = np.unique(y, return_counts=True)
        classes = [_py(u) for u in uniq]
        if len(classes) < 2:
            raise _err(
                "target",
                f"column {target!r} has a single class ({classes[0]!r}) in all {n} rows; "
                "a classification target needs at least 2 classes",
            )
        target_stats = {"class_counts": {str(k): int(v) for k, v in zip(classes, counts, strict=True)}}

    # 4. Encode: numeric columns as they are, categorical ones one-hot.
    encoding = Encoding(
        columns=features, categorical={c: sorted(set(category_text(df[c]))) for c in features if c in cats}
    )
    X = encode_frame(df, encoding)
    columns: list[dict[str, Any]] = []
    for c in features:
        col: dict[str, Any] = {"name": c, "dtype": str(df[c].dtype)}
        if c in cats:
            col.update(role="categorical", categories=encoding.categorical[c])
        else:
            col.update(role="feature", **_num_stats(numeric[c]))
        columns.append(col)
    columns.append({"name": target, "dtype": str(y_col.dtype), "role": "target", **target_stats})
    return PreparedTable(X, y, task, source, reason, classes, encoding, columns, fmt, n_dropped, dropped)


def encode_frame(df: pd.DataFrame, encoding: Encoding) -> np.ndarray:
    """The model input (float64 ``[n, d]``) of a table's rows; errors name the column and row."""
    missing = [c for c in encoding.columns if c not in df.columns]
    if missing:
        raise _err("file", f"the file lacks the feature column(s) {missing} the model was trained on")
    parts: list[np.ndarray] = []
    problems = Problems()
    advice = "fix the file"
    for c in encoding.columns:
        s = df[c]
        if c in encoding.categorical:
            cats = encoding.categorical[c]
            if msgs := missing_problems(c, s.to_numpy(dtype=object), False, advice):
                problems.extend([{"loc": ("file", c), "msg": m} for m in msgs])
                continue
            text = category_text(s)
            unknown = ~np.isin(text, cats)
            if unknown.any():
                rows = row_numbers(unknown)
                seen = ", ".join(repr(str(v)) for v in dict.fromkeys(text[unknown].tolist()))
                problems.add(
                    ("file", c),
                    f"column {c!r} has categories not seen in training in {rows_text(rows)}: {seen} "
                    f"(known: {', '.join(cats)})",
                )
                continue
            parts.append((text[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float64))
            continue
        v = to_numbers(s, c, ("file", c), "the model needs a number", problems)
        if v is None:
            continue
        if msgs := missing_problems(c, v, True, advice):
            problems.extend([{"loc": ("file", c), "msg": m} for m in msgs])
            continue
        parts.append(v[:, None])
    problems.check()
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float64)
