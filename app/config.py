"""Settings from the environment (``GRIDSWEEP_*``), one place for every knob."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///gridsweep.db"
MISSED_BEATS = 3  # a lease expires after this many missed heartbeats
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDSWEEP_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the store.")
    max_trials: int = Field(10_000, description="Largest grid (trials) one sweep may expand to.")
    max_epochs: int = Field(10_000, description="Largest `epochs` a spec may ask for.")
    max_parameters: int = Field(
        100_000_000, description="Largest model (weights and biases of one trial) a spec may ask for."
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often workers are told to heartbeat.")
    lease_seconds: float = Field(
        0.0, ge=0, description="A claim's lease; 0: 3 missed heartbeats (30 s by default)."
    )
    reaper_interval_seconds: float = Field(5.0, description="How often the API requeues expired leases.")
    claim_recheck_seconds: float = Field(
        0.5,
        gt=0,
        le=30,
        description="How often a waiting claim looks again for work queued by another API process.",
    )
    max_attempts: int = Field(3, description="Attempts a trial gets before a lost worker fails it.")
    max_page_size: int = Field(500, description="Largest `limit` of a paginated list.")
    max_upload_bytes: int = Field(
        100 * 2**20, description="Largest dataset file (or model) one upload may send; larger gets 413."
    )
    data_cache_dir: str = Field(
        "~/.cache/gridsweep/datasets", description="Where a worker caches uploaded datasets by hash."
    )
    log_level: Annotated[LogLevel, BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = Field(
        "INFO", description="Log level of the API, workers and CLI (any case)."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as `json` or `text`; `auto`: JSON unless stderr is a terminal."
    )
    server: str = Field(
        "http://127.0.0.1:8000", description="API URL the CLI and workers talk to (`--server`)."
    )
    token: SecretStr | None = Field(None, description="Bearer token the CLI and workers send (a secret).")
    allow_tf32: bool = Field(
        False, description="CUDA workers may use TF32 matmuls in fused packs (faster; ~1e-3 relative)."
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body; larger ones get 413.")
    header_timeout_seconds: float = Field(
        20.0, gt=0, description="Longest wait for a request's headers; then 408, connection closed."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest pause while a request body arrives; then 408, connection closed."
    )
    max_connections: int = Field(
        1000, gt=0, description="Open connections the API serves at once; past it, new requests get 503."
    )
    auth: Literal["on", "off"] = Field(
        "off", description="Require API tokens (on) or not (off: only allowed on a loopback address)."
    )

    @model_validator(mode="after")
    def _default_lease(self) -> Settings:
        # A lease outlives MISSED_BEATS heartbeats, so a slow beat or two never loses a trial.
        if not self.lease_seconds:
            self.lease_seconds = MISSED_BEATS * self.heartbeat_seconds
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"


@lru_cache
def get_settings() -> Settings:
    return Settings()
