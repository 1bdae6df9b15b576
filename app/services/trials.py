"""The trial lifecycle: claim, heartbeat, report, complete (release and reap: ``requeue``).

A claim is one short transaction that selects, locks and marks queued trials
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite). It
hands out a lease token; every later write about the trial is fenced by it: a
write with a stale token changes nothing and tells the worker the trial is lost.
Times come from the database clock so that several API hosts agree.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.db import db_now, for_update_skip_locked, insert_ignore
from app.models import Sweep, SweepStatus, Trial, TrialEpoch, TrialStatus, Worker, WorkerStatus
from app.services.leases import FINAL_COLUMNS, Lease, LeaseState, canceled_sweeps, clear_metrics
from app.services.leases import held as _held
from app.services.pruning import decide, prune_decided
from app.services.requeue import ReleaseReason, extend_running_leases, reap_expired, release
from app.services.sweeps import TEST_ROLES, finalize_if_done
from app.services.workload import fair_share, idle_others
from gridsweep.vocab import EPOCH_METRICS

__all__ = [  # release and reaping live in app.services.requeue; callers may use either module
    "Lease",
    "LeaseState",
    "ReleaseReason",
    "claim",
    "complete",
    "extend_running_leases",
    "heartbeat",
    "reap_expired",
    "register_worker",
    "release",
    "report_epochs",
]

CLAIM_ORDER = (Trial.priority, Trial.sweep_id, Trial.config_index, Trial.seed, Trial.id)


def register_worker(session: Session, name: str, hostname: str | None, device: str | None) -> Worker:
    w = Worker(
        id=str(uuid.uuid4()),
        name=name,
        hostname=hostname,
        device=device,
        status=WorkerStatus.online,
        last_heartbeat_at=db_now(session),
    )
    session.add(w)
    session.flush()
    return w


def claim(session: Session, worker: Worker, max_trials: int, lease_seconds: float) -> list[Trial]:
    """Claim up to ``max_trials`` queued trials of one pack (same sweep, same pack key).

    No trial is claimed in a pack larger than its ``max_pack`` (set when a pack it was in was
    lost): the head of the queue caps the pack, and only trials that allow that size join it.
    With other workers idle, the claim takes only its fair share of that pack
    (``app.services.workload``): a small sweep spreads over every worker.
    """
    now = db_now(session)
    worker.last_heartbeat_at = now
    worker.status = WorkerStatus.online
    lock = for_update_skip_locked(session)
    head = session.execute(
        select(Trial.id, Trial.sweep_id, Trial.pack_key, Trial.max_pack)
        .where(Trial.status == TrialStatus.queued)
        .order_by(*CLAIM_ORDER)
        .limit(1)
        .with_for_update(**lock)
    ).first()
    if head is None:
        return []
    size = min(max_trials, head.max_pack or max_trials)
    pack = (
        Trial.status == TrialStatus.queued,
        Trial.sweep_id == head.sweep_id,
        Trial.pack_key == head.pack_key,
        or_(Trial.max_pack.is_(None), Trial.max_pack >= size),
    )
    if size > 1 and (idle := idle_others(session, worker, now)):
        size = min(size, fair_share(session.scalar(select(func.count()).where(*pack)) or 0, idle))
    # Pick and lock the ids in a statement of their own. As a subquery of the UPDATE,
    # PostgreSQL may rescan it per row: each rescan skips the rows the UPDATE has just
    # changed and takes the next ones, so LIMIT stops limiting and one claim takes the pack.
    ids = session.scalars(
        select(Trial.id).where(*pack).order_by(*CLAIM_ORDER).limit(size).with_for_update(**lock)
    ).all()
    token = secrets.token_hex(16)
    trials = session.scalars(
        update(Trial)
        .where(Trial.id.in_(list(ids)), Trial.status == TrialStatus.queued)
        .values(
            status=TrialStatus.running,
            attempt=Trial.attempt + 1,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker_id=worker.id,
            device=worker.device,
            started_at=now,
            epochs_done=0,
            error=None,
        )
        .returning(Trial)
        .execution_options(synchronize_session=False)
    ).all()
    session.execute(
        update(Sweep)
        .where(Sweep.id == head.sweep_id, Sweep.status == SweepStatus.queued)
        .values(status=SweepStatus.running, started_at=now)
    )
    return sorted(trials, key=lambda t: (t.priority, t.config_index, t.seed, t.id))


def heartbeat(
    session: Session, worker: Worker, leases: list[Lease], lease_seconds: float
) -> dict[int, LeaseState]:
    """Extend the leases still held; say which trials are lost or canceled."""
    now = db_now(session)
    worker.last_heartbeat_at = now
    worker.status = WorkerStatus.online
    held = _held(session, leases)
    canceled = canceled_sweeps(session, list(held.values()))
    for t in held.values():
        t.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return {
        lease.trial_id: (
            LeaseState.lost
            if lease.trial_id not in held
            else LeaseState.cancel
            if held[lease.trial_id].sweep_id in canceled
            else LeaseState.ok
        )
        for lease in leases
    }


def report_epochs(
    session: Session, reports: list[dict[str, Any]], lease_seconds: float
) -> dict[int, LeaseState]:
    """Record per-epoch metrics (once per trial, attempt and epoch) and extend the leases."""
    now = db_now(session)
    held = _held(session, [Lease(r["trial_id"], r["lease_token"]) for r in reports])
    canceled = canceled_sweeps(session, list(held.values()))
    states: dict[int, LeaseState] = {}
    rows = []
    for r in reports:
        t = held.get(r["trial_id"])
        if t is None:
            states[r["trial_id"]] = LeaseState.lost
            continue
        rows.append(
            {
                "trial_id": t.id,
                "attempt": t.attempt,
                "epoch": r["epoch"],
                **{col: r.get(col) for col in EPOCH_METRICS},
                "created_at": now,
            }
        )
        if r["epoch"] >= t.epochs_done:
            t.epochs_done = r["epoch"]
            # While it runs, a trial shows its latest epoch; its outcome brings the selected one.
            for col in EPOCH_METRICS:
                setattr(t, col, r.get(col))
        t.lease_expires_at = now + timedelta(seconds=lease_seconds)
        states[t.id] = LeaseState.cancel if t.sweep_id in canceled else LeaseState.ok
    if rows:
        session.execute(insert_ignore(session, TrialEpoch.__table__), rows)
        # The sweep's pruner judges the epochs just stored (a canceled sweep's trials stop anyway).
        live = [t for t in held.values() if t.sweep_id not in canceled]
        for tid in decide(session, live, [r for r in reports if r["trial_id"] in held]):
            states[tid] = LeaseState.prune
    return states


OUTCOMES = (
    TrialStatus.succeeded,
    TrialStatus.failed,
    TrialStatus.diverged,
    TrialStatus.canceled,
    TrialStatus.pruned,
)


def complete(session: Session, outcomes: list[dict[str, Any]]) -> dict[int, LeaseState]:
    """End trials with their outcome; a stale lease changes nothing."""
    now = db_now(session)
    held = _held(session, [Lease(o["trial_id"], o["lease_token"]) for o in outcomes])
    states: dict[int, LeaseState] = {}
    touched: set[int] = set()
    # A worker that knows no `prune` stops a pruned trial as canceled: it ends pruned all the same.
    pruned = prune_decided(session, [o["trial_id"] for o in outcomes if o["status"] == TrialStatus.canceled])
    for o in outcomes:
        t = held.get(o["trial_id"])
        if t is None:
            states[o["trial_id"]] = LeaseState.lost
            continue
        t.status = TrialStatus.pruned if t.id in pruned else TrialStatus(o["status"])
        if t.status == TrialStatus.failed:  # an unfinished attempt's numbers would rank and sort
            clear_metrics(t)
        metrics = o.get("metrics") or {}
        for col in FINAL_COLUMNS:
            # Test numbers only for the final and refit trials: nobody can pick a config by test.
            if col in metrics and (not col.startswith("test_") or t.role in TEST_ROLES):
                setattr(t, col, metrics[col])
        for col in ("data_hash", "split", "versions"):  # what it takes to run the trial again
            if o.get(col) is not None:
                setattr(t, col, o[col])
        if o.get("epochs_done") is not None:
            t.epochs_done = o["epochs_done"]
        # The epoch whose numbers (and weights) the trial keeps, and where early stopping ended it.
        t.best_epoch = o.get("best_epoch")
        t.stopped_epoch = o.get("stopped_epoch")
        t.error = o.get("error")
        t.device = o.get("device") or t.device
        t.duration_seconds = o.get("duration_seconds")
        t.finished_at = now
        t.lease_token = None
        t.lease_expires_at = None
        states[t.id] = LeaseState.ok
        touched.add(t.sweep_id)
    session.flush()
    for sweep_id in sorted(touched):
        finalize_if_done(session, sweep_id)
    return states


def count_online_workers(session: Session, within_seconds: float) -> int:
    now = db_now(session)
    return (
        session.scalar(
            select(func.count())
            .select_from(Worker)
            .where(Worker.last_heartbeat_at >= now - timedelta(seconds=within_seconds))
        )
        or 0
    )
