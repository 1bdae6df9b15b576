"""The read side: a sweep, its best config and a trial's detail, queried and shaped as edge schemas."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from sqlalchemy.orm import Session

from app.models import Sweep, Trial, TrialRole, TrialStatus
from app.schemas import (
    BestRead,
    EpochRead,
    MetricRead,
    RungRead,
    SeedResult,
    SweepRead,
    TrialDetail,
    TrialRead,
)
from app.services.progress import SweepProgress, sweep_progress
from app.services.pruning import pruning_report, trial_rungs
from app.services.sweeps import METRIC_COLUMNS, TEST_COLUMNS, final_trials, leaderboard, trial_counts
from app.services.trial_queries import trial_epochs
from gridsweep.vocab import METRIC_LABELS, METRIC_UNITS, TIE_BREAKS

DONE = (
    TrialStatus.succeeded,
    TrialStatus.failed,
    TrialStatus.diverged,
    TrialStatus.canceled,
    TrialStatus.pruned,
)


def _metrics(t: Trial, cols: tuple[str, ...]) -> dict[str, float | None]:
    return {c: getattr(t, c) for c in cols if getattr(t, c) is not None}


def metric_read(sweep: Sweep) -> MetricRead:
    """The sweep's metric with its label, units, tie-break and epoch rule."""
    name = sweep.metric_name
    return MetricRead(
        name=name,
        goal=sweep.metric_goal,
        label=METRIC_LABELS.get(name),
        units=METRIC_UNITS.get(name),
        tie_break=TIE_BREAKS.get(name),
        select_epoch=sweep.spec.get("select_epoch") or "best",
        early_stopping=sweep.spec.get("early_stopping"),
    )


def best_read(session: Session, sweep: Sweep) -> BestRead | None:
    ranked = leaderboard(session, sweep, limit=1)
    if not ranked:
        return None
    best = ranked[0]
    means = {
        col: statistics.fmean(vals)
        for col in METRIC_COLUMNS
        if (vals := [getattr(t, col) for t in best.trials if getattr(t, col) is not None])
    }
    finals = [t for t in final_trials(session, sweep.id) if t.status == TrialStatus.succeeded]
    return BestRead(
        sweep_id=sweep.id,
        trial_id=best.trials[0].id,
        config_index=best.config_index,
        params=best.params,
        metric=metric_read(sweep),
        n_seeds=best.n_seeds,
        validation={
            "mean": best.mean,
            "std": best.std,
            "metrics_mean": means,
            "per_seed": [
                {
                    "seed": t.seed,
                    "trial_id": t.id,
                    "metrics": _metrics(t, METRIC_COLUMNS),
                    "best_epoch": t.best_epoch,
                    "stopped_epoch": t.stopped_epoch,
                }
                for t in best.trials
            ],
        },
        test=sweep.test_metrics or None,
        test_per_seed=[
            SeedResult(seed=t.seed, trial_id=t.id, metrics=_metrics(t, TEST_COLUMNS))
            for t in finals
            if t.role == TrialRole.final
        ],
        refit_test=sweep.refit_test_metrics or None,
        refit_per_seed=[
            SeedResult(seed=t.seed, trial_id=t.id, metrics=_metrics(t, TEST_COLUMNS))
            for t in finals
            if t.role == TrialRole.refit
        ],
    )


def sweep_read(
    session: Session,
    sweep: Sweep,
    counts: dict[str, int] | None = None,
    progress: SweepProgress | None = None,
    with_pruning: bool = True,
) -> SweepRead:
    """A sweep as the API shows it; ``with_pruning`` False (lists) leaves out the pruner's report."""
    counts = counts if counts is not None else trial_counts(session, [sweep.id])[sweep.id]
    progress = progress or sweep_progress(session, [sweep])[sweep.id]
    done = sum(counts.get(s, 0) for s in DONE)
    return SweepRead(
        **asdict(progress),
        id=sweep.id,
        name=sweep.name,
        dataset=sweep.dataset,
        status=sweep.status,
        n_trials=sweep.n_trials,
        metric=metric_read(sweep),
        counts=counts,
        progress=done / sweep.n_trials if sweep.n_trials else 1.0,
        best=best_read(session, sweep),
        error=sweep.error,
        method=sweep.method,
        pruning=pruning_report(session, sweep) if with_pruning else None,
        spec=sweep.spec,
        created_at=sweep.created_at,
        started_at=sweep.started_at,
        finished_at=sweep.finished_at,
    )


def trial_read(trial: Trial) -> TrialRead:
    """A trial as the API shows it, with its wall time (started to finished)."""
    read = TrialRead.model_validate(trial)
    if trial.started_at is not None and trial.finished_at is not None:
        read.wall_seconds = max(0.0, (trial.finished_at - trial.started_at).total_seconds())
    return read


def trial_detail(session: Session, trial: Trial) -> TrialDetail:
    base = trial_read(trial).model_dump()
    return TrialDetail(
        **base,
        epochs=[EpochRead.model_validate(e) for e in trial_epochs(session, trial)],
        rungs=[RungRead.model_validate(r) for r in trial_rungs(session, trial)],
    )
