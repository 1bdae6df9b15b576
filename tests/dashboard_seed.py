"""A seeded store (and the browser) for the dashboard tests and bench: sweeps run through the real services.

Trials are claimed, reported and completed with the worker protocol's service functions
(the same code the HTTP routes call), with made-up but deterministic metrics, so that the
numbers a page shows can be checked against the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.models import Trial, Worker
from app.services import trials as trial_service
from app.services.sweeps import create_sweep
from app.spec import SweepSpec

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `playwright install` cannot download here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LEASE_SECONDS = 3600.0  # seeded running trials stay running for the whole test
# An outcome: ("succeeded", final val_loss) | ("diverged", epoch) | ("failed", message) | None (keep running)
Outcome = tuple[str, Any] | None


def val_loss_of(params: dict[str, Any], seed: int) -> float:
    """A smooth made-up landscape: best near lr 0.01, wide layers, relu."""
    lr = params["learning_rate"]
    width = params["hidden_units"] if isinstance(params["hidden_units"], int) else sum(params["hidden_units"])
    loss = 0.12 + 0.09 * abs(math.log10(lr) + 2) ** 1.5 + 0.6 / width**0.5 + 0.015 * (params["layers"] - 1)
    return round(loss + (0.012 if params["activation"] != "relu" else 0.0) + 0.004 * seed, 6)


def curve(final: float, epochs: int) -> list[float]:
    """Validation loss falling from ~1 towards ``final``, reaching it at the last epoch."""
    return [
        round(final + (0.9 - final) * (math.exp(-e / 1.5) - math.exp(-epochs / 1.5)), 6)
        for e in range(1, epochs + 1)
    ]


@dataclass
class Seeded:
    finished_id: int
    running_id: int
    queued_id: int = 0  # one config, nothing run yet
    # The running sweep's trials left running: (trial id, lease token, worker id).
    running: list[tuple[int, str, str]] = field(default_factory=list)
    workers: dict[str, str] = field(default_factory=dict)


def register(db: Database, name: str, device: str) -> str:
    with db.session() as s:
        return trial_service.register_worker(s, name, f"{name}.local", device).id


def run_trials(
    db: Database,
    worker_id: str,
    outcome: Callable[[Trial], Outcome],
    max_trials: int = 1,
    limit: int | None = None,
) -> list[tuple[int, str]]:
    """Claim trials as ``worker_id`` until none is queued (or ``limit`` claimed) and end each as
    ``outcome`` says; returns the (trial id, lease token) of those left running."""
    left: list[tuple[int, str]] = []
    claimed = 0
    while limit is None or claimed < limit:
        with db.session() as s:
            worker = s.get(Worker, worker_id)
            assert worker is not None
            n = max_trials if limit is None else min(max_trials, limit - claimed)
            batch = trial_service.claim(s, worker, n, LEASE_SECONDS)
            # A claim must not return more than asked (an UPDATE ... IN (SELECT ... LIMIT n) can, on
            # PostgreSQL); give any extra back so that the seeded store has the intended shape.
            extra = batch[n:]
            trial_service.release(s, [trial_service.Lease(t.id, t.lease_token or "") for t in extra])
            batch = batch[:n]
            jobs = [(t.id, t.lease_token, t.role, t.params, t.seed, outcome(t)) for t in batch]
        if not jobs:
            break
        claimed += len(jobs)
        reports, outcomes = [], []
        for tid, token, role, params, seed, result in jobs:
            epochs = params["epochs"]
            if result is None:  # keep running: two epochs reported
                values = curve(val_loss_of(params, seed), epochs)[:2]
                left.append((tid, token))
            elif result[0] == "succeeded":
                values = curve(result[1], epochs)
            elif result[0] == "diverged":
                values = [*curve(1.0, epochs)[: result[1] - 1], math.nan]
            else:
                values = curve(val_loss_of(params, seed), epochs)[:1]
            for e, v in enumerate(values, start=1):
                finite = v if math.isfinite(v) else None
                reports.append(
                    {
                        "trial_id": tid,
                        "lease_token": token,
                        "epoch": e,
                        "train_loss": None if finite is None else v * 0.9,
                        "val_loss": finite,
                        "val_error": None if finite is None else v / 4,
                        "val_accuracy": None if finite is None else 1 - v / 4,
                    }
                )
            if result is None:
                continue
            final = values[-1] if math.isfinite(values[-1]) else None
            metrics: dict[str, float | None] = {
                "train_loss": None if final is None else final * 0.9,
                "val_loss": final,
                "val_error": None if final is None else final / 4,
                "val_accuracy": None if final is None else 1 - final / 4,
            }
            if role == "final":
                metrics.update(test_loss=final * 1.1, test_error=final / 3.5, test_accuracy=1 - final / 3.5)
            error = {"diverged": f"val loss became nan in epoch {len(values)}", "failed": result[1]}.get(
                result[0]
            )
            outcomes.append(
                {
                    "trial_id": tid,
                    "lease_token": token,
                    "status": result[0],
                    "metrics": metrics,
                    "epochs_done": len(values),
                    "error": error,
                    "device": None,
                    "duration_seconds": round(0.4 + 0.37 * (tid % 7), 2),
                }
            )
        with db.session() as s:
            if reports:
                trial_service.report_epochs(s, reports, LEASE_SECONDS)
            if outcomes:
                trial_service.complete(s, outcomes)
    return left


FINISHED_SPEC = {
    "name": "moons-grid",
    "dataset": "moons",
    "metric": "val_loss",  # the test plays the worker and reports val_loss: rank by it
    "parameters": {
        "layers": [1, 2],
        "hidden_units": [8, 32, 128],
        "activation": ["relu", "tanh"],
        "learning_rate": [0.001, 0.01, 0.1, 1.0],
        "epochs": 6,
    },
    "seeds": [0, 1],
}
RUNNING_SPEC = {
    "name": "circles-live",
    "dataset": "circles",
    "metric": {"name": "val_accuracy"},
    "parameters": {
        "hidden_units": [16, 64],
        "activation": ["relu", "gelu"],
        "learning_rate": [0.003, 0.03, 0.3],
        "epochs": 5,
    },
}

QUEUED_SPEC = {
    "name": "single-config",
    "dataset": "digits",
    "metric": "val_loss",
    "parameters": {"hidden_units": 32, "epochs": 3},
}


def finished_outcome(t: Trial) -> Outcome:
    p = t.params
    if p["learning_rate"] == 1.0 and p["activation"] == "tanh" and (p["layers"] == 2 or t.seed == 1):
        return ("diverged", 3)
    if p["learning_rate"] == 0.1 and p["hidden_units"] == 8 and p["layers"] == 1 and t.seed == 1:
        return ("failed", "RuntimeError: CUDA error: an illegal memory access was encountered")
    return ("succeeded", val_loss_of(p, t.seed))


def seed_store(db_url: str) -> Seeded:
    """A finished sweep (with failed and diverged trials and its test evaluation), a running one,
    and a queued one-config sweep (no grid axis, nothing run)."""
    settings = Settings(database_url=db_url)
    db = Database(db_url)
    try:
        with db.session() as s:
            finished = create_sweep(s, SweepSpec.model_validate(FINISHED_SPEC), settings).id
        seeded = Seeded(finished_id=finished, running_id=0)
        seeded.workers["cpu"] = register(db, "cpu-worker-1", "cpu")
        run_trials(db, seeded.workers["cpu"], finished_outcome, max_trials=8)
        with db.session() as s:
            seeded.running_id = create_sweep(s, SweepSpec.model_validate(RUNNING_SPEC), settings).id
        # Six trials end (one diverged, one failed), two are left running on the GPU worker, four stay queued.
        plan: list[Outcome] = [
            ("succeeded", 0.31),
            ("succeeded", 0.22),
            ("diverged", 2),
            ("succeeded", 0.27),
            ("failed", "ValueError: bad batch"),
            ("succeeded", 0.35),
        ]
        run_trials(db, seeded.workers["cpu"], lambda t: plan.pop(0), limit=6)
        seeded.workers["gpu"] = register(db, "gpu-box-1", "cuda:0")
        left = run_trials(db, seeded.workers["gpu"], lambda t: None, limit=2)
        seeded.running = [(tid, token, seeded.workers["gpu"]) for tid, token in left]
        with db.session() as s:
            seeded.queued_id = create_sweep(s, SweepSpec.model_validate(QUEUED_SPEC), settings).id
        return seeded
    finally:
        db.dispose()
