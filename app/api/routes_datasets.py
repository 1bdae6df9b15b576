"""Routes for uploaded datasets: upload (multipart), list, show, delete, and the data for workers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import ERROR_RESPONSES, IdPath, ReadSessionDep, SessionDep, SettingsDep
from app.auth import require
from app.edge_types import Text
from app.models import Dataset, Sweep, TokenScope
from app.schemas import DB_INT_MAX, ErrorRead, Page
from app.schemas_datasets import DatasetDetail, DatasetRead
from app.services import datasets as svc
from app.tabular_types import TableError

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)
# Guards per route: uploads and deletes need submit, reads read; workers download the data too.
SUBMIT = require(write=TokenScope.submit)
WORKER_DATA = require(write=TokenScope.submit, read=(TokenScope.read, TokenScope.worker))

DATA_HASH_HEADER = "X-Gridsweep-Data-Hash"
DatasetRef = Annotated[Text, Path(max_length=200, description="the dataset's id or name")]


def errors_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TableError errors in the shape of FastAPI's own 422 detail."""
    return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in errors]


def read_limited(file: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, or 413 when it is over ``limit``."""
    raw = file.file.read(limit + 1)
    if len(raw) > limit:
        raise HTTPException(
            413,
            f"the file is over the upload limit of {limit} bytes (GRIDSWEEP_MAX_UPLOAD_BYTES)",
        )
    return raw


def dataset_read(ds: Dataset, created: bool | None = None) -> DatasetRead:
    return DatasetRead.model_validate(
        {
            **{k: getattr(ds, k) for k in DatasetRead.model_fields if hasattr(ds, k)},
            "task_source": ds.schema.get("task_source", "given"),
            "task_reason": ds.schema.get("task_reason", ""),
            "created": created,
            "n_dropped": ds.schema.get("n_dropped", 0),
            "dropped_rows": ds.schema.get("dropped_rows", []),
        }
    )


def _dataset_or_404(session: Session, ref: str) -> Dataset:
    ds = svc.find_dataset(session, ref)
    if ds is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {ref!r} not found")
    return ds


@router.post(
    "",
    dependencies=[SUBMIT],
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={
        200: {"model": DatasetRead, "description": "the same bytes were stored already"},
        409: {"model": ErrorRead, "description": "the name is taken, or the same bytes were read otherwise"},
    },
)
def upload_dataset(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a CSV or Parquet file with a header row")],
    target: Annotated[Text, Form(min_length=1, max_length=200, description="the column to predict")],
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
    name: Annotated[Text | None, Form(max_length=200)] = None,
    categorical: Annotated[list[Text] | None, Form(description="feature columns to one-hot encode")] = None,
    drop_missing: Annotated[bool, Form(description="drop rows with missing or infinite values")] = False,
) -> DatasetRead:
    """Upload a CSV or Parquet table; the same bytes are stored once (200 instead of 201)."""
    raw = read_limited(file, settings.max_upload_bytes)
    opts = svc.UploadOptions(target, task, name or None, tuple(categorical or ()), drop_missing)
    try:
        ds, created = svc.create_dataset(session, raw, file.filename, opts)
    except TableError as exc:
        raise HTTPException(422, errors_detail(exc.errors)) from exc
    except svc.DatasetConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return dataset_read(ds, created)


@router.get("", dependencies=[SUBMIT], response_model=Page[DatasetRead])
def list_datasets(
    session: ReadSessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> Page[DatasetRead]:
    """Uploaded datasets, newest first."""
    limit = min(limit, settings.max_page_size)
    rows, total = svc.list_datasets(session, limit, offset)
    return Page[DatasetRead](items=[dataset_read(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{ref}", dependencies=[SUBMIT], response_model=DatasetDetail)
def get_dataset(ref: DatasetRef, session: ReadSessionDep) -> DatasetDetail:
    """One dataset (by id or name) with its schema, statistics and the sweeps that use it."""
    ds = _dataset_or_404(session, ref)
    sweep_ids = session.scalars(select(Sweep.id).where(Sweep.dataset_id == ds.id).order_by(Sweep.id)).all()
    return DatasetDetail(
        **dataset_read(ds).model_dump(),
        columns=ds.schema["columns"],
        feature_names=ds.schema["feature_names"],
        encoding=ds.schema["encoding"],
        options=ds.schema.get("options", {}),
        sweep_ids=list(sweep_ids),
    )


@router.delete(
    "/{ref}",
    dependencies=[SUBMIT],
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorRead, "description": "a sweep (or a rerun) is at work on the dataset"}},
)
def delete_dataset(ref: DatasetRef, session: SessionDep) -> Response:
    """Delete a dataset; refused (409) while a sweep is at work on it."""
    try:
        svc.delete_dataset(session, _dataset_or_404(session, ref))
    except svc.DatasetConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{dataset_id}/data", dependencies=[WORKER_DATA], tags=["workers"], response_class=Response)
def get_dataset_data(dataset_id: IdPath, session: ReadSessionDep) -> Response:
    """The encoded arrays (.npz) for workers; the data hash is in a header."""
    loaded = svc.dataset_bytes(session, dataset_id)
    if loaded is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    ds, data = loaded
    return Response(data, media_type="application/octet-stream", headers={DATA_HASH_HEADER: ds.data_hash})
