"""What a claimed trial must do besides training, and the models it hands back.

* ``final`` trials (one per seed of the best config) train on the training split and are
  scored on test; the one with the LOWEST seed uploads its model as kind ``best``.
* ``refit`` trials (``refit: true``) train on train + validation and are scored on test;
  the lowest seed uploads kind ``refit``.
* ``rerun`` trials repeat their original trial exactly (train only, or train + validation for
  a refit); they never see the test split and upload nothing.
* ``search`` trials: train, score on validation, nothing else.

A model is uploaded before the trial completes (while its lease still fences the write),
so a sweep that reads ``succeeded`` already has its models.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, undefer

from app.db import db_now
from app.models import Dataset, ModelArtifact, Sweep, Trial, TrialRole
from app.search_spec import PrunerSpec
from app.services.sweeps import TEST_ROLES

MODEL_KINDS = ("best", "refit")
MODEL_FORMATS = ("state_dict", "torchscript")
KIND_OF_ROLE = {TrialRole.final: "best", TrialRole.refit: "refit"}


def claim_plans(session: Session, trials: list[Trial], sweeps: dict[int, Sweep]) -> dict[int, dict[str, Any]]:
    """Per claimed trial: evaluate_test, refit, upload_model, dataset_id, data_hash, rungs and
    the epoch rule (metric, goal, select_epoch, early_stopping)."""
    source_roles = dict(
        session.execute(
            select(Trial.id, Trial.role).where(Trial.id.in_({t.rerun_of for t in trials if t.rerun_of}))
        ).all()
    )
    first_seed = {
        (sid, role): seed
        for sid, role, seed in session.execute(
            select(Trial.sweep_id, Trial.role, func.min(Trial.seed))
            .where(Trial.sweep_id.in_(sweeps), Trial.role.in_(TEST_ROLES))
            .group_by(Trial.sweep_id, Trial.role)
        )
    }
    hashes = dict(
        session.execute(
            select(Dataset.id, Dataset.data_hash).where(
                Dataset.id.in_({s.dataset_id for s in sweeps.values() if s.dataset_id})
            )
        ).all()
    )
    plans: dict[int, dict[str, Any]] = {}
    for t in trials:
        sweep = sweeps[t.sweep_id]
        role = source_roles.get(t.rerun_of, TrialRole.search) if t.role == TrialRole.rerun else t.role
        tests = t.role in TEST_ROLES
        plans[t.id] = {
            "evaluate_test": tests,
            "refit": role == TrialRole.refit,
            "upload_model": KIND_OF_ROLE[t.role]
            if tests and t.seed == first_seed.get((sweep.id, t.role))
            else None,
            "dataset_id": sweep.dataset_id,
            "data_hash": hashes.get(sweep.dataset_id) if sweep.dataset_id else None,
            "rungs": rungs_of(sweep, t),
            **epoch_rule(sweep, role),
        }
    return plans


def epoch_rule(sweep: Sweep, role: str) -> dict[str, Any]:
    """How a trial picks the epoch it keeps: the sweep's metric, its goal, select_epoch, early stopping.

    A refit has no validation split: it trains its ``params["epochs"]`` (the config's best epoch
    count, set when it was queued) and never stops early.
    """
    spec = sweep.spec
    return {
        "metric": sweep.metric_name,
        "goal": sweep.metric_goal,
        "select_epoch": spec.get("select_epoch") or "best",
        "early_stopping": None if role == TrialRole.refit else spec.get("early_stopping"),
    }


def rungs_of(sweep: Sweep, trial: Trial) -> list[int]:
    """The epochs at which the sweep's pruner judges a search trial (none for the others)."""
    raw = sweep.spec.get("pruner")
    if not raw or trial.role != TrialRole.search:
        return []
    return PrunerSpec.model_validate(raw).rungs(int(trial.params["epochs"]))


def store_models(session: Session, trial: Trial, kind: str, files: dict[str, bytes]) -> list[ModelArtifact]:
    """Store (or replace, on a retried attempt) the trial's model files, one row per format."""
    now = db_now(session)
    out = []
    for fmt, data in files.items():
        row = session.scalars(
            select(ModelArtifact).where(
                ModelArtifact.sweep_id == trial.sweep_id,
                ModelArtifact.kind == kind,
                ModelArtifact.format == fmt,
            )
        ).first()
        if row is None:
            row = ModelArtifact(sweep_id=trial.sweep_id, kind=kind, format=fmt)
            session.add(row)
        row.trial_id = trial.id
        row.data = data
        row.sha256 = hashlib.sha256(data).hexdigest()
        row.size_bytes = len(data)
        row.created_at = now
        out.append(row)
    session.flush()
    return out


def list_models(session: Session, sweep_id: int) -> list[ModelArtifact]:
    return list(
        session.scalars(
            select(ModelArtifact)
            .where(ModelArtifact.sweep_id == sweep_id)
            .order_by(ModelArtifact.kind, ModelArtifact.format)
        ).all()
    )


def get_model(session: Session, sweep_id: int, kind: str, fmt: str) -> ModelArtifact | None:
    return session.scalars(
        select(ModelArtifact)
        .where(ModelArtifact.sweep_id == sweep_id, ModelArtifact.kind == kind, ModelArtifact.format == fmt)
        .options(undefer(ModelArtifact.data))
    ).first()
