"""Jinja filters: numbers, parameter values, durations and times as the dashboard shows them."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import yaml

from app.search_spec import axis_values, stored_grids, varying_axes
from app.spec import AXES

STATUS_ORDER = ("queued", "running", "succeeded", "failed", "diverged", "canceled", "pruned")
# Short column headers for the grid parameters.
AXIS_LABELS = {
    "layers": "layers",
    "hidden_units": "hidden",
    "activation": "activation",
    "learning_rate": "lr",
    "optimizer": "optimizer",
    "batch_size": "batch",
    "epochs": "epochs",
    "dropout": "dropout",
    "weight_decay": "wd",
    "loss": "loss",
}


def num(value: Any, digits: int = 4) -> str:
    """A metric with ``digits`` significant digits; a dash when there is none."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def param(value: Any) -> str:
    """A parameter value: ``0.001``, ``relu``, a per-layer width list as ``128-64``."""
    if isinstance(value, list):
        return "-".join(param(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def duration(seconds: float | None) -> str:
    """A duration readable at any size: ``12 ms``, ``0.34 s``, ``16.2 s``, ``3 m 05 s``, ``2 h 10 m``."""
    if seconds is None:
        return "—"
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0005 else f"{seconds * 1000:.2g} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def when(dt: datetime | None) -> str:
    """A UTC time to the second (the dashboard states times in UTC)."""
    return "—" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def spec_yaml(spec: dict[str, Any]) -> str:
    """The stored spec as YAML a user could submit again: one-value axes as scalars, no nulls."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        return obj

    out = clean(spec)
    for params in stored_grids(out):  # one grid, or each sub-grid
        for axis in AXES:
            values = params.get(axis)
            # A lone per-layer width list must stay a list of one list, or it would become a grid axis.
            if isinstance(values, list) and len(values) == 1 and not isinstance(values[0], list):
                params[axis] = values[0]
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=100)


def spec_rows(spec: dict[str, Any]) -> list[tuple[str, list[Any], bool]]:
    """(parameter, values, is varied) for each parameter of the spec, in expansion order: the values
    over every sub-grid, a distribution as its text (``log_uniform 0.0001..0.1``)."""
    varied = set(varying_axes(spec, AXES))
    return [(axis, values, axis in varied) for axis in AXES if (values := axis_values(spec, axis))]


FILTERS = {"num": num, "param": param, "duration": duration, "when": when, "ago": ago}
