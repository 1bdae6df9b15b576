"""Parameter importance of a sweep's finished configs, by Optuna's PED-ANOVA (default) or fANOVA.

Each config that ranks (a seed succeeded, none diverged or was pruned) is one observation:
its parameters and the mean of the sweep's metric over its seeds, in a throwaway in-memory
study whose direction is the metric's goal (PED-ANOVA compares the best quantile with the
rest, so the goal decides which end is "good"). Grid values are categories; a search
sweep's distributions stay numeric. Parameters with one value are left out.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Sweep, Trial, TrialRole, TrialStatus
from app.search_spec import RANGES, stored_grids, varying_axes
from app.services.plots import value_order
from app.spec import AXES

EVALUATORS = ("ped_anova", "fanova")


def _scored(session: Session, sweep: Sweep) -> list[tuple[dict[str, Any], float]]:
    """(params, mean metric) of every config that ranks."""
    metric = getattr(Trial, sweep.metric_name)
    configs: dict[int, list[Any]] = {}
    for ci, params, status, value in session.execute(
        select(Trial.config_index, Trial.params, Trial.status, metric).where(
            Trial.sweep_id == sweep.id, Trial.role == TrialRole.search
        )
    ):
        configs.setdefault(ci, [params, [], False])
        if status == TrialStatus.succeeded and value is not None:
            configs[ci][1].append(value)
        elif status in (TrialStatus.diverged, TrialStatus.pruned):
            configs[ci][2] = True
    return [(p, statistics.fmean(v)) for _, (p, v, spoiled) in sorted(configs.items()) if v and not spoiled]


def param_importance(session: Session, sweep: Sweep, evaluator: str = "ped_anova") -> dict[str, Any]:
    """{evaluator, metric, goal, n_configs, importances: {param: share}} (shares sum to 1)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scored = _scored(session, sweep)
    out: dict[str, Any] = {
        "sweep_id": sweep.id,
        "evaluator": evaluator,
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "n_configs": len(scored),
        "importances": {},
    }
    grids = stored_grids(sweep.spec)
    ranges = grids[0] if len(grids) == 1 and sweep.spec.get("method", "grid") != "grid" else {}
    d = optuna.distributions
    dists: dict[str, Any] = {}
    for axis in varying_axes(sweep.spec, AXES):
        r = ranges.get(axis)
        if isinstance(r, dict) and axis in RANGES:
            log = r.get("distribution") == "log_uniform"
            cls = d.IntDistribution if axis in ("layers", "hidden_units") else d.FloatDistribution
            dists[axis] = cls(r["min"], r["max"], log=log)
            continue
        seen = sorted({json.dumps(p[axis]): p[axis] for p, _ in scored}.values(), key=value_order)
        if len(seen) > 1:
            dists[axis] = d.CategoricalDistribution([json.dumps(v) for v in seen])
    if len(scored) < 2 or not dists:
        return out
    study = optuna.create_study(direction=sweep.metric_goal)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={
                    a: json.dumps(p[a]) if isinstance(dist, d.CategoricalDistribution) else p[a]
                    for a, dist in dists.items()
                },
                distributions=dists,
                value=v,
            )
            for p, v in scored
        ]
    )
    ev = (
        optuna.importance.FanovaImportanceEvaluator(seed=0)
        if evaluator == "fanova"
        else optuna.importance.PedAnovaImportanceEvaluator()
    )
    shares = optuna.importance.get_param_importances(study, evaluator=ev, normalize=True)
    out["importances"] = {k: float(v) for k, v in shares.items()}
    return out
