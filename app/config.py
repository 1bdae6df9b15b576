"""Settings from the environment (``GRIDSWEEP_*``), one place for every knob."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///gridsweep.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDSWEEP_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the store.")
    max_trials: int = Field(10_000, description="Largest grid (trials) one sweep may expand to.")
    max_epochs: int = Field(10_000, description="Largest `epochs` a spec may ask for.")
    lease_seconds: float = Field(30.0, description="A claim's lease; 3 missed 10 s heartbeats.")
    heartbeat_seconds: float = Field(10.0, description="How often workers are told to heartbeat.")
    reaper_interval_seconds: float = Field(5.0, description="How often the API requeues expired leases.")
    max_attempts: int = Field(3, description="Attempts a trial gets before a lost worker fails it.")
    max_page_size: int = Field(500, description="Largest `limit` of a paginated list.")
    allow_tf32: bool = Field(
        False, description="CUDA workers may use TF32 matmuls in fused packs (faster; ~1e-3 relative)."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
