"""A trial as one flat table row: the layout of the API's export and of the Python client's
DataFrames, in one place so that both agree column for column.

A row has the trial's identity, one column per grid parameter (``params`` flattened),
one column per metric the API returns (any ``train_*``, ``val_*`` or ``test_*`` field:
new metrics show up without a change here), then how it ran. Pure: no pandas, no HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

HEAD = ("id", "role", "config_index", "seed", "status")
TAIL = (
    "epochs_done",
    "best_epoch",
    "stopped_epoch",
    "duration_seconds",
    "wall_seconds",
    "attempt",
    "device",
    "started_at",
    "finished_at",
    "rerun_of",
    "error",
)
METRIC_PREFIXES = ("train_", "val_", "test_")


def is_metric(name: str) -> bool:
    return name.startswith(METRIC_PREFIXES)


def metric_columns(fields: Iterable[str]) -> list[str]:
    """The metric fields among ``fields`` (in their order): losses, errors, accuracies, ..."""
    return [f for f in fields if is_metric(f)]


def param_columns(trials: Iterable[Mapping[str, Any]], axes: Iterable[str] = ()) -> list[str]:
    """The parameter columns: ``axes`` first (the spec's order), then any other key seen."""
    out = list(axes)
    for t in trials:
        out += [k for k in t.get("params", {}) if k not in out]
    return out


def columns(params: list[str], metrics: list[str]) -> list[str]:
    """Every column of a trial row, in order (a parameter named like a column keeps its own)."""
    head = [c for c in HEAD if c not in params]
    tail = [c for c in TAIL if c not in params and c not in metrics]
    return [*head, *params, *metrics, *tail]


def param_text(value: Any) -> Any:
    """A parameter value for a flat file: a per-layer width list as JSON text (``[128, 64]``)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def trial_row(
    trial: Mapping[str, Any], params: list[str], metrics: list[str], flat: bool = False
) -> dict[str, Any]:
    """One trial (the API's JSON) as a row; ``flat``: list values as JSON text (CSV, Parquet)."""
    p = trial.get("params") or {}
    row: dict[str, Any] = {c: trial.get(c) for c in HEAD if c not in params}
    for k in params:
        v = p.get(k)
        row[k] = param_text(v) if flat else v
    for m in metrics:
        row[m] = trial.get(m)
    for c in TAIL:
        if c not in row:
            row[c] = trial.get(c)
    return row
