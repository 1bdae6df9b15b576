"""ORM models: sweep, trial, trial_epoch, trial_rung, worker.

Conventions: singular snake_case tables, ``*_at`` datetimes (UTC), ``*_seconds``
durations, one status enum per entity stored as a string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SweepStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class TrialStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    diverged = "diverged"
    canceled = "canceled"
    pruned = "pruned"  # stopped at an epoch rung by the sweep's pruner: counted, never the best


TERMINAL_TRIAL_STATUSES = (
    TrialStatus.succeeded,
    TrialStatus.failed,
    TrialStatus.diverged,
    TrialStatus.canceled,
    TrialStatus.pruned,
)


class TrialRole(StrEnum):
    search = "search"  # a grid point, scored on validation
    final = "final"  # the best config retrained once per seed and scored on the test split
    refit = "refit"  # the best config retrained on train + validation (spec.refit), scored on test
    rerun = "rerun"  # an identical re-run of a finished trial (POST /trials/{id}/rerun), not ranked


class WorkerStatus(StrEnum):
    online = "online"
    offline = "offline"


class Sweep(Base):
    __tablename__ = "sweep"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.queued, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metric_name: Mapped[str] = mapped_column(String(32))
    metric_goal: Mapped[str] = mapped_column(String(8))
    n_trials: Mapped[int] = mapped_column(Integer)
    # grid, or random / tpe / qmc: configs suggested as the sweep runs (app/services/search.py).
    method: Mapped[str] = mapped_column(String(8), default="grid", server_default="grid")
    # The uploaded dataset it trains on (None for a built-in, or once the dataset was deleted).
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"), index=True)
    best_trial_id: Mapped[int | None] = mapped_column(Integer)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    refit_test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    trials: Mapped[list[Trial]] = relationship(back_populates="sweep", passive_deletes=True)


class Worker(Base):
    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    hostname: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.online)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Trial(Base):
    __tablename__ = "trial"
    __table_args__ = (
        # The claim scans queued trials in priority order.
        Index("ix_trial_status_priority", "status", "priority", "sweep_id", "config_index", "seed"),
        Index("ix_trial_sweep_id_status", "sweep_id", "status"),
        Index("ix_trial_lease_expires_at", "lease_expires_at"),
        # A grid point is trained once per seed and role, whatever races happen (reruns count up).
        UniqueConstraint("sweep_id", "role", "config_index", "seed", "rerun_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(8), default=TrialRole.search)
    # Lower runs first: final evaluations jump the queue so a finished sweep completes.
    priority: Mapped[int] = mapped_column(Integer, default=100)
    config_index: Mapped[int] = mapped_column(Integer)
    config_key: Mapped[str] = mapped_column(String(64))
    # Trials with the same pack_key may be trained together (same data, batches, epochs...).
    pack_key: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=TrialStatus.queued)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("worker.id", ondelete="SET NULL"))
    device: Mapped[str | None] = mapped_column(String(64))
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    # The most trials it may be claimed with (None: any): halved each time a pack it was in is
    # lost, so a trial that kills its worker ends up alone (app.services.trials.reap_expired).
    max_pack: Mapped[int | None] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_error: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_error: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    # Since 0006: metrics on one scale whatever the loss (gridsweep.vocab), of the selected epoch.
    val_log_loss: Mapped[float | None] = mapped_column(Float)
    val_rmse: Mapped[float | None] = mapped_column(Float)
    val_mae: Mapped[float | None] = mapped_column(Float)
    val_r2: Mapped[float | None] = mapped_column(Float)
    test_log_loss: Mapped[float | None] = mapped_column(Float)
    test_rmse: Mapped[float | None] = mapped_column(Float)
    test_mae: Mapped[float | None] = mapped_column(Float)
    test_r2: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)  # the selected epoch (1-based)
    stopped_epoch: Mapped[int | None] = mapped_column(Integer)  # early stopping ended it after this one
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    # Reproducibility, as reported by the worker that ran it (device is above).
    data_hash: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A rerun: the trial it repeats, and its number among the reruns of that grid point.
    rerun_of: Mapped[int | None] = mapped_column(ForeignKey("trial.id", ondelete="SET NULL"))
    rerun_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    sweep: Mapped[Sweep] = relationship(back_populates="trials")
    epochs: Mapped[list[TrialEpoch]] = relationship(
        back_populates="trial", order_by="TrialEpoch.epoch", passive_deletes=True
    )


class TrialEpoch(Base):
    __tablename__ = "trial_epoch"
    # A retried report of the same epoch of the same attempt is recorded once.
    __table_args__ = (UniqueConstraint("trial_id", "attempt", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trial.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_error: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    val_log_loss: Mapped[float | None] = mapped_column(Float)
    val_rmse: Mapped[float | None] = mapped_column(Float)
    val_mae: Mapped[float | None] = mapped_column(Float)
    val_r2: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    trial: Mapped[Trial] = relationship(back_populates="epochs")


class RungDecision(StrEnum):
    go_on = "continue"  # good enough at this rung
    prune = "prune"  # stopped here: the trial ends pruned
    audit = "audit"  # would be pruned, kept training to the end (pruner.audit) to measure pruning


class TrialRung(Base):
    """A pruner's decision about a trial at an epoch rung, with what it was compared with."""

    __tablename__ = "trial_rung"
    # One decision per trial, attempt and rung: a retried epoch report reads it back.
    __table_args__ = (UniqueConstraint("trial_id", "attempt", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trial.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)  # the trial's value that was judged
    threshold: Mapped[float | None] = mapped_column(Float)  # the median / the promotion cut-off
    n_compared: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TokenScope(StrEnum):
    read = "read"  # GET the API
    submit = "submit"  # read, and create or cancel sweeps
    worker = "worker"  # only the worker protocol
    admin = "admin"  # everything, tokens included


class ApiToken(Base):
    """An API token. Only its SHA-256 is stored: the token itself is shown once, at creation."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """The first answer to ``POST /api/v1/sweeps`` with an ``Idempotency-Key``, replayed to repeats."""

    __tablename__ = "idempotency_key"
    # One sweep per key and caller, even for concurrent requests (the insert is the lock).
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))  # the token's name, "" when auth is off
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(Base):
    """An uploaded table, parsed and validated once; ``data`` is the encoded arrays (.npz)."""

    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # SHA-256 of the uploaded file's bytes: the same bytes are stored once.
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # SHA-256 fingerprint of the encoded arrays (what trials record as ``data_hash``).
    data_hash: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(200))
    classes: Mapped[list[Any]] = mapped_column(JSON)
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    # Columns with their role and statistics, the encoding, how the task was decided.
    schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelArtifact(Base):
    """A trained model of a sweep: ``kind`` best (train split) or refit (train + validation)."""

    __tablename__ = "model_artifact"
    __table_args__ = (UniqueConstraint("sweep_id", "kind", "format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"))
    trial_id: Mapped[int] = mapped_column(ForeignKey("trial.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
