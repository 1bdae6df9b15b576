"""Leases: which of a worker's trials it still holds, and what a trial loses when it is requeued.

Every write about a running trial carries its lease token; ``held`` returns the trials whose
token is still current (row-locked), so a stale write changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Sweep, SweepStatus, Trial, TrialStatus
from gridsweep.vocab import EPOCH_METRICS, TEST_METRICS

# How a trial that ran out of attempts says why (set by app.services.requeue, counted at finalize).
LOST_PREFIX = "worker lost:"
OUT_OF_MEMORY_PREFIX = "out of memory on attempt"
# A trial's summary metrics: those of its latest attempt, or none.
FINAL_COLUMNS = (*EPOCH_METRICS, *TEST_METRICS)


class LeaseState(StrEnum):
    ok = "ok"  # carry on
    cancel = "cancel"  # the sweep was canceled: stop and report the trial canceled
    lost = "lost"  # the lease is gone (expired and reclaimed): drop the trial, write nothing
    prune = "prune"  # the sweep's pruner stopped it at this rung: stop and report it pruned


@dataclass(frozen=True)
class Lease:
    trial_id: int
    lease_token: str


def held(session: Session, leases: list[Lease]) -> dict[int, Trial]:
    """The trials among ``leases`` whose token is still current (row-locked)."""
    if not leases:
        return {}
    tokens = {lease.trial_id: lease.lease_token for lease in leases}
    rows = session.scalars(
        select(Trial).where(Trial.id.in_(tokens), Trial.status == TrialStatus.running).with_for_update()
    ).all()
    return {t.id: t for t in rows if t.lease_token is not None and t.lease_token == tokens[t.id]}


def canceled_sweeps(session: Session, trials: list[Trial]) -> set[int]:
    sweep_ids = {t.sweep_id for t in trials}
    if not sweep_ids:
        return set()
    return set(
        session.scalars(
            select(Sweep.id).where(Sweep.id.in_(sweep_ids), Sweep.status == SweepStatus.canceled)
        ).all()
    )


def clear_metrics(t: Trial) -> None:
    """Forget the summary metrics of an attempt that did not end (its epoch rows stay, by attempt)."""
    for col in FINAL_COLUMNS:
        setattr(t, col, None)
    t.best_epoch = t.stopped_epoch = None
    t.epochs_done = 0
