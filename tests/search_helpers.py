"""Helpers for the search, pruning, importance and extension tests: sweeps driven through the
real services (claim, epoch reports, complete) in transactions of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.models import Sweep, Trial, Worker
from app.services import search
from app.services.sweeps import create_sweep
from app.services.trials import claim, complete, register_worker, report_epochs
from app.spec import SweepSpec

Curve = Callable[[dict[str, Any], int], list[float]]  # (params, seed) -> the metric per epoch


def new_sweep(database: Database, settings: Settings, **raw: Any) -> int:
    # The tests play the worker and report val_loss: the sweeps rank by it (not moons' default).
    spec = SweepSpec.model_validate({"name": "t", "dataset": "moons", "metric": "val_loss", **raw})
    with database.session() as s:
        return create_sweep(s, spec, settings).id


def sweep_of(database: Database, sweep_id: int) -> Sweep:
    with database.session() as s:
        return s.get(Sweep, sweep_id)  # type: ignore[return-value]


def trials_of(database: Database, sweep_id: int, role: str | None = "search") -> list[Trial]:
    with database.session() as s:
        q = select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.config_index, Trial.seed, Trial.id)
        if role is not None:
            q = q.where(Trial.role == role)
        return list(s.scalars(q))


def new_worker(database: Database) -> str:
    with database.session() as s:
        return register_worker(s, "w", "host", "cpu").id


def claim_pack(database: Database, worker_id: str, n: int, settings: Settings) -> list[Trial]:
    """What the claim route does: top up search sweeps, then claim."""
    with database.session() as s:
        search.top_up_active(s, n, settings.max_attempts)
        return claim(s, s.get(Worker, worker_id), n, 60.0)


def train_pack(
    database: Database, pack: list[Trial], curve: Curve, metric: str = "val_loss"
) -> dict[int, str]:
    """Report each trial's curve epoch by epoch, the pack together (as a fused worker does);
    a trial the API answers ``prune`` stops and ends pruned. Returns each trial's end."""
    ended: dict[int, str] = {}
    curves = {t.id: curve(t.params, t.seed) for t in pack}
    epochs = max(int(t.params["epochs"]) for t in pack)
    live = list(pack)
    for epoch in range(1, epochs + 1):
        reports = [
            {
                "trial_id": t.id,
                "lease_token": t.lease_token,
                "epoch": epoch,
                "train_loss": 1.0,
                metric: curves[t.id][epoch - 1],
            }
            for t in live
        ]
        with database.session() as s:
            states = report_epochs(s, reports, 60.0)
        for t in live:
            if states[t.id] == "prune":
                ended[t.id] = "pruned"
        done = [t for t in live if t.id in ended]
        live = [t for t in live if t.id not in ended]
        outcomes = [
            {
                "trial_id": t.id,
                "lease_token": t.lease_token,
                "status": "pruned",
                "epochs_done": epoch,
                "metrics": {metric: curves[t.id][epoch - 1]},
            }
            for t in done
        ]
        if outcomes:
            with database.session() as s:
                complete(s, outcomes)
    outcomes = []
    for t in live:
        ended[t.id] = "succeeded"
        value = curves[t.id][-1]
        outcomes.append(
            {
                "trial_id": t.id,
                "lease_token": t.lease_token,
                "status": "succeeded",
                "epochs_done": epochs,
                "metrics": {metric: value, "test_loss": value, "test_accuracy": 0.9, "test_error": 0.1},
            }
        )
    if outcomes:
        with database.session() as s:
            complete(s, outcomes)
    return ended


def run_all(
    database: Database, settings: Settings, curve: Curve, pack: int = 4, metric: str = "val_loss"
) -> int:
    """Claim and train until nothing is left; returns how many claims it took."""
    worker = new_worker(database)
    claims = 0
    while claimed := claim_pack(database, worker, pack, settings):
        claims += 1
        train_pack(database, claimed, curve, metric)
    return claims


def flat(value: Callable[[dict[str, Any]], float]) -> Curve:
    """A curve that is ``value(params)`` at every epoch."""
    return lambda params, seed: [value(params)] * int(params["epochs"])
