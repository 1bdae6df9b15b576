"""Reruns: queue an identical copy of a finished trial (same params, seed, split and data).

A rerun is a new trial row (role ``rerun``) in the same sweep; it is not counted in the
grid's progress or ranking, never sees the test split and uploads no model. Its
``rerun_of`` is the original trial (a rerun of a rerun points at the original too).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import db_now
from app.models import TERMINAL_TRIAL_STATUSES, Sweep, SweepStatus, Trial, TrialRole, TrialStatus
from app.services.workload import mark_work_queued
from gridsweep.datasets import BUILTIN_DATASETS

RERUN_PRIORITY = 50  # after final evaluations, before the search trials of other sweeps


class RerunRefused(Exception):
    """409: the trial cannot be rerun now (still running, sweep canceled, data deleted)."""


def rerun_trial(session: Session, source: Trial, max_attempts: int) -> Trial:
    # Lock the sweep row: two reruns of one grid point at once get distinct rerun_index values.
    sweep = session.scalars(select(Sweep).where(Sweep.id == source.sweep_id).with_for_update()).one()
    if source.status not in TERMINAL_TRIAL_STATUSES:
        raise RerunRefused(f"trial {source.id} is {source.status}; rerun it once it has ended")
    if sweep.status == SweepStatus.canceled:
        raise RerunRefused(f"sweep {sweep.id} is canceled")
    if sweep.dataset_id is None and sweep.dataset not in BUILTIN_DATASETS:
        raise RerunRefused(f"the dataset {sweep.dataset!r} of sweep {sweep.id} was deleted")
    original = (
        session.get(Trial, source.rerun_of) if source.role == TrialRole.rerun and source.rerun_of else None
    )
    original = original or source
    last = session.scalar(
        select(func.max(Trial.rerun_index)).where(
            Trial.sweep_id == sweep.id,
            Trial.role == TrialRole.rerun,
            Trial.config_index == original.config_index,
            Trial.seed == original.seed,
        )
    )
    trial = Trial(
        sweep_id=sweep.id,
        role=TrialRole.rerun,
        priority=RERUN_PRIORITY,
        config_index=original.config_index,
        config_key=original.config_key,
        pack_key=original.pack_key,
        seed=original.seed,
        params=original.params,
        status=TrialStatus.queued,
        attempt=0,
        max_attempts=max_attempts,
        epochs_done=0,
        rerun_of=original.id,
        rerun_index=(last or 0) + 1,
        created_at=db_now(session),
    )
    session.add(trial)
    session.flush()
    mark_work_queued(session)
    return trial
