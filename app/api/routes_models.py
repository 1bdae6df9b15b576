"""Routes for trained models (upload by workers, download by users) and trial reruns."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile, status
from sqlalchemy import select

from app.api.deps import ERROR_RESPONSES, IdPath, ReadSessionDep, SessionDep, SettingsDep, WorkerIdPath
from app.api.routes_datasets import read_limited
from app.auth import require
from app.edge_types import Text
from app.models import Sweep, TokenScope, Trial, TrialStatus
from app.schemas import ErrorRead, TrialRead
from app.schemas_datasets import ModelArtifactRead
from app.services import artifacts, reruns

router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERROR_RESPONSES)
# Guards per route: workers upload models, readers download them, submitters ask for reruns.
SUBMIT = require(write=TokenScope.submit)
WORKER = require(write=TokenScope.worker)

Kind = Literal["best", "refit"]
Format = Literal["state_dict", "torchscript"]


@router.post(
    "/workers/{worker_id}/trials/{trial_id}/model",
    dependencies=[WORKER],
    responses={409: {"model": ErrorRead, "description": "the lease is not (or no longer) held"}},
    status_code=status.HTTP_201_CREATED,
    response_model=list[ModelArtifactRead],
    tags=["workers"],
)
def upload_model(
    worker_id: WorkerIdPath,
    trial_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    lease_token: Annotated[Text, Form(min_length=1, max_length=64)],
    kind: Annotated[Kind, Form()],
    state_dict: Annotated[UploadFile, File()],
    torchscript: Annotated[UploadFile | None, File()] = None,
) -> list[ModelArtifactRead]:
    """Store a final or refit trial's model (fenced by its lease token)."""
    trial = session.scalars(select(Trial).where(Trial.id == trial_id).with_for_update()).first()
    if trial is None or trial.status != TrialStatus.running or trial.lease_token != lease_token:
        raise HTTPException(status.HTTP_409_CONFLICT, f"trial {trial_id}: lease lost")
    if artifacts.KIND_OF_ROLE.get(trial.role) != kind:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", "kind"],
                    "msg": f"a {trial.role} trial has no {kind!r} model",
                    "type": "value_error",
                }
            ],
        )
    files = {"state_dict": read_limited(state_dict, settings.max_upload_bytes)}
    if torchscript is not None:
        files["torchscript"] = read_limited(torchscript, settings.max_upload_bytes)
    rows = artifacts.store_models(session, trial, kind, files)
    return [ModelArtifactRead.model_validate(r) for r in rows]


@router.get("/sweeps/{sweep_id}/models", dependencies=[SUBMIT], response_model=list[ModelArtifactRead])
def list_models(sweep_id: IdPath, session: ReadSessionDep) -> list[ModelArtifactRead]:
    """The sweep's stored models (kind best and, with refit, refit; each as state_dict and torchscript)."""
    if session.get(Sweep, sweep_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return [ModelArtifactRead.model_validate(r) for r in artifacts.list_models(session, sweep_id)]


@router.get("/sweeps/{sweep_id}/model", dependencies=[SUBMIT], response_class=Response)
def download_model(
    sweep_id: IdPath,
    session: ReadSessionDep,
    kind: Annotated[Kind, Query()] = "best",
    format: Annotated[Format, Query()] = "state_dict",
) -> Response:
    """Download a model: load a state_dict file with ``worker.model_io.load_model``."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    row = artifacts.get_model(session, sweep_id, kind, format)
    if row is None:
        why = (
            "the sweep was run without refit: true"
            if kind == "refit" and not sweep.spec.get("refit")
            else f"the sweep is {sweep.status}; the model is stored when its final trial succeeds"
        )
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} has no {kind} model: {why}")
    name = f"sweep-{sweep_id}-{kind}{'.pt' if format == 'state_dict' else '.torchscript.pt'}"
    return Response(
        row.data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Gridsweep-Sha256": row.sha256},
    )


@router.post(
    "/trials/{trial_id}/rerun",
    dependencies=[SUBMIT],
    responses={
        409: {
            "model": ErrorRead,
            "description": "the trial has not ended, its sweep was canceled or its dataset deleted",
        }
    },
    status_code=status.HTTP_201_CREATED,
    response_model=TrialRead,
    tags=["trials"],
)
def rerun(trial_id: IdPath, session: SessionDep, settings: SettingsDep) -> TrialRead:
    """Queue an identical copy of an ended trial (role rerun, not ranked)."""
    source = session.get(Trial, trial_id)
    if source is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"trial {trial_id} not found")
    try:
        trial = reruns.rerun_trial(session, source, settings.max_attempts)
    except reruns.RerunRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return TrialRead.model_validate(trial)
