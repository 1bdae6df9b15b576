"""Read-side queries behind the dashboard's lists: sweeps with their best so far, workers, a
sweep's pulse (what changed since the last poll), and a page of the trials table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from app.db import db_now
from app.models import TERMINAL_TRIAL_STATUSES, Sweep, Trial, TrialRole, TrialStatus, Worker
from app.services.sweeps import list_sweeps
from app.services.trial_queries import list_trials
from gridsweep.vocab import METRICS


@dataclass
class Pulse:
    """A sweep's counts by status (search trials) and a token that changes whenever a trial moves."""

    counts: dict[str, int]
    done: int
    version: str


def sweep_pulse(session: Session, sweep: Sweep) -> Pulse:
    """Counts by status in one query; the version also covers epochs and the final evaluation."""
    rows = session.execute(
        select(Trial.role, Trial.status, func.count(), func.coalesce(func.sum(Trial.epochs_done), 0))
        .where(Trial.sweep_id == sweep.id)
        .group_by(Trial.role, Trial.status)
        .order_by(Trial.role, Trial.status)
    ).all()
    counts = {s.value: 0 for s in TrialStatus}
    for role, status, n, _ in rows:
        if role == TrialRole.search:
            counts[status] = n
    done = sum(counts[s] for s in TERMINAL_TRIAL_STATUSES)
    version = sweep.status + ";" + ";".join(f"{r}:{s}:{n}:{e}" for r, s, n, e in rows)
    return Pulse(counts=counts, done=done, version=version)


@dataclass
class SweepRow:
    sweep: Sweep
    counts: dict[str, int]
    done: int
    best: float | None


# A diverged or pruned seed keeps its config out of the ranking (as in the leaderboard).
UNRANKED = (TrialStatus.diverged, TrialStatus.pruned)


def sweep_rows(session: Session, limit: int, offset: int) -> tuple[list[SweepRow], int]:
    """A page of sweeps, newest first, with counts by status and the best config mean so far.

    Two aggregate queries for the whole page: counts, and per sweep the best config mean
    (configs with a diverged seed do not rank, as in the leaderboard).
    """
    sweeps, total = list_sweeps(session, limit, offset)
    ids = [s.id for s in sweeps]
    counts = {sid: {s.value: 0 for s in TrialStatus} for sid in ids}
    best: dict[int, tuple[float | None, float | None]] = {}
    if ids:
        search = and_(Trial.sweep_id.in_(ids), Trial.role == TrialRole.search)
        for sid, status, n in session.execute(
            select(Trial.sweep_id, Trial.status, func.count())
            .where(search)
            .group_by(Trial.sweep_id, Trial.status)
        ):
            counts[sid][status] = n
        # Each sweep ranks by its own metric column.
        metric = case(
            *((Sweep.metric_name == m, getattr(Trial, m)) for m in METRICS if m != "val_loss"),
            else_=Trial.val_loss,
        )
        per_config = (
            select(
                Trial.sweep_id,
                func.avg(case((Trial.status == TrialStatus.succeeded, metric))).label("mean"),
                func.sum(case((Trial.status == TrialStatus.succeeded, 1), else_=0)).label("n_ok"),
                func.sum(case((Trial.status.in_(UNRANKED), 1), else_=0)).label("n_div"),
            )
            .join(Sweep, Sweep.id == Trial.sweep_id)
            .where(search)
            .group_by(Trial.sweep_id, Trial.config_index)
            .subquery()
        )
        for sid, lo, hi in session.execute(
            select(per_config.c.sweep_id, func.min(per_config.c.mean), func.max(per_config.c.mean))
            .where(per_config.c.n_ok > 0, per_config.c.n_div == 0)
            .group_by(per_config.c.sweep_id)
        ):
            best[sid] = (lo, hi)
    rows = []
    for s in sweeps:
        lo, hi = best.get(s.id, (None, None))
        value = lo if s.metric_goal == "minimize" else hi
        c = counts[s.id]
        done = sum(c[t] for t in TERMINAL_TRIAL_STATUSES)
        rows.append(SweepRow(s, c, done, None if value is None else float(value)))
    return rows, total


@dataclass
class HeldTrial:
    trial_id: int
    sweep_id: int
    sweep_name: str
    role: str
    epochs_done: int
    epochs: int | None
    started_at: datetime | None


@dataclass
class WorkerRow:
    worker: Worker
    seconds_since_heartbeat: float | None
    online: bool
    trials: list[HeldTrial] = field(default_factory=list)


def worker_rows(session: Session, stale_after_seconds: float) -> list[WorkerRow]:
    """Registered workers, most recently seen first, with the running trials each holds.

    A worker is shown online while its last heartbeat is younger than ``stale_after_seconds``.
    """
    now = db_now(session)
    workers = session.scalars(
        select(Worker).order_by(Worker.last_heartbeat_at.desc().nulls_last(), Worker.name)
    ).all()
    out: dict[str, WorkerRow] = {}
    for w in workers:
        age = (now - w.last_heartbeat_at).total_seconds() if w.last_heartbeat_at else None
        online = age is not None and age <= stale_after_seconds
        out[w.id] = WorkerRow(w, age, online)
    held = session.execute(
        select(
            Trial.worker_id,
            Trial.id,
            Trial.sweep_id,
            Sweep.name,
            Trial.role,
            Trial.epochs_done,
            Trial.params,
            Trial.started_at,
        )
        .join(Sweep, Sweep.id == Trial.sweep_id)
        .where(Trial.status == TrialStatus.running, Trial.worker_id.is_not(None))
        .order_by(Trial.id)
    )
    for wid, tid, sid, name, role, done, params, started in held:
        if wid in out:
            epochs = params.get("epochs") if isinstance(params, dict) else None
            out[wid].trials.append(HeldTrial(tid, sid, name, role, done, epochs, started))
    return list(out.values())


@dataclass
class TrialPage:
    trials: list[Trial]
    total: int
    worker_names: dict[str, str]


def trial_page(
    session: Session,
    sweep: Sweep,
    *,
    status: list[str] | None,
    sort: str,
    order: str,
    limit: int,
    offset: int,
) -> TrialPage:
    """One page of the trials table (``sort``: a column, ``params.<axis>`` or ``metric``) and the
    names of the workers on it."""
    column = sweep.metric_name if sort == "metric" else sort
    trials, total = list_trials(
        session, sweep.id, status=status, sort=column, order=order, limit=limit, offset=offset
    )
    worker_ids = {t.worker_id for t in trials if t.worker_id}
    names: dict[str, Any] = {}
    if worker_ids:
        names = dict(session.execute(select(Worker.id, Worker.name).where(Worker.id.in_(worker_ids))).all())
    return TrialPage(trials, total, names)
