"""How the CLI shows specs, errors, progress and results."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from app import search_spec
from app.cli.api import BadInput
from app.cli.exit_codes import EXIT_INTERRUPTED
from app.spec import AXES, SweepSpec, format_loc
from app.spec_errors import plain_errors
from gridsweep.specfile import SpecFileError, load_spec_file
from gridsweep.vocab import metric_units, rule_text


def load_spec(path: str) -> SweepSpec:
    """Read and validate a YAML (or JSON) spec file; errors name the file, line and column, or
    the field path, in plain words. A spec without ``name`` is named after the file."""
    try:
        raw = load_spec_file(path)
    except SpecFileError as exc:
        raise BadInput(str(exc), errors=[{"loc": [], "msg": str(exc)}]) from exc
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        errors = plain_errors(exc.errors(), body=raw, root=SweepSpec)
        lines = [f"  {format_loc(e['loc'])}: {e['msg']}" for e in errors]
        raise BadInput(f"{path} is not a valid spec:\n" + "\n".join(lines), errors=errors) from exc


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
    head = ["rank", *axes, f"{metric} (mean ± std; {metric_units(metric)})", "seeds"]
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
    table = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    return "\n".join([*table, rule_text(sweep["metric"])])


def best_text(best: dict[str, Any] | None) -> str:
    if best is None:
        return "no best config: no trial succeeded"
    m = best["metric"]["name"]
    v = best["validation"]
    lines = [
        f"best config (trial {best['trial_id']}, grid point {best['config_index']}):",
        *(f"  {k}: {fmt(val)}" for k, val in best["params"].items()),
        f"  validation {m}: {v['mean']:.4f} ± {v['std']:.4f} over {best['n_seeds']} seed(s)"
        f" ({metric_units(m)})",
    ]
    epochs = [s.get("best_epoch") for s in v.get("per_seed") or []]
    if any(e is not None for e in epochs):
        stopped = [s["stopped_epoch"] for s in v["per_seed"] if s.get("stopped_epoch")]
        lines.append(
            "  scored at epoch "
            + ", ".join("-" if e is None else str(e) for e in epochs)
            + " (per seed)"
            + (f"; early stopping ended {len(stopped)} seed(s)" if stopped else "")
        )
    for k, val in (v.get("metrics_mean") or {}).items():
        if k != m:
            lines.append(f"  {k}: {val:.4f} ({metric_units(k)})")
    if best.get("test"):
        lines += [f"  held-out {k}: {val:.4f} ({metric_units(k)})" for k, val in best["test"].items()]
    else:
        lines.append("  held-out test: not evaluated yet")
    if best.get("refit_test"):  # spec.refit: retrained on train + validation
        refit = best["refit_test"].items()
        lines += [f"  refit (train+validation) held-out {k}: {val:.4f}" for k, val in refit]
    return "\n".join(lines)


def clock(seconds: float | None) -> str:
    """A duration as ``1:02:03`` or ``2:03`` (``-`` when unknown)."""
    if seconds is None:
        return "-"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def trials_done(sweep: dict[str, Any]) -> int:
    return sum(sweep["counts"].get(s, 0) for s in ("succeeded", "failed", "diverged", "canceled", "pruned"))


def epochs_text(sweep: dict[str, Any]) -> str:
    """``epochs 1204/2400`` and, while trials train, ``(4 running at 237/500)``."""
    text = f"epochs {sweep.get('epochs_done', 0)}/{sweep.get('epochs_planned', 0)}"
    if sweep.get("running"):
        text += (
            f" ({sweep['running']} running at "
            f"{sweep.get('running_epochs_done', 0)}/{sweep.get('running_epochs_planned', 0)})"
        )
    return text


def best_so_far(sweep: dict[str, Any]) -> str:
    best = sweep.get("best")
    m = sweep["metric"]["name"]
    return f"best {m} {best['validation']['mean']:.4f} ({metric_units(m)})" if best else "no best yet"


PHASE_WORDS = {
    "evaluating": "evaluating the best config on the test split",
    "canceling": "canceled, running trials stopping",
}


def progress_line(sweep: dict[str, Any]) -> str:
    c = sweep["counts"]
    best = sweep.get("best")
    b = f", {best_so_far(sweep)}" if best else ""
    extra = "".join(f", {c[s]} {s}" for s in ("failed", "diverged", "canceled", "pruned") if c.get(s))
    phase = sweep.get("phase")
    words = f" ({PHASE_WORDS[phase]})" if phase in PHASE_WORDS else ""
    line = (
        f"sweep {sweep['id']} {sweep['status']}{words}: {trials_done(sweep)}/{sweep['n_trials']} trials done"
    )
    line += f"{extra}, {epochs_text(sweep)}{b}"
    if sweep.get("duration_seconds") is not None:
        line += f", took {clock(sweep['duration_seconds'])}"
    elif sweep.get("elapsed_seconds") is not None:
        line += f", elapsed {clock(sweep['elapsed_seconds'])}"
        if sweep.get("eta_seconds") is not None:
            line += f", ETA {clock(sweep['eta_seconds'])}"
    return line


def table(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def exit_interrupted(sweep_id: int, message: str, as_json: bool) -> NoReturn:
    """Ctrl-C while a sweep goes on (``run``, ``submit --wait``): say where it stays and how to go on
    (also as JSON on stdout with ``--json``), exit 130."""
    if as_json:
        echo_json({"sweep_id": sweep_id, "error": message, "exit_code": EXIT_INTERRUPTED, "errors": []})
    click.echo(message, err=True)
    sys.exit(EXIT_INTERRUPTED)


def is_tty() -> bool:
    return sys.stderr.isatty()
