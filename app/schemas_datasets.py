"""Edge schemas for uploaded datasets and model artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    sha256: str = Field(description="SHA-256 of the uploaded file: the same bytes are stored once")
    data_hash: str = Field(description="fingerprint of the encoded arrays; trials record it as data_hash")
    format: str
    task: str
    task_source: str = Field(description="'given' at upload or 'inferred' from the target column")
    task_reason: str
    target: str
    classes: list[Any]
    n_rows: int
    n_features: int
    size_bytes: int
    created_at: datetime
    created: bool | None = Field(None, description="on upload: false when the same bytes were stored already")
    n_dropped: int = Field(0, description="rows dropped for missing or infinite values (drop_missing)")
    dropped_rows: list[int] = Field(
        [], description="which rows were dropped (1-based file rows, header not counted; the first 1000)"
    )


class DatasetDetail(DatasetRead):
    columns: list[dict[str, Any]] = Field(description="each column: name, dtype, role, statistics")
    feature_names: list[str] = Field(description="the model's inputs (categorical columns one-hot)")
    encoding: dict[str, Any]
    options: dict[str, Any]
    sweep_ids: list[int] = []


class ModelArtifactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sweep_id: int
    trial_id: int
    kind: str
    format: str
    sha256: str
    size_bytes: int
    created_at: datetime
