"""Routes for sweeps and trials (the read side and submission)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import (
    ERROR_RESPONSES,
    MAX_ID,
    DatabaseDep,
    IdPath,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
)
from app.api.long_poll import long_poll
from app.auth import PrincipalDep, require
from app.edge_types import Text
from app.models import Sweep, TokenScope, Trial, TrialStatus
from app.schemas import (
    BestRead,
    ErrorRead,
    ImportanceRead,
    LeaderboardEntry,
    Page,
    SweepCreate,
    SweepCreated,
    SweepExtended,
    SweepRead,
    TrialDetail,
    TrialRead,
)
from app.services import export, idempotency, sweep_admin
from app.services import sweeps as sweep_service
from app.services.extend import ExtendConflict, extend_sweep
from app.services.importance import EVALUATORS, param_importance
from app.services.progress import ENDED_SWEEP, sweep_progress
from app.services.reads import best_read, sweep_read, trial_detail, trial_read
from app.services.trial_queries import PARAM_SORTABLE, SORTABLE, list_trials

# Read tokens may GET; creating, canceling and deleting sweeps needs the submit scope.
router = APIRouter(
    prefix="/api/v1",
    tags=["sweeps"],
    dependencies=[require(write=TokenScope.submit)],
    responses=ERROR_RESPONSES,
)

Limit = Annotated[int, Query(ge=1, le=10_000, description="page size (capped by the server)")]
# The longest a sweep read waits for the sweep's end: a longer ``wait_seconds`` waits this long
# (the client asks again), as proxies cut idle requests.
MAX_SWEEP_WAIT_SECONDS = 30.0
WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        description="answer once the sweep has ended, or after this many seconds "
        f"(at most {MAX_SWEEP_WAIT_SECONDS:g})",
    ),
]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
IdempotencyKey = Annotated[
    Text | None,
    Header(min_length=1, max_length=255, description="the same key and body return the first answer"),
]


def _sweep_or_404(session: Session, sweep_id: int) -> Sweep:
    sweep = sweep_service.get_sweep(session, sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep


def _created(sweep: Sweep, spec: SweepCreate) -> SweepCreated:
    n_configs = sweep.n_trials // len(spec.seeds)
    return SweepCreated(id=sweep.id, status=sweep.status, n_trials=sweep.n_trials, n_configs=n_configs)


@router.post("/sweeps", status_code=status.HTTP_201_CREATED, response_model=SweepCreated)
def create_sweep(
    spec: SweepCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SweepCreated:
    """Submit a sweep: the spec is validated and expanded into trials (at most once per key)."""
    if idempotency_key is None:
        sweep = sweep_service.create_sweep(session, spec, settings)
        return _created(sweep, spec)
    owner = principal.name if principal else ""
    digest = idempotency.request_hash(spec.model_dump(mode="json"))
    try:
        key = idempotency.begin(session, owner, idempotency_key, digest)
    except idempotency.IdempotencyConflict as exc:
        detail = [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from exc
    if isinstance(key, idempotency.Replay):
        response.status_code = key.status_code
        response.headers["Idempotent-Replayed"] = "true"
        return SweepCreated(**key.response)
    sweep = sweep_service.create_sweep(session, spec, settings)
    created = _created(sweep, spec)
    idempotency.finish(session, key, sweep.id, status.HTTP_201_CREATED, created.model_dump(mode="json"))
    return created


@router.get("/sweeps", response_model=Page[SweepRead])
def list_sweeps(
    session: ReadSessionDep, settings: SettingsDep, limit: Limit = 50, offset: Offset = 0
) -> Page[SweepRead]:
    """List sweeps, newest first."""
    limit = min(limit, settings.max_page_size)
    rows, total = sweep_service.list_sweeps(session, limit, offset)
    counts = sweep_service.trial_counts(session, [s.id for s in rows])
    progress = sweep_progress(session, rows)
    items = [sweep_read(session, s, counts[s.id], progress[s.id], with_pruning=False) for s in rows]
    return Page[SweepRead](items=items, total=total, limit=limit, offset=offset)


@router.get("/sweeps/{sweep_id}", response_model=SweepRead)
async def get_sweep(
    sweep_id: IdPath,
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    wait_seconds: WaitSeconds = 0.0,
) -> SweepRead:
    """One sweep with its counts and best config so far (once it ended, or ``wait_seconds`` passed)."""

    def attempt(last: bool) -> SweepRead | None:  # one short read transaction (app.api.long_poll)
        with db.session(readonly=True) as session:
            sweep = _sweep_or_404(session, sweep_id)
            return sweep_read(session, sweep) if last or sweep.status in ENDED_SWEEP else None

    if wait_seconds > 0:
        recheck = settings.claim_recheck_seconds
        wait = min(wait_seconds, MAX_SWEEP_WAIT_SECONDS)
        found = await long_poll(
            lambda _: attempt(False), wait, recheck, request.is_disconnected, end_with_any_sweep=False
        )
        if found is not None:
            return found
    return await run_in_threadpool(attempt, True)


@router.get("/sweeps/{sweep_id}/best", response_model=BestRead)
def get_best(sweep_id: IdPath, session: ReadSessionDep) -> BestRead:
    """The best config by the sweep's metric (mean over seeds) and its test metrics."""
    best = best_read(session, _sweep_or_404(session, sweep_id))
    if best is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} has no finished trial yet")
    return best


@router.get("/sweeps/{sweep_id}/leaderboard", response_model=list[LeaderboardEntry])
def get_leaderboard(
    sweep_id: IdPath, session: ReadSessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 10
) -> list[LeaderboardEntry]:
    """The top configs by the sweep's metric (mean over seeds), best first."""
    ranked = sweep_service.leaderboard(session, _sweep_or_404(session, sweep_id), limit=limit)
    return [
        LeaderboardEntry(
            rank=i + 1,
            config_index=r.config_index,
            params=r.params,
            mean=r.mean,
            std=r.std,
            n_seeds=r.n_seeds,
            trial_ids=[t.id for t in r.trials],
        )
        for i, r in enumerate(ranked)
    ]


@router.get("/sweeps/{sweep_id}/trials", response_model=Page[TrialRead])
def get_trials(
    sweep_id: IdPath,
    session: ReadSessionDep,
    settings: SettingsDep,
    status_: Annotated[list[TrialStatus] | None, Query(alias="status")] = None,
    role: Literal["search", "final", "refit", "rerun"] = "search",
    sort: Annotated[
        str, Query(pattern="^(" + "|".join(map(re.escape, SORTABLE + PARAM_SORTABLE)) + "|metric)$")
    ] = "id",
    order: Literal["asc", "desc"] = "asc",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[TrialRead]:
    """A page of the sweep's trials; ``sort=metric`` sorts by the sweep's metric, ``params.X`` by a param."""
    sweep = _sweep_or_404(session, sweep_id)
    limit = min(limit, settings.max_page_size)
    rows, total = list_trials(
        session,
        sweep.id,
        status=status_,
        role=role,
        sort=sweep.metric_name if sort == "metric" else sort,
        order=order,
        limit=limit,
        offset=offset,
    )
    items = [trial_read(t) for t in rows]
    return Page[TrialRead](items=items, total=total, limit=limit, offset=offset)


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepRead)
def cancel_sweep(sweep_id: IdPath, session: SessionDep) -> SweepRead:
    """Cancel a sweep: queued trials now, running ones at their next epoch."""
    sweep = sweep_service.cancel_sweep(session, _sweep_or_404(session, sweep_id))
    return sweep_read(session, sweep)


@router.delete(
    "/sweeps/{sweep_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorRead, "description": "the sweep is queued or running: cancel it first"}},
)
def delete_sweep(sweep_id: IdPath, session: SessionDep) -> Response:
    """Delete an ended sweep with its trials, epochs and models (409 while queued or running)."""
    try:
        found = sweep_admin.delete_sweep(session, sweep_id)
    except sweep_admin.SweepBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/sweeps/{sweep_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "one row per trial: a column per grid parameter, per metric, then how it ran",
            "content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
        }
    },
)
def export_sweep(
    sweep_id: IdPath,
    request: Request,
    session: ReadSessionDep,
    format: Literal["csv", "parquet"] = "csv",
    role: Literal["search", "final", "refit", "rerun"] | None = None,
) -> StreamingResponse:
    """The sweep's trials (of ``role``, default all) as CSV or Parquet, streamed in batches."""
    _sweep_or_404(session, sweep_id)
    db = request.app.state.db

    def chunks() -> Iterator[bytes]:  # its own transaction: the response outlives the route's
        with db.session(readonly=True) as s:
            sweep = _sweep_or_404(s, sweep_id)
            batches = export.trial_batches(s, sweep, role, json_mode=format == "csv")
            if format == "csv":
                yield from export.csv_chunks(batches)
            else:
                yield from export.parquet_chunks(batches, sweep)

    headers = {"Content-Disposition": f'attachment; filename="sweep-{sweep_id}.{format}"'}
    return StreamingResponse(chunks(), media_type=export.FORMATS[format], headers=headers)


@router.post(
    "/sweeps/{sweep_id}/extend",
    response_model=SweepExtended,
    responses={409: {"model": ErrorRead, "description": "the spec changes what the sweep must keep"}},
)
def extend(sweep_id: IdPath, spec: SweepCreate, session: SessionDep, settings: SettingsDep) -> SweepExtended:
    """Add the configs of ``spec`` the sweep has not run (by config hash); a finished sweep runs again.

    Dataset, split, metric, method, pruner, refit and sampler seed must stay as they are; a
    random / tpe / qmc sweep may only grow ``max_trials``.
    """
    _sweep_or_404(session, sweep_id)
    try:
        ext = extend_sweep(session, sweep_id, spec, settings)
    except ExtendConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return SweepExtended(
        id=ext.sweep.id,
        status=ext.sweep.status,
        n_trials=ext.sweep.n_trials,
        added_trials=ext.added_trials,
        added_configs=ext.added_configs,
        reused_configs=ext.reused_configs,
    )


@router.get("/sweeps/{sweep_id}/importance", response_model=ImportanceRead)
def get_importance(
    sweep_id: IdPath,
    session: ReadSessionDep,
    evaluator: Annotated[Literal[EVALUATORS], Query()] = "ped_anova",  # type: ignore[valid-type]
) -> ImportanceRead:
    """How much each varied parameter matters to the metric, over the configs that rank
    (Optuna's PED-ANOVA, or fANOVA); empty with fewer than two scored configs."""
    sweep = _sweep_or_404(session, sweep_id)
    return ImportanceRead.model_validate(param_importance(session, sweep, evaluator))


@router.get("/trials/{trial_id}", response_model=TrialDetail, tags=["trials"])
def get_trial(trial_id: IdPath, session: ReadSessionDep) -> TrialDetail:
    """One trial with its per-epoch curve."""
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"trial {trial_id} not found")
    return trial_detail(session, trial)
