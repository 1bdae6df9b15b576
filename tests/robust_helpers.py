"""Helpers for the robustness and security tests (tokens, waiting, small specs, worker logs)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.models import Trial, TrialEpoch
from app.services.tokens import create_token

# Short heartbeats and leases, so that lost workers are noticed within seconds.
FAST_LEASES = {"heartbeat_seconds": "0.5", "lease_seconds": "3", "reaper_interval_seconds": "0.5"}


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


# The API logs one line per request: JSON (``"status": 503``) off a terminal, else text.
_STATUS = re.compile(r'"status": (\d{3})|gridsweep\.http: [A-Z]+ \S+ (\d{3}) ')


def logged_statuses(text: str) -> Counter[str]:
    """Status codes of the requests the API logged (successful worker calls are DEBUG: not here)."""
    return Counter(a or b for a, b in _STATUS.findall(text))


def trial_rows(db_url: str, sweep_id: int) -> list[Trial]:
    db = Database(db_url)
    try:
        with db.session(readonly=True) as s:
            rows = s.scalars(select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.id)).all()
            s.expunge_all()
            return list(rows)
    finally:
        db.dispose()


def duplicated_epoch_rows(db_url: str) -> int:
    """Rows beyond the first for any (trial, attempt, epoch): must be 0."""
    db = Database(db_url)
    try:
        with db.session(readonly=True) as s:
            q = (
                select(func.count() - 1)
                .select_from(TrialEpoch)
                .group_by(TrialEpoch.trial_id, TrialEpoch.attempt, TrialEpoch.epoch)
                .having(func.count() > 1)
            )
            return sum(s.scalars(q).all())
    finally:
        db.dispose()


def epoch_rows_of_final_attempts(db_url: str, sweep_id: int) -> dict[int, int]:
    """{trial id: number of epoch rows of its last attempt} for the sweep's search trials."""
    db = Database(db_url)
    try:
        with db.session(readonly=True) as s:
            q = (
                select(Trial.id, func.count(TrialEpoch.id))
                .join(TrialEpoch, (TrialEpoch.trial_id == Trial.id) & (TrialEpoch.attempt == Trial.attempt))
                .where(Trial.sweep_id == sweep_id, Trial.role == "search")
                .group_by(Trial.id)
            )
            return dict(s.execute(q).all())
    finally:
        db.dispose()
