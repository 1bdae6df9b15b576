"""What the upload path shares without pandas: the error of a bad table, the feature encoding
of an uploaded dataset, and the split's row counts.

``app.tabular`` (which imports pandas, ~0.5 s) reads and checks the tables; the API, the
services and the worker's predict path import only this module until a table is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TableError(ValueError):
    """The table cannot be used; ``errors`` are ``{"loc": (...), "msg": ...}`` like a 422's detail."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(e["msg"] for e in errors))


@dataclass
class Encoding:
    """How a row of the file becomes the model's input: feature columns in file order; each
    categorical column becomes one 0/1 column per category (``col=value``, categories sorted)."""

    columns: list[str]
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        out: list[str] = []
        for c in self.columns:
            out += [f"{c}={v}" for v in self.categorical[c]] if c in self.categorical else [c]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoding:
        return cls(list(d["columns"]), {k: list(v) for k, v in (d.get("categorical") or {}).items()})


def min_rows_for_split(n: int, validation: float, test: float) -> tuple[int, int, int]:
    """(train, validation, test) row counts, rounded as ``gridsweep.datasets.split_dataset`` does."""
    n_test, n_val = round(n * test), round(n * validation)
    return n - n_val - n_test, n_val, n_test
