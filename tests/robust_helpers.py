"""Helpers for the robustness and security tests (tokens, waiting, small specs, worker logs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.db import Database
from app.services.tokens import create_token

# Short heartbeats and leases, so that lost workers are noticed within seconds.
FAST_LEASES = {"heartbeat_seconds": "0.5", "lease_seconds": "2", "reaper_interval_seconds": "0.5"}


def make_tokens(db_url: str, **scopes: str) -> dict[str, str]:
    """``make_tokens(url, adm="admin", rd="read")`` -> {name: token}, stored as hashes."""
    db = Database(db_url)
    out = {}
    try:
        with db.session() as session:
            for name, scope in scopes.items():
                out[name] = create_token(session, name, scope)[1]
    finally:
        db.dispose()
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def spec(name: str, n_configs: int, epochs: int = 1, **params: Any) -> dict[str, Any]:
    """A moons sweep of ``n_configs`` small configs (a learning-rate axis)."""
    lrs = [round(0.001 + 0.0001 * i, 6) for i in range(n_configs)]
    p = {"layers": 1, "hidden_units": 8, "learning_rate": lrs, "epochs": epochs, "batch_size": 256}
    return {"name": name, "dataset": "moons", "parameters": {**p, **params}}


def sweep(client: httpx.Client, sweep_id: int) -> dict[str, Any]:
    r = client.get(f"/api/v1/sweeps/{sweep_id}")
    r.raise_for_status()
    return r.json()


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
