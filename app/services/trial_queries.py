"""Read-side queries over trials: paging, sorting, one trial with its curve."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import json_key
from app.models import Trial, TrialEpoch
from app.spec import AXES
from gridsweep.vocab import EPOCH_METRICS

SORTABLE = (
    "id",
    "config_index",
    "seed",
    "status",
    "epochs_done",
    "duration_seconds",
    *EPOCH_METRICS,
    "best_epoch",
    "stopped_epoch",
    "created_at",
    "finished_at",
)
# A grid parameter sorts by its value (numbers numerically): ``sort=params.learning_rate``.
PARAM_SORTABLE = tuple(f"params.{axis}" for axis in AXES)


def sort_column(session: Session, sort: str) -> Any:
    """The SQL expression for ``sort``: a column of SORTABLE or ``params.<axis>``."""
    if sort in PARAM_SORTABLE:
        return json_key(session, Trial.params, sort.removeprefix("params."))
    if sort in SORTABLE:
        return getattr(Trial, sort)
    raise ValueError(f"cannot sort trials by {sort!r}")


def list_trials(
    session: Session,
    sweep_id: int,
    *,
    status: list[str] | None = None,
    role: str | None = "search",
    sort: str = "id",
    order: str = "asc",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Trial], int]:
    """One page of a sweep's trials, sorted server-side (missing values last)."""
    where = [Trial.sweep_id == sweep_id]
    if status:
        where.append(Trial.status.in_(status))
    if role:
        where.append(Trial.role == role)
    total = session.scalar(select(func.count()).select_from(Trial).where(*where)) or 0
    col = sort_column(session, sort)
    key = (col.desc() if order == "desc" else col.asc()).nulls_last()
    rows = session.scalars(
        select(Trial).where(*where).order_by(key, Trial.id.asc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def trial_epochs(session: Session, trial: Trial) -> list[TrialEpoch]:
    """The per-epoch curve of the trial's latest attempt."""
    return list(
        session.scalars(
            select(TrialEpoch)
            .where(TrialEpoch.trial_id == trial.id, TrialEpoch.attempt == trial.attempt)
            .order_by(TrialEpoch.epoch)
        ).all()
    )
