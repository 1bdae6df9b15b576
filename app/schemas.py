"""Pydantic schemas at the API's edge. ``SweepCreate`` is the spec itself."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.edge_types import CleanJson, CleanText, NotBool, Text
from app.spec import SweepSpec

T = TypeVar("T")
# Metrics a worker reports: JSON has no NaN/inf, and a stored one would rank and render wrong
# (the worker sends a non-finite value as null). A boolean is no metric.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), NotBool]
# A worker's error text: cleaned and cut, never refused (the failure must be recorded).
MAX_ERROR_CHARS = 20_000
ErrorText = CleanText(MAX_ERROR_CHARS)

# Ids, offsets and counts are INTEGER columns (32-bit on PostgreSQL): bigger is a 422, not a 500.
DB_INT_MAX = 2**31 - 1

SweepCreate = SweepSpec


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class SweepCreated(BaseModel):
    id: int
    status: str
    n_trials: int
    n_configs: int | None = None  # n_trials / seeds (sub-grids: their union; search: max_trials)


class MetricRead(BaseModel):
    name: str
    goal: str
    label: str | None = Field(None, description="how people call it: RMSE, error, log loss, ...")
    units: str | None = Field(None, description="target units (regression), fraction, nats, ...")
    tie_break: str | None = Field(None, description="the metric that orders configs tied on this one")
    select_epoch: str = Field("best", description="a trial's score: its best epoch's value, or its last")
    early_stopping: dict[str, Any] | None = None


class SeedResult(BaseModel):
    seed: int
    trial_id: int
    metrics: dict[str, float | None]


class BestRead(BaseModel):
    sweep_id: int
    trial_id: int
    config_index: int
    params: dict[str, Any]
    metric: MetricRead
    n_seeds: int
    validation: dict[str, Any] = Field(
        description="mean and std over seeds of the sweep's metric, and each seed"
    )
    test: dict[str, float] | None = Field(
        description="held-out test metrics of the best config (mean over seeds)"
    )
    test_per_seed: list[SeedResult] = []
    refit_test: dict[str, float] | None = Field(
        None, description="spec.refit: test metrics of the best config retrained on train + validation"
    )
    refit_per_seed: list[SeedResult] = []


class SweepRead(BaseModel):
    id: int
    name: str
    dataset: str
    status: str
    n_trials: int
    metric: MetricRead
    counts: dict[str, int]
    progress: float = Field(description="search trials ended / n_trials")
    phase: Literal["queued", "searching", "evaluating", "canceling", "finished"] = Field(
        "queued",
        description="queued; searching (the grid trains); evaluating (the best config is retrained and "
        "scored on the test split); canceling (canceled, running trials stopping); finished",
    )
    epochs_done: int = Field(0, description="epochs trained; an ended trial counts all its planned epochs")
    epochs_planned: int = Field(0, description="epochs of every trial (the test evaluation once queued)")
    running: int = Field(0, description="trials training now, the test evaluation's included")
    running_epochs_done: int = Field(0, description="epochs the running trials have reported")
    running_epochs_planned: int = Field(0, description="epochs the running trials will train")
    elapsed_seconds: float | None = Field(None, description="since the first trial started (to the end)")
    eta_seconds: float | None = Field(
        None, description="while running: the epochs left at the rate so far (a test evaluation not foreseen)"
    )
    duration_seconds: float | None = Field(None, description="once finished: first trial started to the end")
    best: BestRead | None = None
    error: str | None = None
    method: str = "grid"
    pruning: dict[str, Any] | None = Field(
        None, description="pruner: trials pruned, epochs saved, and the audit of would-be-pruned configs"
    )
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrialRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    sweep_id: int
    role: str
    config_index: int
    seed: int
    params: dict[str, Any]
    status: str
    attempt: int
    max_pack: int | None = Field(
        None, description="claimed in packs of at most this many trials (set when a pack it was in was lost)"
    )
    epochs_done: int
    train_loss: float | None
    val_loss: float | None
    val_error: float | None
    val_accuracy: float | None
    val_log_loss: float | None = None
    val_rmse: float | None = None
    val_mae: float | None = None
    val_r2: float | None = None
    test_loss: float | None = None
    test_error: float | None = None
    test_accuracy: float | None = None
    test_log_loss: float | None = None
    test_rmse: float | None = None
    test_mae: float | None = None
    test_r2: float | None = None
    best_epoch: int | None = Field(None, description="the epoch whose metrics (and weights) the trial keeps")
    stopped_epoch: int | None = Field(None, description="early stopping ended the trial after this epoch")
    error: str | None
    worker_id: str | None
    device: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(
        description="training time; in a fused pack, the trial's share of the pack's wall time"
    )
    wall_seconds: float | None = Field(
        None, description="started to finished (claim to outcome; in a fused pack, the pack's time so far)"
    )
    data_hash: str | None = None
    split: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    rerun_of: int | None = None


class EpochRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_error: float | None
    val_accuracy: float | None
    val_log_loss: float | None = None
    val_rmse: float | None = None
    val_mae: float | None = None
    val_r2: float | None = None


class RungRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    decision: str
    value: float | None
    threshold: float | None
    n_compared: int
    reason: str


class TrialDetail(TrialRead):
    epochs: list[EpochRead]
    rungs: list[RungRead] = []


class SweepExtended(BaseModel):
    id: int
    status: str
    n_trials: int
    added_trials: int
    added_configs: int
    reused_configs: int = Field(description="configs of the new spec already in the sweep, not run again")


class ImportanceRead(BaseModel):
    sweep_id: int
    evaluator: str
    metric: str
    goal: str
    n_configs: int
    importances: dict[str, float] = Field(description="parameter -> importance (sums to 1), largest first")


# --- the worker protocol ------------------------------------------------------------


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    hostname: Text | None = Field(None, max_length=255)
    device: Text | None = Field(None, max_length=64)


class WorkerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    hostname: str | None
    device: str | None
    status: str
    created_at: datetime
    last_heartbeat_at: datetime | None
    lease_seconds: float | None = None
    heartbeat_seconds: float | None = None
    trial_ids: list[int] = []


# The longest a claim may wait for work (a worker asks less, and its HTTP timeout is longer).
MAX_CLAIM_WAIT_SECONDS = 30.0


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_trials: Annotated[int, NotBool] = Field(1, ge=1, le=1024)
    wait_seconds: Annotated[float, NotBool] = Field(
        0.0,
        ge=0,
        le=MAX_CLAIM_WAIT_SECONDS,
        description="With nothing claimable, wait this long for work to be queued (0: answer at once).",
    )


class ClaimedTrial(BaseModel):
    trial_id: int
    sweep_id: int
    lease_token: str
    role: str
    seed: int
    attempt: int
    params: dict[str, Any]
    dataset: str
    split: dict[str, Any]
    evaluate_test: bool
    refit: bool
    dataset_id: int | None = None  # an uploaded dataset: GET /api/v1/datasets/{id}/data
    data_hash: str | None = None  # the uploaded dataset's fingerprint, to check the cache against
    upload_model: str | None = None  # "best" | "refit": upload the trained model before completing
    rungs: list[int] = []  # epochs the sweep's pruner judges: wait for the API's answer there
    metric: str = "val_loss"  # the sweep's metric: the worker picks the epoch by it
    goal: str = "minimize"  # "minimize" | "maximize"
    select_epoch: str = "best"  # "best" | "last"
    early_stopping: dict[str, Any] | None = None  # {"patience": n >= 1, "min_delta": d >= 0}


class ClaimResponse(BaseModel):
    trials: list[ClaimedTrial]
    lease_seconds: float
    heartbeat_seconds: float
    # The longest wait_seconds this API takes (absent from an API that answers claims at once).
    max_wait_seconds: float = MAX_CLAIM_WAIT_SECONDS


class LeaseRef(BaseModel):
    # JSON has no NaN/inf (Python's parser takes them): refuse them rather than store them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trial_id: Annotated[int, NotBool] = Field(ge=1, le=DB_INT_MAX)
    lease_token: Text = Field(min_length=1, max_length=64)


class LeasesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leases: list[LeaseRef] = Field(max_length=1024)


class ReleaseRequest(LeasesRequest):
    """``shutdown``: back to the queue, no attempt used; ``out_of_memory``: retried, the attempt counts."""

    reason: Literal["shutdown", "out_of_memory"] = "shutdown"
    error: ErrorText | None = None


class EpochReport(LeaseRef):
    epoch: Annotated[int, NotBool] = Field(ge=1, le=DB_INT_MAX)
    train_loss: FiniteFloat | None = None
    val_loss: FiniteFloat | None = None
    val_error: FiniteFloat | None = None
    val_accuracy: FiniteFloat | None = None
    val_rmse: FiniteFloat | None = None
    val_mae: FiniteFloat | None = None
    val_r2: FiniteFloat | None = None
    val_log_loss: FiniteFloat | None = None


class EpochsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reports: list[EpochReport] = Field(max_length=4096)


class TrialOutcome(LeaseRef):
    status: Literal["succeeded", "failed", "diverged", "canceled", "pruned"]
    metrics: dict[str, FiniteFloat | None] = {}
    epochs_done: Annotated[int, NotBool] | None = Field(None, ge=0, le=DB_INT_MAX)
    # What the worker reports is cleaned, never refused: the outcome must be recorded.
    error: ErrorText | None = None
    device: CleanText(64) | None = None
    duration_seconds: FiniteFloat | None = Field(None, ge=0)
    data_hash: CleanText(64) | None = None
    split: Annotated[dict[str, Any], CleanJson] | None = None
    versions: Annotated[dict[str, str | int | None], CleanJson] | None = None
    best_epoch: Annotated[int, NotBool] | None = Field(None, ge=1, le=DB_INT_MAX)  # the selected epoch
    stopped_epoch: Annotated[int, NotBool] | None = Field(None, ge=1, le=DB_INT_MAX)  # early stopping


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcomes: list[TrialOutcome] = Field(max_length=1024)


class LeaseStates(BaseModel):
    """Per trial: ``ok`` carry on, ``cancel`` stop (sweep canceled), ``lost`` drop it,
    ``prune`` stop it and report it ``pruned`` (the sweep's pruner)."""

    states: dict[int, Literal["ok", "cancel", "lost", "prune"]]


class LeaderboardEntry(BaseModel):
    rank: int
    config_index: int
    params: dict[str, Any]
    mean: float = Field(description="the sweep's metric, mean over the seeds that succeeded")
    std: float
    n_seeds: int
    trial_ids: list[int]


# --- API tokens -----------------------------------------------------------------------


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200, pattern=r"\S")
    scope: Literal["read", "submit", "worker", "admin"]


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="the token itself: shown this once, only its SHA-256 is stored")


class ErrorRead(BaseModel):
    """An error: a message, or (422) a list of ``{loc, msg, type}`` with the field path."""

    detail: str | list[dict[str, Any]]
