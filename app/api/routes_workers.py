"""The worker protocol: register, claim, heartbeat, report epochs, complete, release.

Every write about a trial carries its lease token; the answer says per trial
whether to go on (``ok``), stop because the sweep was canceled (``cancel``) or
drop it because the lease was lost (``lost``).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import (
    ERROR_RESPONSES,
    DatabaseDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    WorkerIdPath,
)
from app.api.long_poll import long_poll
from app.auth import require
from app.config import Settings
from app.models import Sweep, TokenScope, Trial, TrialStatus, Worker, WorkerStatus
from app.schemas import (
    MAX_CLAIM_WAIT_SECONDS,
    ClaimedTrial,
    ClaimRequest,
    ClaimResponse,
    CompleteRequest,
    EpochsRequest,
    LeasesRequest,
    LeaseStates,
    ReleaseRequest,
    WorkerCreate,
    WorkerRead,
)
from app.services import requeue, search
from app.services import trials as trial_service
from app.services.artifacts import claim_plans

log = logging.getLogger("gridsweep.api")

# Worker tokens may use the protocol (POST) and nothing else; listing workers is a read.
router = APIRouter(
    prefix="/api/v1/workers",
    tags=["workers"],
    dependencies=[require(write=TokenScope.worker)],
    responses=ERROR_RESPONSES,
)


def _worker_or_404(session: Session, worker_id: str, lock: bool = False) -> Worker:
    worker = session.get(Worker, worker_id, with_for_update=lock)
    if worker is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"worker {worker_id} not registered")
    return worker


def _leases(req: LeasesRequest) -> list[trial_service.Lease]:
    return [trial_service.Lease(x.trial_id, x.lease_token) for x in req.leases]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkerRead)
def register(body: WorkerCreate, session: SessionDep, settings: SettingsDep) -> WorkerRead:
    """Register a worker; the answer carries the lease and heartbeat periods."""
    w = trial_service.register_worker(session, body.name, body.hostname, body.device)
    out = WorkerRead.model_validate(w)
    out.lease_seconds = settings.lease_seconds
    out.heartbeat_seconds = settings.heartbeat_seconds
    return out


@router.get("", response_model=list[WorkerRead])
def list_workers(session: ReadSessionDep) -> list[WorkerRead]:
    """Registered workers, most recently seen first, with the trials they hold."""
    workers = session.scalars(select(Worker).order_by(Worker.last_heartbeat_at.desc().nulls_last())).all()
    held: dict[str, list[int]] = {}
    for wid, tid in session.execute(
        select(Trial.worker_id, Trial.id).where(Trial.status == TrialStatus.running)
    ):
        held.setdefault(wid, []).append(tid)
    out = []
    for w in workers:
        r = WorkerRead.model_validate(w)
        r.trial_ids = sorted(held.get(w.id, []))
        out.append(r)
    return out


@router.post("/{worker_id}/claim", response_model=ClaimResponse)
async def claim(
    worker_id: WorkerIdPath, body: ClaimRequest, request: Request, db: DatabaseDep, settings: SettingsDep
) -> ClaimResponse:
    """Claim up to ``max_trials`` compatible queued trials under one lease, waiting up to ``wait_seconds``."""

    def attempt(first: bool) -> ClaimResponse | None:  # one short transaction (app.api.long_poll)
        with db.session() as session:
            return _claim_once(session, worker_id, body, settings, first)

    recheck = settings.claim_recheck_seconds
    found = await long_poll(attempt, body.wait_seconds, recheck, request.is_disconnected)
    return found or _claim_answer(None, [], settings)


def _claim_once(
    session: Session, worker_id: str, body: ClaimRequest, settings: Settings, first: bool
) -> ClaimResponse | None:
    """One try of a claim: the answer, or None when nothing is claimable yet."""
    worker = _worker_or_404(session, worker_id, lock=True)  # a sign-off waits for this try
    if not first and worker.status == WorkerStatus.offline:
        return _claim_answer(None, [], settings)  # signed off while it waited: claim nothing for it
    # Random / tpe / qmc sweeps: queue enough suggested configs to fill this claim's pack first.
    search.top_up_active(session, body.max_trials, settings.max_attempts)
    trials = trial_service.claim(session, worker, body.max_trials, settings.lease_seconds)
    return _claim_answer(session, trials, settings) if trials else None


def _claim_answer(session: Session | None, trials: list[Trial], settings: Settings) -> ClaimResponse:
    sweeps = (
        {s.id: s for s in session.scalars(select(Sweep).where(Sweep.id.in_({t.sweep_id for t in trials})))}
        if session is not None and trials
        else {}
    )
    plans = claim_plans(session, trials, sweeps) if session is not None and trials else {}
    return ClaimResponse(
        trials=[
            ClaimedTrial(
                trial_id=t.id,
                sweep_id=t.sweep_id,
                lease_token=t.lease_token or "",
                role=t.role,
                seed=t.seed,
                attempt=t.attempt,
                params=t.params,
                dataset=sweeps[t.sweep_id].dataset,
                split=sweeps[t.sweep_id].spec["split"],
                **plans[t.id],
            )
            for t in trials
        ],
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        max_wait_seconds=MAX_CLAIM_WAIT_SECONDS,
    )


@router.post("/{worker_id}/heartbeat", response_model=LeaseStates)
def heartbeat(
    worker_id: WorkerIdPath, body: LeasesRequest, session: SessionDep, settings: SettingsDep
) -> LeaseStates:
    """Extend the leases the worker still holds."""
    worker = _worker_or_404(session, worker_id)
    return LeaseStates(states=trial_service.heartbeat(session, worker, _leases(body), settings.lease_seconds))


@router.post("/{worker_id}/epochs", response_model=LeaseStates)
def report_epochs(
    worker_id: WorkerIdPath, body: EpochsRequest, session: SessionDep, settings: SettingsDep
) -> LeaseStates:
    """Record per-epoch metrics (idempotent per trial, attempt and epoch)."""
    _worker_or_404(session, worker_id)
    reports = [r.model_dump() for r in body.reports]
    return LeaseStates(states=trial_service.report_epochs(session, reports, settings.lease_seconds))


@router.post("/{worker_id}/complete", response_model=LeaseStates)
def complete(worker_id: WorkerIdPath, body: CompleteRequest, session: SessionDep) -> LeaseStates:
    """End trials with their outcome (fenced by the lease token)."""
    _worker_or_404(session, worker_id)
    states = trial_service.complete(session, [o.model_dump() for o in body.outcomes])
    for o in body.outcomes:  # one line per recorded outcome: an audit trail of who ended what
        if states.get(o.trial_id) == trial_service.LeaseState.ok:
            log.info("trial %d ended %s, recorded from worker %s", o.trial_id, o.status, worker_id)
    return LeaseStates(states=states)


@router.post("/{worker_id}/sign-off", response_model=LeaseStates)
def sign_off(worker_id: WorkerIdPath, session: SessionDep) -> LeaseStates:
    """The worker is stopping: it is not counted idle, and trials it still runs are requeued."""
    worker = _worker_or_404(session, worker_id)
    return LeaseStates(states=dict.fromkeys(requeue.sign_off(session, worker), trial_service.LeaseState.lost))


@router.post("/{worker_id}/release", response_model=LeaseStates)
def release(worker_id: WorkerIdPath, body: ReleaseRequest, session: SessionDep) -> LeaseStates:
    """Give trials back to the queue (stopping: no attempt used; out of memory: it counts)."""
    _worker_or_404(session, worker_id)
    reason = trial_service.ReleaseReason(body.reason)
    return LeaseStates(states=trial_service.release(session, _leases(body), reason, body.error))
