"""The cell-level checks of an uploaded table: every problem of a file in one answer.

A column is numeric when most of its filled cells (``MOSTLY_NUMERIC``) read as numbers; the
others in it are bad cells, each reported with its row (a typo such as ``14O.2``), not a
reason to call the column text. A column that is mostly text gets one problem: declare it
categorical. Missing and infinite values are one problem per column naming its rows.
At most ``MAX_PROBLEMS`` are listed, then how many more there are. Rows count from 1 in
file order, the header not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.tabular_types import TableError

MAX_PROBLEMS = 20
MOSTLY_NUMERIC = 0.8  # this share of a column's filled cells read as numbers: the rest are typos
ROWS_NAMED = 10  # rows listed in one message


class Problems:
    """Problems found so far (the first ``MAX_PROBLEMS`` kept, the rest counted)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.more = 0

    def add(self, loc: tuple[Any, ...], msg: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append({"loc": loc, "msg": msg})
        else:
            self.more += 1

    def extend(self, errors: Sequence[dict[str, Any]]) -> None:
        for e in errors:
            self.add(tuple(e["loc"]), e["msg"])

    def __bool__(self) -> bool:
        return bool(self.items)

    def check(self) -> None:
        """Raise a ``TableError`` with every problem found (and how many more), if any."""
        if not self.items:
            return
        errors = list(self.items)
        if self.more:
            errors.append(
                {
                    "loc": ("file",),
                    "msg": f"... and {self.more} more problem(s): the first {MAX_PROBLEMS} are listed",
                }
            )
        raise TableError(errors)


def is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def row_numbers(mask: np.ndarray) -> list[int]:
    """The 1-based rows where ``mask`` holds."""
    return [int(i) + 1 for i in np.flatnonzero(mask)]


def rows_text(rows: Sequence[int]) -> str:
    """``row 4``, ``rows 4, 9 and 17``, or the first ten and how many in all."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = [str(r) for r in rows[:ROWS_NAMED]]
    if len(rows) > ROWS_NAMED:
        return f"rows {', '.join(shown)}, ... ({len(rows)} rows in all)"
    return f"rows {', '.join(shown[:-1])} and {shown[-1]}"


def to_numbers(
    s: pd.Series, col: str, loc: tuple[Any, ...], hint: str, problems: Problems
) -> np.ndarray | None:
    """A column as float64, or None with its problems added: each bad cell of a mostly-numeric
    column (with its row), or one problem for a column that is text (``hint`` says what to do)."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype(np.float64).to_numpy()
    if is_numeric(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    conv = pd.to_numeric(s, errors="coerce")
    bad = (conv.isna() & s.notna()).to_numpy()
    if not bad.any():
        return conv.to_numpy(dtype=np.float64, na_value=np.nan)
    filled = int(s.notna().sum())
    rows = row_numbers(bad)
    if filled and (filled - len(rows)) / filled >= MOSTLY_NUMERIC:
        for r in rows:
            problems.add(loc, f"column {col!r} row {r}: {s.iloc[r - 1]!r} is not a number")
    else:
        first = rows[0]
        many = f" ({len(rows)} rows in all)" if len(rows) > 1 else ""
        problems.add(
            loc, f"column {col!r} is not numeric: row {first} is {s.iloc[first - 1]!r}{many}; {hint}"
        )
    return None


def bad_rows(values: np.ndarray | pd.Series, numeric: bool) -> np.ndarray:
    """Rows with a missing value (or, for a numeric column, an infinite one)."""
    bad = np.asarray(pd.isna(values))
    if numeric:
        bad = bad | np.isinf(np.asarray(values, dtype=np.float64))
    return bad


def missing_problems(col: str, values: np.ndarray | pd.Series, numeric: bool, advice: str) -> list[str]:
    """One message for the column's missing values and one for its infinite ones, naming the rows."""
    out = []
    missing = np.asarray(pd.isna(values))
    if missing.any():
        rows = row_numbers(missing)
        out.append(f"column {col!r} has {len(rows)} missing value(s) in {rows_text(rows)}; {advice}")
    if numeric:
        inf = np.isinf(np.asarray(values, dtype=np.float64))
        if inf.any():
            rows = row_numbers(inf)
            out.append(f"column {col!r} has {len(rows)} infinite value(s) in {rows_text(rows)}; {advice}")
    return out
