"""How the CLI shows specs, errors, progress and results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from app import search_spec
from app.cli.api import BadInput
from app.spec import AXES, SweepSpec, format_loc


def load_spec(path: str) -> SweepSpec:
    """Read and validate a YAML (or JSON) spec file; errors name the field path."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: a spec is a mapping (name, dataset, parameters, ...)")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise BadInput(f"{path} is not a valid spec:\n" + "\n".join(lines)) from exc


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ",".join(fmt(x) for x in v) + "]"
    return str(v)


def varying_axes(spec: dict[str, Any]) -> list[str]:
    """The axes the spec varies (lists of several values, distributions, sub-grids that differ):
    the columns worth showing."""
    return search_spec.varying_axes(spec, AXES)


def leaderboard_table(sweep: dict[str, Any], board: list[dict[str, Any]]) -> str:
    axes = varying_axes(sweep["spec"]) or ["layers", "hidden_units", "learning_rate"]
    metric = sweep["metric"]["name"]
    head = ["rank", *axes, f"{metric} (mean ± std)", "seeds"]
    rows = [
        [
            str(e["rank"]),
            *(fmt(e["params"].get(a)) for a in axes),
            f"{e['mean']:.4f} ± {e['std']:.4f}",
            str(e["n_seeds"]),
        ]
        for e in board
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def best_text(best: dict[str, Any] | None) -> str:
    if best is None:
        return "no best config: no trial succeeded"
    m = best["metric"]["name"]
    v = best["validation"]
    lines = [
        f"best config (trial {best['trial_id']}, grid point {best['config_index']}):",
        *(f"  {k}: {fmt(val)}" for k, val in best["params"].items()),
        f"  validation {m}: {v['mean']:.4f} ± {v['std']:.4f} over {best['n_seeds']} seed(s)",
    ]
    for k, val in (v.get("metrics_mean") or {}).items():
        if k != m:
            lines.append(f"  {k}: {val:.4f}")
    if best.get("test"):
        lines += [f"  held-out {k}: {val:.4f}" for k, val in best["test"].items()]
    else:
        lines.append("  held-out test: not evaluated yet")
    if best.get("refit_test"):  # spec.refit: retrained on train + validation
        refit = best["refit_test"].items()
        lines += [f"  refit (train+validation) held-out {k}: {val:.4f}" for k, val in refit]
    return "\n".join(lines)


def progress_line(sweep: dict[str, Any]) -> str:
    c = sweep["counts"]
    done = sum(c.get(s, 0) for s in ("succeeded", "failed", "diverged", "canceled", "pruned"))
    best = sweep.get("best")
    b = f", best {sweep['metric']['name']} {best['validation']['mean']:.4f}" if best else ""
    extra = "".join(f", {c[s]} {s}" for s in ("failed", "diverged", "pruned") if c.get(s))
    return f"sweep {sweep['id']} {sweep['status']}: {done}/{sweep['n_trials']} trials done{extra}{b}"


def progress_bar(sweep: dict[str, Any], width: int = 30) -> str:
    frac = sweep["progress"]
    filled = int(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {progress_line(sweep)}"


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def is_tty() -> bool:
    return sys.stderr.isatty()
