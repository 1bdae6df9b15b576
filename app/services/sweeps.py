"""Sweeps: create from a spec, list, cancel, rank configs, finalize."""

from __future__ import annotations

import difflib
import hashlib
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import db_now
from app.models import (
    TERMINAL_TRIAL_STATUSES,
    Dataset,
    Sweep,
    SweepStatus,
    Trial,
    TrialRole,
    TrialStatus,
)
from app.services.datasets import check_builtin_split, check_split, find_dataset
from app.services.leases import LOST_PREFIX, OUT_OF_MEMORY_PREFIX
from app.services.workload import mark_sweep_ended, mark_work_queued
from app.spec import DataFacts, SpecError, SweepSpec, TrialRow, expand, validate_spec
from gridsweep.datasets import BUILTIN_DATASETS
from gridsweep.vocab import EPOCH_METRICS, TEST_METRICS, TIE_BREAKS

METRIC_COLUMNS = EPOCH_METRICS
TEST_COLUMNS = TEST_METRICS
FINAL_PRIORITY = 0  # final evaluations run before any search trial
# Roles evaluated on the test split, and roles a finished grid waits for (reruns are extra).
TEST_ROLES = (TrialRole.final, TrialRole.refit)


@dataclass(frozen=True)
class SpecDataset:
    """The dataset a spec names, resolved once: a built-in (``uploaded`` None) or an upload's row."""

    facts: DataFacts
    uploaded: Dataset | None = None


def resolve_dataset(session: Session, name: str) -> SpecDataset:
    """The dataset ``name`` stands for, or a SpecError at ``dataset``."""
    info = BUILTIN_DATASETS.get(name)
    if info is not None:
        return SpecDataset(DataFacts(task=info.task, n_classes=info.n_classes, n_features=info.n_features))
    uploaded = find_dataset(session, name)
    if uploaded is None:
        raise SpecError(
            [
                {
                    "loc": ("dataset",),
                    "msg": f"unknown dataset {name!r}{_did_you_mean(session, name)}: neither built-in "
                    f"({', '.join(sorted(BUILTIN_DATASETS))}) nor an uploaded dataset's id or name "
                    "(gridsweep dataset list, GET /api/v1/datasets)",
                }
            ]
        )
    facts = DataFacts(task=uploaded.task, n_classes=len(uploaded.classes), n_features=uploaded.n_features)
    return SpecDataset(facts, uploaded)


def _did_you_mean(session: Session, name: str) -> str:
    """`` (did you mean 'moons'?)`` when a built-in or uploaded name is close to ``name``."""
    names = [*BUILTIN_DATASETS, *session.scalars(select(Dataset.name).limit(1000))] if session else []
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dataset_facts(session: Session, name: str) -> DataFacts:
    """Task and classes of the dataset a spec names, or a SpecError at ``dataset``."""
    return resolve_dataset(session, name).facts


def create_sweep(session: Session, spec: SweepSpec, settings: Settings) -> Sweep:
    """Validate ``spec`` against its dataset and the limits, then store it and its trials."""
    ds = resolve_dataset(session, spec.dataset)  # once: the checks below and the row share it
    facts, uploaded = ds.facts, ds.uploaded
    n = validate_spec(spec, facts, settings.max_trials, settings.max_epochs, settings.max_parameters)
    if uploaded is not None:
        check_split(uploaded, spec.split)
    else:
        check_builtin_split(spec.dataset, spec.split)
    sweep = Sweep(
        name=spec.name or "",
        dataset=uploaded.name if uploaded is not None else spec.dataset,
        dataset_id=uploaded.id if uploaded is not None else None,
        status=SweepStatus.queued,
        spec=spec.model_dump(mode="json"),
        metric_name=spec.metric.name,
        metric_goal=spec.metric.goal,
        n_trials=n,
        method=spec.method,
        created_at=db_now(session),
    )
    session.add(sweep)
    session.flush()
    if not spec.name:  # a nameless spec: ``<dataset>-<id>``, in the stored spec too
        sweep.name = f"{sweep.dataset}-{sweep.id}"[:200]
        sweep.spec = {**sweep.spec, "name": sweep.name}
        session.flush()
    # Methods random / tpe / qmc expand to no row: their configs are suggested at claim time.
    insert_trials(session, sweep, expand(spec, facts), settings.max_attempts)
    return sweep


def insert_trials(session: Session, sweep: Sweep, rows: Iterable[TrialRow], max_attempts: int) -> int:
    """Store queued search trials of ``sweep``; returns how many."""
    now = db_now(session)
    dicts = [
        {
            "sweep_id": sweep.id,
            "role": TrialRole.search,
            "priority": 100,
            "config_index": r.config_index,
            "config_key": r.config_key,
            "pack_key": r.pack_key,
            "seed": r.seed,
            "params": r.params,
            "status": TrialStatus.queued,
            "attempt": 0,
            "max_attempts": max_attempts,
            "epochs_done": 0,
            "created_at": now,
        }
        for r in rows
    ]
    # Core bulk insert: one executemany instead of 10,000 ORM objects.
    for start in range(0, len(dicts), 1000):
        session.execute(insert(Trial), dicts[start : start + 1000])
    if dicts:
        mark_work_queued(session)
    return len(dicts)


def get_sweep(session: Session, sweep_id: int) -> Sweep | None:
    return session.get(Sweep, sweep_id)


def list_sweeps(session: Session, limit: int, offset: int) -> tuple[list[Sweep], int]:
    total = session.scalar(select(func.count()).select_from(Sweep)) or 0
    rows = session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def trial_counts(session: Session, sweep_ids: list[int]) -> dict[int, dict[str, int]]:
    """Search-trial counts by status for each sweep (every status present, zeros included)."""
    out = {sid: {s.value: 0 for s in TrialStatus} for sid in sweep_ids}
    if not sweep_ids:
        return out
    q = (
        select(Trial.sweep_id, Trial.status, func.count())
        .where(Trial.sweep_id.in_(sweep_ids), Trial.role == TrialRole.search)
        .group_by(Trial.sweep_id, Trial.status)
    )
    for sid, status, n in session.execute(q):
        out[sid][status] = n
    return out


@dataclass
class RankedConfig:
    config_index: int
    params: dict[str, Any]
    mean: float
    n_seeds: int
    trials: list[Trial] = field(default_factory=list)  # the succeeded seeds
    values: list[float] = field(default_factory=list)  # their metric, seed by seed

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0


def _mean_of(column: str) -> Any:
    """The mean of a metric over the succeeded trials of a group."""
    return func.avg(case((Trial.status == TrialStatus.succeeded, getattr(Trial, column))))


def refit_epochs(trials: list[Trial]) -> int | None:
    """How long a refit of a config trains: the median of its seeds' selected epochs (the higher
    middle value for an even count); None when no seed recorded one (it keeps its own epochs)."""
    epochs = [t.best_epoch for t in trials if t.best_epoch is not None]
    return statistics.median_high(epochs) if epochs else None


def leaderboard(session: Session, sweep: Sweep, limit: int = 10) -> list[RankedConfig]:
    """Configs ranked by the sweep's metric, mean over seeds, in SQL.

    A config ranks when at least one seed succeeded and none diverged (a diverged
    seed ranks the whole config last) or was pruned. A trial's value is its selected epoch's
    (``select_epoch``). Ties go to the tie-break metric (``val_error``: the lower mean
    ``val_log_loss``), then to the lower grid index.
    """
    mean = _mean_of(sweep.metric_name)
    n_ok = func.sum(case((Trial.status == TrialStatus.succeeded, 1), else_=0))
    # A diverged or pruned seed keeps its config out of the ranking.
    n_div = func.sum(case((Trial.status.in_([TrialStatus.diverged, TrialStatus.pruned]), 1), else_=0))
    order = [mean.asc() if sweep.metric_goal == "minimize" else mean.desc()]
    tie = TIE_BREAKS.get(sweep.metric_name)
    if tie is not None:
        order.append(_mean_of(tie).asc().nulls_last())
    q = (
        select(Trial.config_index, mean.label("mean"), n_ok.label("n"))
        .where(Trial.sweep_id == sweep.id, Trial.role == TrialRole.search)
        .group_by(Trial.config_index)
        .having(n_ok > 0, n_div == 0, mean.is_not(None))
        .order_by(*order, Trial.config_index.asc())
        .limit(limit)
    )
    ranked = [RankedConfig(ci, {}, float(m), int(n)) for ci, m, n in session.execute(q)]
    if not ranked:
        return []
    by_index = {r.config_index: r for r in ranked}
    trials = session.scalars(
        select(Trial)
        .where(
            Trial.sweep_id == sweep.id,
            Trial.role == TrialRole.search,
            Trial.status == TrialStatus.succeeded,
            Trial.config_index.in_(by_index),
        )
        .order_by(Trial.seed)
    ).all()
    for t in trials:
        r = by_index[t.config_index]
        r.params = t.params
        r.trials.append(t)
        r.values.append(getattr(t, sweep.metric_name))
    return ranked


def final_trials(session: Session, sweep_id: int) -> list[Trial]:
    return list(
        session.scalars(
            select(Trial)
            .where(Trial.sweep_id == sweep_id, Trial.role.in_(TEST_ROLES))
            .order_by(Trial.role, Trial.seed)
        ).all()
    )


def cancel_sweep(session: Session, sweep: Sweep) -> Sweep:
    """Cancel queued trials now; running ones are told to stop at their next report."""
    if sweep.status in (SweepStatus.succeeded, SweepStatus.failed, SweepStatus.canceled):
        return sweep
    now = db_now(session)
    session.execute(
        update(Trial)
        .where(Trial.sweep_id == sweep.id, Trial.status == TrialStatus.queued)
        .values(status=TrialStatus.canceled, finished_at=now, error="sweep canceled")
    )
    sweep.status = SweepStatus.canceled
    sweep.finished_at = now
    mark_sweep_ended(session)
    session.flush()
    return sweep


def _configs_to_suggest(session: Session, sweep: Sweep) -> bool:
    """A random / tpe / qmc sweep with configs still to suggest is not done, whatever is pending."""
    if sweep.method == "grid":
        return False
    made = session.scalar(
        select(func.count(func.distinct(Trial.config_index))).where(
            Trial.sweep_id == sweep.id, Trial.role == TrialRole.search
        )
    )
    return (made or 0) < sweep.n_trials // len(sweep.spec.get("seeds") or [0])


def _refit_pack_key(pack_key: str) -> str:
    return hashlib.sha256(f"{pack_key}:refit".encode()).hexdigest()[:32]


def exhausted_note(session: Session, sweep_id: int) -> str | None:
    """Which search trials failed because they ran out of attempts (worker lost, out of memory)."""
    ids = session.scalars(
        select(Trial.id)
        .where(
            Trial.sweep_id == sweep_id,
            Trial.role == TrialRole.search,
            Trial.status == TrialStatus.failed,
            or_(Trial.error.startswith(LOST_PREFIX), Trial.error.startswith(OUT_OF_MEMORY_PREFIX)),
        )
        .order_by(Trial.id)
    ).all()
    if not ids:
        return None
    shown = ", ".join(str(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    n = len(ids)
    return (
        f"{n} search trial{'s' if n > 1 else ''} ran out of attempts (worker lost or out of memory) "
        f"and failed: {shown}"
    )


def finalize_if_done(session: Session, sweep_id: int) -> None:
    """Move a sweep on once its trials are done: queue the test evaluation, then finish.

    Runs in the transaction that ended a trial: the final evaluation is queued (and a waiting
    claim woken, ``app.services.workload``) by the very request that ended the last search
    trial. The sweep row is locked first so that two trials ending at once cannot both queue it.
    """
    sweep = session.scalars(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).one()
    if sweep.status in (SweepStatus.succeeded, SweepStatus.failed, SweepStatus.canceled):
        return
    pending = session.scalar(
        select(func.count())
        .select_from(Trial)
        .where(
            Trial.sweep_id == sweep_id,
            Trial.status.not_in(TERMINAL_TRIAL_STATUSES),
            Trial.role != TrialRole.rerun,
        )
    )
    if pending or _configs_to_suggest(session, sweep):
        return
    now = db_now(session)
    finals = final_trials(session, sweep_id)
    ranked = leaderboard(session, sweep, limit=1)
    if ranked:
        # An extended sweep may have a new best: only the evaluations of the best config count.
        finals = [t for t in finals if t.config_index == ranked[0].config_index]
    if not finals:
        if not ranked:
            sweep.status = SweepStatus.failed
            sweep.error = "; ".join(filter(None, ["no trial succeeded", exhausted_note(session, sweep_id)]))
            sweep.finished_at = now
            mark_sweep_ended(session)
            return
        best = ranked[0]
        sweep.best_trial_id = best.trials[0].id
        sweep.test_metrics = sweep.refit_test_metrics = sweep.error = None
        # Final: the best config retrained per seed on the training split, scored on test; the
        # lowest seed's model is kept. Refit (spec.refit): the same on train + validation.
        roles = [TrialRole.final, TrialRole.refit] if sweep.spec.get("refit") else [TrialRole.final]
        # A refit has no validation split to pick an epoch by: it trains the config's best epoch count.
        n_refit = refit_epochs(best.trials)
        for role in roles:
            for t in best.trials:
                params = t.params
                if role == TrialRole.refit and n_refit is not None:
                    params = {**params, "epochs": n_refit}
                session.add(
                    Trial(
                        sweep_id=sweep.id,
                        role=role,
                        priority=FINAL_PRIORITY,
                        config_index=t.config_index,
                        config_key=t.config_key,
                        # Refit trials train on more rows: never packed with the others.
                        pack_key=t.pack_key if role == TrialRole.final else _refit_pack_key(t.pack_key),
                        seed=t.seed,
                        params=params,
                        status=TrialStatus.queued,
                        max_attempts=t.max_attempts,
                        created_at=now,
                    )
                )
        mark_work_queued(session)
        session.flush()
        return
    errors, missing = [], False
    for role, attr in ((TrialRole.final, "test_metrics"), (TrialRole.refit, "refit_test_metrics")):
        of_role = [t for t in finals if t.role == role]
        ok = [t for t in of_role if t.status == TrialStatus.succeeded]
        if ok:
            setattr(
                sweep,
                attr,
                {
                    col: statistics.fmean(getattr(t, col) for t in ok)
                    for col in TEST_COLUMNS
                    if all(getattr(t, col) is not None for t in ok)
                },
            )
        bad = [t for t in of_role if t.status != TrialStatus.succeeded]
        if bad:  # scores are the mean over the seeds that succeeded; say which did not
            label = "test evaluation" if role == TrialRole.final else "refit"
            errors.append(f"{label} failed: " + "; ".join(f"seed {t.seed}: {t.error}" for t in bad))
        missing = missing or bool(of_role and not ok)
    # Succeeded, but not plainly: say which trials of the grid were given up on.
    if (note := exhausted_note(session, sweep_id)) is not None:
        errors.insert(0, f"{note} (the best config is the best of the others)")
    if errors:
        sweep.error = "; ".join(errors)
    # The sweep promised a held-out test score of its best config (and a refit when asked): with
    # none, it failed (a CI gate must not pass), though its best config by validation stands.
    sweep.status = SweepStatus.failed if missing else SweepStatus.succeeded
    sweep.finished_at = now
    mark_sweep_ended(session)
