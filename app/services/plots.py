"""Read-side queries behind the sweep plots: learning curves, completion order, heatmap, configs.

Each returns plain data (lists and dicts, columnar where a sweep can have 10,000 rows)
that the API hands to the dashboard as JSON. Aggregation happens in SQL.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from app.db import json_key_text
from app.models import Sweep, Trial, TrialEpoch, TrialRole, TrialStatus
from app.search_spec import varying_axes
from app.services.sweeps import leaderboard
from app.spec import AXES
from gridsweep.vocab import metric_units

# Trials that ended on their own (canceled ones say nothing about the grid).
FINISHED = (TrialStatus.succeeded, TrialStatus.failed, TrialStatus.diverged, TrialStatus.pruned)


def grid_axes(sweep: Sweep) -> list[str]:
    """The parameters the sweep varies (several values, a distribution, sub-grids that differ), in order."""
    return varying_axes(sweep.spec, AXES)


def value_order(value: Any) -> tuple[int, Any]:
    """A sort key over mixed parameter values: numbers, then per-layer lists, then text."""
    if isinstance(value, bool):
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, value)
    if isinstance(value, list):
        return (1, (len(value), value))
    return (2, str(value))


def _distinct(values: list[Any]) -> list[Any]:
    """Distinct values (lists included) in ``value_order``."""
    return sorted({json.dumps(v): v for v in values}.values(), key=value_order)


def _search(sweep: Sweep) -> list[Any]:
    return [Trial.sweep_id == sweep.id, Trial.role == TrialRole.search]


def _config_stats(sweep: Sweep) -> tuple[Any, Any, Any]:
    """Per-config aggregates (use under GROUP BY config_index): mean metric, #succeeded, #diverged
    (pruned seeds count with the diverged: neither config ranks)."""
    metric = getattr(Trial, sweep.metric_name)
    mean = func.avg(case((Trial.status == TrialStatus.succeeded, metric)))
    n_ok = func.sum(case((Trial.status == TrialStatus.succeeded, 1), else_=0))
    n_div = func.sum(case((Trial.status.in_([TrialStatus.diverged, TrialStatus.pruned]), 1), else_=0))
    return mean, n_ok, n_div


def learning_curves(session: Session, sweep: Sweep, top: int = 10) -> dict[str, Any]:
    """The sweep's metric (and val_loss) per epoch of every seed of the ``top`` configs (the
    leaderboard's), best first, then of up to ``top`` running search trials (``rank`` None):
    their curves grow as epochs arrive.

    The curves of all those trials come from one query (their latest attempt only).
    """
    ranked = leaderboard(session, sweep, limit=top)
    trials: list[tuple[int | None, int, Trial]] = [
        (rank, r.config_index, t) for rank, r in enumerate(ranked, start=1) for t in r.trials
    ]
    running = session.scalars(
        select(Trial)
        .where(*_search(sweep), Trial.status == TrialStatus.running, Trial.epochs_done > 0)
        .order_by(Trial.epochs_done.desc(), Trial.id)
        .limit(top)
    ).all()
    trials += [(None, t.config_index, t) for t in running]
    points: dict[int, list[tuple[Any, ...]]] = {t.id: [] for _, _, t in trials}
    if trials:
        value = getattr(TrialEpoch, sweep.metric_name)
        rows = session.execute(
            select(TrialEpoch.trial_id, TrialEpoch.epoch, TrialEpoch.val_loss, TrialEpoch.train_loss, value)
            .join(Trial, and_(Trial.id == TrialEpoch.trial_id, Trial.attempt == TrialEpoch.attempt))
            .where(TrialEpoch.trial_id.in_(list(points)))
            .order_by(TrialEpoch.trial_id, TrialEpoch.epoch)
        )
        for trial_id, epoch, val_loss, train_loss, v in rows:
            points[trial_id].append((epoch, val_loss, train_loss, v))
    return {
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "units": metric_units(sweep.metric_name),
        "best_trial_ids": [t.id for t in ranked[0].trials] if ranked else [],
        "trials": [
            {
                "trial_id": t.id,
                "rank": rank,
                "status": t.status,
                "config_index": config_index,
                "seed": t.seed,
                "params": t.params,
                "value": getattr(t, sweep.metric_name),
                "epochs_planned": t.params.get("epochs"),
                "epochs": [p[0] for p in points[t.id]],
                "val_loss": [p[1] for p in points[t.id]],
                "train_loss": [p[2] for p in points[t.id]],
                "values": [p[3] for p in points[t.id]],
                "best_epoch": t.best_epoch,
                "stopped_epoch": t.stopped_epoch,
            }
            for rank, config_index, t in trials
        ],
    }


def completion_history(session: Session, sweep: Sweep) -> dict[str, Any]:
    """Finished search trials in completion order, each with its metric and the best so far."""
    metric = getattr(Trial, sweep.metric_name)
    rows = session.execute(
        select(Trial.id, Trial.status, metric)
        .where(*_search(sweep), Trial.status.in_(FINISHED))
        .order_by(Trial.finished_at.asc().nulls_last(), Trial.id)
    ).all()
    better = min if sweep.metric_goal == "minimize" else max
    best: float | None = None
    best_so_far: list[float | None] = []
    values: list[float | None] = []
    for _, status, value in rows:
        ok = status == TrialStatus.succeeded and value is not None
        values.append(value if ok else None)
        if ok:
            best = value if best is None else better(best, value)
        best_so_far.append(best)
    return {
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "trial_ids": [r[0] for r in rows],
        "status": [r[1] for r in rows],
        "value": values,
        "best_so_far": best_so_far,
    }


def heatmap(session: Session, sweep: Sweep, x: str, y: str) -> dict[str, Any]:
    """The metric over two parameters: per cell, the best config mean over every other parameter.

    A config counts when a seed succeeded and none diverged (as in the leaderboard);
    a cell without one has ``value`` None and says how many of its configs diverged.
    """
    if x not in AXES or y not in AXES or x == y:
        raise ValueError(f"heatmap axes must be two different parameters of {AXES}")
    mean, n_ok, n_div = _config_stats(sweep)
    xk = json_key_text(session, Trial.params, x).label("xk")
    yk = json_key_text(session, Trial.params, y).label("yk")
    per_config = (
        select(Trial.config_index, xk, yk, mean.label("mean"), n_ok.label("n_ok"), n_div.label("n_div"))
        .where(*_search(sweep))
        .group_by(Trial.config_index, xk, yk)
        .subquery()
    )
    ranked = and_(per_config.c.n_ok > 0, per_config.c.n_div == 0)
    agg = func.min if sweep.metric_goal == "minimize" else func.max
    rows = session.execute(
        select(
            per_config.c.xk,
            per_config.c.yk,
            agg(case((ranked, per_config.c.mean))),
            func.count(),
            func.sum(case((ranked, 1), else_=0)),
            func.sum(case((per_config.c.n_div > 0, 1), else_=0)),
        ).group_by(per_config.c.xk, per_config.c.yk)
    ).all()
    cells = [(json.loads(xv), json.loads(yv), best, n, ok, div) for xv, yv, best, n, ok, div in rows]
    xs = _distinct([c[0] for c in cells])
    ys = _distinct([c[1] for c in cells])
    xi = {json.dumps(v): i for i, v in enumerate(xs)}
    yi = {json.dumps(v): i for i, v in enumerate(ys)}
    return {
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "x": x,
        "y": y,
        "x_values": xs,
        "y_values": ys,
        "cells": [
            {
                "x": xi[json.dumps(c[0])],
                "y": yi[json.dumps(c[1])],
                "value": None if c[2] is None else float(c[2]),
                "n_configs": int(c[3]),
                "n_ranked": int(c[4] or 0),
                "n_diverged": int(c[5] or 0),
            }
            for c in cells
        ],
    }


def config_scores(session: Session, sweep: Sweep, limit: int = 2000) -> dict[str, Any]:
    """The best ``limit`` configs with their grid parameters and mean metric (parallel coordinates).

    Columnar: ``axes`` names the varied parameters; ``params[i]`` holds config i's values in
    that order. Diverged configs are counted, not drawn (they have no score).
    """
    axes = grid_axes(sweep)
    mean, n_ok, n_div = _config_stats(sweep)
    order = mean.asc() if sweep.metric_goal == "minimize" else mean.desc()
    stats = session.execute(
        select(Trial.config_index, mean, n_ok, n_div)
        .where(*_search(sweep))
        .group_by(Trial.config_index)
        .order_by(order.nulls_last(), Trial.config_index)
    ).all()
    scored = [(ci, float(m)) for ci, m, ok, div in stats if ok and not div and m is not None]
    shown = scored[:limit]
    params: dict[int, dict[str, Any]] = {}
    if shown:
        # One trial per config carries its params: the lowest seed's (every seed has the same).
        first_seed = min(sweep.spec.get("seeds") or [0])
        for ci, p in session.execute(
            select(Trial.config_index, Trial.params).where(
                *_search(sweep), Trial.seed == first_seed, Trial.config_index.in_([c for c, _ in shown])
            )
        ):
            params[ci] = p
    rows = [[params.get(ci, {}).get(a) for a in axes] for ci, _ in shown]
    return {
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "axes": axes,
        "axis_values": [_distinct([r[i] for r in rows]) for i in range(len(axes))],
        "config_index": [ci for ci, _ in shown],
        "params": rows,
        "value": [m for _, m in shown],
        "n_configs": len(stats),
        "n_scored": len(scored),
        "n_diverged": sum(1 for _, _, _, div in stats if div),
    }
