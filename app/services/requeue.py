"""Trials going back to the queue: released by their worker, or reaped when their lease expired.

Attempts are charged to the trial that is at fault, as far as the API can tell:

* shutdown (the worker is stopping): back to the queue, the attempt handed back;
* out of memory: retried, the attempt counts (a trial that fits nowhere fails after
  ``max_attempts``); the worker already split the pack in halves before giving one up;
* worker lost (the lease expired) with a pack of several trials: any one of them (or none:
  a kill, a crash, a reboot) may have cost the worker, so none is charged. They are requeued
  with the attempt handed back and ``max_pack`` set to half the lost pack: their next claims
  come in packs at most that large. A trial that kills its worker every time is thus alone
  after log2(pack size) losses, and then only it uses up its attempts;
* worker lost with the trial alone: the attempt counts; after ``max_attempts`` it fails.

Whenever a trial is requeued its summary metrics are cleared (they were an unfinished
attempt's); a trial that fails for good shows none either. Epoch rows are kept by attempt
(the curve of the last attempt stays visible), except for an attempt handed back: its
number is used again, so its rows go.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from itertools import groupby

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db import db_now, for_update_skip_locked
from app.models import Trial, TrialEpoch, TrialStatus, Worker, WorkerStatus
from app.services.leases import LOST_PREFIX, OUT_OF_MEMORY_PREFIX, Lease, LeaseState, clear_metrics, held
from app.services.sweeps import finalize_if_done
from app.services.workload import mark_work_queued

MAX_ERROR_CHARS = 20_000


class ReleaseReason(StrEnum):
    shutdown = "shutdown"  # the worker is stopping: back to the queue, no attempt used
    out_of_memory = "out_of_memory"  # retried (elsewhere or smaller), but the attempt counts


def _unclaim(t: Trial) -> None:
    t.lease_token = None
    t.lease_expires_at = None
    t.worker_id = None
    t.started_at = None


def _hand_back(session: Session, t: Trial) -> None:
    """Requeue ``t`` as if its last claim had not happened (its attempt number is used again)."""
    mark_work_queued(session)
    session.execute(delete(TrialEpoch).where(TrialEpoch.trial_id == t.id, TrialEpoch.attempt == t.attempt))
    _unclaim(t)
    clear_metrics(t)
    t.status = TrialStatus.queued
    t.attempt = max(0, t.attempt - 1)


def _charge(session: Session, t: Trial, why: str, now: datetime) -> bool:
    """Requeue ``t`` with its attempt used up, or fail it when it has none left; True: failed."""
    _unclaim(t)
    clear_metrics(t)
    if t.attempt >= t.max_attempts:
        t.status = TrialStatus.failed
        t.error = why[:MAX_ERROR_CHARS]
        t.finished_at = now
        return True
    t.status = TrialStatus.queued
    t.error = f"{why}; queued again"[:MAX_ERROR_CHARS]
    mark_work_queued(session)
    return False


def release(
    session: Session,
    leases: list[Lease],
    reason: ReleaseReason = ReleaseReason.shutdown,
    error: str | None = None,
) -> dict[int, LeaseState]:
    """Give trials back to the queue (fenced by the lease token).

    A shutdown does not use up an attempt; out of memory does, so a trial that cannot fit
    anywhere ends ``failed`` after ``max_attempts`` instead of bouncing forever.
    """
    now = db_now(session)
    trials = held(session, leases)
    finished: set[int] = set()
    for t in trials.values():
        if reason == ReleaseReason.shutdown:
            _hand_back(session, t)
            continue
        why = f"{OUT_OF_MEMORY_PREFIX} {t.attempt} of {t.max_attempts}" + (f": {error}" if error else "")
        if _charge(session, t, why, now):
            finished.add(t.sweep_id)
    session.flush()
    for sweep_id in sorted(finished):
        finalize_if_done(session, sweep_id)
    return {x.trial_id: LeaseState.ok if x.trial_id in trials else LeaseState.lost for x in leases}


def sign_off(session: Session, worker: Worker) -> list[int]:
    """The worker is stopping: it is no longer counted idle (``app.services.workload``), and the
    trials it still runs (a claim answered while it stopped) go back to the queue without using
    an attempt. Returns their ids."""
    worker.status = WorkerStatus.offline
    mark_work_queued(session)  # its own waiting claim (if any) wakes, sees it signed off and ends
    rows = session.scalars(
        select(Trial)
        .where(Trial.worker_id == worker.id, Trial.status == TrialStatus.running)
        .with_for_update()
    ).all()
    for t in rows:
        _hand_back(session, t)
    session.flush()
    return [t.id for t in rows]


def reap_expired(session: Session) -> int:
    """Requeue the packs whose lease expired (see the module's rules); returns the trials reaped.

    A pack is the trials of one claim (one lease token): when one of them has expired, every
    one still running under that token is reaped with it, so the pack is counted whole.
    """
    now = db_now(session)
    lock = for_update_skip_locked(session)
    tokens = set(
        session.scalars(
            select(Trial.lease_token)
            .where(Trial.status == TrialStatus.running, Trial.lease_expires_at < now)
            .with_for_update(**lock)
        ).all()
    )
    if not tokens:
        return 0
    rows = session.scalars(
        select(Trial)
        .where(Trial.status == TrialStatus.running, Trial.lease_token.in_(tokens))
        .order_by(Trial.lease_token, Trial.id)
        .with_for_update(**lock)
    ).all()
    failed_sweeps: set[int] = set()
    for _, group in groupby(rows, key=lambda t: t.lease_token):
        pack = list(group)
        if len(pack) > 1:
            smaller = len(pack) // 2
            for t in pack:
                lost_on = t.attempt
                _hand_back(session, t)
                t.max_pack = smaller
                t.error = (
                    f"worker lost with a pack of {len(pack)} trials on attempt {lost_on}: queued again "
                    f"without using an attempt, next in packs of at most {smaller}"
                )
            continue
        (t,) = pack
        why = f"{LOST_PREFIX} lease expired on attempt {t.attempt} of {t.max_attempts}"
        if _charge(session, t, why, now):
            failed_sweeps.add(t.sweep_id)
    session.flush()
    for sweep_id in sorted(failed_sweeps):
        finalize_if_done(session, sweep_id)
    return len(rows)


def extend_running_leases(session: Session, lease_seconds: float) -> int:
    """Give every running trial a fresh lease; returns how many were extended.

    Called once after the API could not reach the database (or has just started): the
    workers' heartbeats could not land meanwhile, so an expired lease then says nothing
    about its worker. A worker that is really gone is reaped one lease later.
    """
    now = db_now(session)
    result = session.execute(
        update(Trial)
        .where(
            Trial.status == TrialStatus.running,
            Trial.lease_expires_at < now + timedelta(seconds=lease_seconds),
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
