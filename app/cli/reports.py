"""The CI gate and its reports: verdict, JSON result, JUnit XML, Markdown summary.

Pure functions over the API's JSON (sweep, best, leaderboard, trials): no HTTP here,
so every report can be built from a saved result as well as from a live sweep.
"""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from app.cli.exit_codes import EXIT_MISSED, EXIT_OK, EXIT_TIMEOUT
from app.cli.output import fmt, varying_axes
from gridsweep.vocab import metric_units, rule_text


@dataclass(frozen=True)
class Gate:
    """Pass when ``fail_below <= best <= fail_above`` (either bound may be absent)."""

    metric: str | None  # None: the spec names none (the task's default, known once submitted)
    fail_above: float | None
    fail_below: float | None
    source: str  # the flags given, or "metric.threshold"

    @classmethod
    def resolve(
        cls, metric: dict[str, Any], fail_above: float | None, fail_below: float | None
    ) -> Gate | None:
        """The command line's bounds, else the spec's ``metric.threshold`` read with its goal."""
        if fail_above is not None or fail_below is not None:
            flags = [
                f for f, v in (("--fail-above", fail_above), ("--fail-below", fail_below)) if v is not None
            ]
            return cls(metric["name"], fail_above, fail_below, " ".join(flags))
        threshold = metric.get("threshold")
        if threshold is None:
            return None
        if metric.get("goal") == "maximize":
            return cls(metric["name"], None, float(threshold), "metric.threshold")
        return cls(metric["name"], float(threshold), None, "metric.threshold")

    def check(self, value: float) -> tuple[bool, str]:
        if self.fail_above is not None and value > self.fail_above:
            return False, f"best {self.metric} {value:.6g} is above {self.fail_above:g} ({self.source})"
        if self.fail_below is not None and value < self.fail_below:
            return False, f"best {self.metric} {value:.6g} is below {self.fail_below:g} ({self.source})"
        bounds = [
            *([f">= {self.fail_below:g}"] if self.fail_below is not None else []),
            *([f"<= {self.fail_above:g}"] if self.fail_above is not None else []),
        ]
        return True, f"best {self.metric} {value:.6g} is {' and '.join(bounds)} ({self.source})"


@dataclass(frozen=True)
class Verdict:
    code: int
    outcome: str  # met, missed, succeeded (no gate), failed, canceled, timeout
    message: str

    @property
    def ok(self) -> bool:
        return self.code == EXIT_OK


def best_value(sweep: dict[str, Any]) -> float | None:
    best = sweep.get("best")
    return None if best is None else float(best["validation"]["mean"])


def evaluate(sweep: dict[str, Any], gate: Gate | None, timed_out: bool, timeout: float | None) -> Verdict:
    """The exit code and the one-line reason, from the sweep as the API last showed it."""
    sid = sweep["id"]
    if gate is not None and gate.metric is None:  # the spec named none: the task's default
        gate = replace(gate, metric=_metric(sweep))
    if timed_out:
        c = sweep["counts"]
        done = sum(c.get(s, 0) for s in ("succeeded", "failed", "diverged", "canceled", "pruned"))
        progress = f"{done}/{sweep['n_trials']} trials done"
        return Verdict(
            EXIT_TIMEOUT, "timeout", f"sweep {sid} still {sweep['status']} after {timeout:g}s ({progress})"
        )
    if sweep["status"] in ("failed", "canceled"):
        reason = f": {sweep['error']}" if sweep.get("error") else ""
        return Verdict(EXIT_MISSED, sweep["status"], f"sweep {sid} {sweep['status']}{reason}")
    value = best_value(sweep)
    if value is None:
        return Verdict(EXIT_MISSED, "failed", f"sweep {sid} {sweep['status']} without a best config")
    # A succeeded sweep may still have given up on trials (out of attempts): say so.
    note = f" (note: {sweep['error']})" if sweep.get("error") else ""
    if gate is None:
        return Verdict(
            EXIT_OK,
            "succeeded",
            f"sweep {sid} succeeded (no gate), best {_metric(sweep)} {value:.6g} "
            f"({metric_units(_metric(sweep))}){note}",
        )
    met, why = gate.check(value)
    return Verdict(
        EXIT_OK if met else EXIT_MISSED,
        "met" if met else "missed",
        f"gate {'met' if met else 'missed'}: {why} ({metric_units(gate.metric)}){note}",
    )


def _metric(sweep: dict[str, Any]) -> str:
    return sweep["metric"]["name"]


def result_json(
    sweep: dict[str, Any],
    verdict: Verdict,
    gate: Gate | None,
    leaderboard: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The machine-readable result (``--json`` of ``submit --wait`` and of ``run``: one shape)."""
    return {
        "sweep_id": sweep["id"],
        "name": sweep["name"],
        "status": sweep["status"],
        "verdict": verdict.outcome,
        "exit_code": verdict.code,
        "message": verdict.message,
        "gate": asdict(gate) if gate else None,
        "metric": sweep["metric"],
        "best_value": best_value(sweep),
        "best": sweep.get("best"),
        "leaderboard": leaderboard,
        "counts": sweep["counts"],
        "n_trials": sweep["n_trials"],
        "sweep": sweep,
        **extra,
    }


# --- JUnit ----------------------------------------------------------------------------


def params_label(params: dict[str, Any], axes: list[str]) -> str:
    keys = axes or list(params)
    return " ".join(f"{k}={fmt(params.get(k))}" for k in keys)


def group_configs(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Search trials grouped by grid point, in grid order."""
    by_index: dict[int, dict[str, Any]] = {}
    for t in trials:
        c = by_index.setdefault(
            t["config_index"], {"config_index": t["config_index"], "params": t["params"], "trials": []}
        )
        c["trials"].append(t)
    return [by_index[i] for i in sorted(by_index)]


def junit_xml(
    sweep: dict[str, Any],
    trials: list[dict[str, Any]],
    verdict: Verdict,
    leaderboard: list[dict[str, Any]],
    elapsed_seconds: float,
) -> str:
    """One ``<testcase>`` per config (the best one carries ``best=true``); the gate's
    failure, if any, is a ``<failure>`` on the best config (or on a ``sweep`` case when
    there is no best)."""
    metric = _metric(sweep)
    axes = varying_axes(sweep["spec"])
    best = sweep.get("best")
    best_index = best["config_index"] if best else None
    ranks = {e["config_index"]: e["rank"] for e in leaderboard}
    suite_name = f"gridsweep sweep {sweep['id']} {sweep['name']}"
    classname = f"gridsweep.{_safe(sweep['name'])}"
    cases: list[ET.Element] = []
    for c in group_configs(trials):
        ok = [t[metric] for t in c["trials"] if t["status"] == "succeeded" and t.get(metric) is not None]
        case = ET.Element(
            "testcase",
            name=f"config {c['config_index']}: {params_label(c['params'], axes)}",
            classname=classname,
            time=f"{sum(t.get('duration_seconds') or 0.0 for t in c['trials']):.3f}",
        )
        props = ET.SubElement(case, "properties")
        statuses = ",".join(
            f"seed {t['seed']}: {t['status']}" for t in sorted(c["trials"], key=lambda t: t["seed"])
        )
        for name, value in (
            (f"{metric}_mean", f"{statistics.fmean(ok):.6g}" if ok else ""),
            ("rank", str(ranks.get(c["config_index"], ""))),
            ("best", "true" if c["config_index"] == best_index else "false"),
            ("seeds", statuses),
        ):
            ET.SubElement(props, "property", name=name, value=value)
        lines = [
            f"seed {t['seed']} trial {t['id']}: {t['status']}, {metric}={t.get(metric)}"
            + (f" at epoch {t['best_epoch']}" if t.get("best_epoch") else "")
            + (f" (stopped early after epoch {t['stopped_epoch']})" if t.get("stopped_epoch") else "")
            for t in c["trials"]
        ]
        if c["config_index"] == best_index:
            lines.insert(0, f"BEST CONFIG of sweep {sweep['id']} by {metric} ({metric_units(metric)})")
            if not verdict.ok:
                ET.SubElement(
                    case, "failure", type=verdict.outcome, message=verdict.message
                ).text = verdict.message
        ET.SubElement(case, "system-out").text = "\n".join(lines)
        cases.append(case)
    if best_index is None and not verdict.ok:
        case = ET.Element("testcase", name="sweep result", classname=classname, time="0")
        ET.SubElement(case, "failure", type=verdict.outcome, message=verdict.message).text = verdict.message
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    root = ET.Element("testsuites", name="gridsweep", tests=str(len(cases)), failures=str(failures))
    suite = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{elapsed_seconds:.3f}",
        timestamp=datetime.now(UTC).replace(microsecond=0).isoformat(),
    )
    sprops = ET.SubElement(suite, "properties")
    for name, value in (
        ("verdict", verdict.outcome),
        ("message", verdict.message),
        ("metric", metric),
        ("metric_units", metric_units(metric)),
        ("ranking", rule_text(sweep["metric"])),
    ):
        ET.SubElement(sprops, "property", name=name, value=value)
    suite.extend(cases)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# --- Markdown ---------------------------------------------------------------------------

_ICON = {"met": "✅", "succeeded": "✅", "missed": "❌", "failed": "❌", "canceled": "❌", "timeout": "⏱️"}


def summary_markdown(sweep: dict[str, Any], verdict: Verdict, leaderboard: list[dict[str, Any]]) -> str:
    """A Markdown section for ``$GITHUB_STEP_SUMMARY``: verdict, top configs, the best config."""
    metric = _metric(sweep)
    axes = varying_axes(sweep["spec"]) or ["layers", "hidden_units", "learning_rate"]
    c = sweep["counts"]
    counts = ", ".join(f"{n} {s}" for s, n in c.items() if n)
    icon = _ICON.get(verdict.outcome, "")
    lines = [
        f"### gridsweep: sweep {sweep['id']} `{sweep['name']}` {icon} {verdict.outcome}",
        "",
        f"{verdict.message}",
        "",
        f"{sweep['n_trials']} trials on `{sweep['dataset']}`: {counts or 'none finished'}.",
        "",
    ]
    if leaderboard:
        best_index = (sweep.get("best") or {}).get("config_index")
        lines += [
            "| rank | " + " | ".join(axes) + f" | {metric} (mean ± std; {metric_units(metric)}) | seeds |",
            "|---|" + "---|" * len(axes) + "---|---|",
        ]
        for e in leaderboard:
            mark = " 🏆 best" if e["config_index"] == best_index else ""
            cells = [f"{e['rank']}{mark}", *(fmt(e["params"].get(a)) for a in axes)]
            cells += [f"{e['mean']:.4f} ± {e['std']:.4f}", str(e["n_seeds"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", rule_text(sweep["metric"]) + ".", ""]
    best = sweep.get("best")
    if best:
        params = ", ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
        lines.append(
            f"**Best config** (trial {best['trial_id']}, grid point {best['config_index']}): {params}"
        )
        if best.get("test"):
            lines.append("")
            shown = ", ".join(f"{k} {v:.4f} ({metric_units(k)})" for k, v in best["test"].items())
            lines.append("Held-out test: " + shown)
        lines.append("")
    return "\n".join(lines) + "\n"


def github_escape(message: str) -> str:
    """Escape a workflow command's message (``%``, CR and LF)."""
    return message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_error(verdict: Verdict) -> str:
    return f"::error title=gridsweep {verdict.outcome}::{github_escape(verdict.message)}"
