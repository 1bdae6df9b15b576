"""Deleting a sweep: refused while it is at work, else it goes with its trials, epochs and models."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.models import Sweep, SweepStatus, Trial, TrialRole, TrialStatus

LIVE = (SweepStatus.queued, SweepStatus.running)


class SweepBusy(Exception):
    """409: the sweep (or a rerun of one of its trials) is still at work."""


def delete_sweep(session: Session, sweep_id: int) -> bool:
    """Delete the sweep and everything of it (the database cascades: trials, their epochs, models,
    idempotency keys). False when there is no such sweep; ``SweepBusy`` while it is queued or
    running (cancel it first) or a rerun of it is. A canceled sweep's trials that are still
    stopping are let go: their worker is told the trial is lost at its next report."""
    sweep = session.scalars(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).one_or_none()
    if sweep is None:
        return False
    if sweep.status in LIVE:
        raise SweepBusy(
            f"sweep {sweep_id} is {sweep.status}: cancel it first "
            f"(POST /api/v1/sweeps/{sweep_id}/cancel, or gridsweep delete {sweep_id} --force)"
        )
    reruns = session.scalar(
        select(func.count())
        .select_from(Trial)
        .where(
            Trial.sweep_id == sweep_id,
            Trial.role == TrialRole.rerun,
            Trial.status.in_((TrialStatus.queued, TrialStatus.running)),
        )
    )
    if reruns:
        raise SweepBusy(f"sweep {sweep_id} has {reruns} rerun(s) queued or running; wait for them to end")
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))
    session.flush()
    return True
