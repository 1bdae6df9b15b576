"""Extending a sweep: new values (or a larger ``max_trials``) added to a sweep, finished results reused.

Only configs the sweep has not run are added (by config hash, seed by seed); the best is then
recomputed over all of them. A finished sweep becomes ``running`` again and, once the new
trials are done, finishes with a new test evaluation only if its best config changed
(``finalize_if_done`` evaluates the best config once; an unchanged best keeps its numbers).
What a result depends on stays fixed: dataset, split, metric, method, pruner, refit, sampler
seed, select_epoch and early_stopping; a search (random / tpe / qmc) sweep keeps its space
and seeds and may only grow ``max_trials``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Sweep, SweepStatus, Trial, TrialRole
from app.services.sweeps import insert_trials, resolve_dataset
from app.spec import SpecError, SweepSpec, expand, resolve_metric, validate_spec

FIXED = ("split", "metric", "method", "pruner", "refit", "sampler_seed", "select_epoch", "early_stopping")


class ExtendConflict(Exception):
    """The sweep cannot be extended in its state (409)."""


@dataclass(frozen=True)
class Extension:
    sweep: Sweep
    added_trials: int
    added_configs: int
    reused_configs: int


def _fixed_errors(session: Session, sweep: Sweep, old: SweepSpec, new: SweepSpec) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    ds = resolve_dataset(session, new.dataset)
    resolve_metric(new, ds.facts)  # a spec naming no metric means the task's default, as at creation
    same = ds.uploaded.id == sweep.dataset_id if ds.uploaded is not None else new.dataset == sweep.dataset
    if not same or (ds.uploaded is None and sweep.dataset_id is not None):
        errors.append(
            {
                "loc": ("dataset",),
                "msg": f"an extension trains on the sweep's own dataset {sweep.dataset!r}, "
                f"got {new.dataset!r}",
            }
        )
    for name in FIXED:
        was, now = old.model_dump(mode="json")[name], new.model_dump(mode="json")[name]
        if was != now:
            errors.append(
                {
                    "loc": (name,),
                    "msg": f"{name} is fixed for an extension: the sweep has {was!r}, got {now!r}",
                }
            )
    if old.method != "grid":
        if old.model_dump(mode="json")["parameters"] != new.model_dump(mode="json")["parameters"]:
            errors.append(
                {
                    "loc": ("parameters",),
                    "msg": f"the space of a {old.method} sweep is fixed: extend it with a larger max_trials",
                }
            )
        if old.seeds != new.seeds:
            msg = f"the seeds of a {old.method} sweep are fixed: {old.seeds}"
            errors.append({"loc": ("seeds",), "msg": msg})
        if (new.max_trials or 0) < (old.max_trials or 0):
            errors.append(
                {"loc": ("max_trials",), "msg": f"max_trials can only grow: the sweep has {old.max_trials}"}
            )
    return errors


def _merged_grids(old: SweepSpec, new: SweepSpec) -> list[dict[str, Any]]:
    """The sweep's sub-grids and the new ones (each once): the stored spec names every config."""
    grids = [g.model_dump(mode="json") for g in old.grids]
    seen = {json.dumps(g, sort_keys=True) for g in grids}
    for g in new.grids:
        dumped = g.model_dump(mode="json")
        if json.dumps(dumped, sort_keys=True) not in seen:
            grids.append(dumped)
    return grids


def extend_sweep(session: Session, sweep_id: int, new: SweepSpec, settings: Settings) -> Extension:
    """Add the configs of ``new`` the sweep has not run; see the module docstring."""
    sweep = session.scalars(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).one()
    if sweep.status == SweepStatus.canceled:
        raise ExtendConflict(f"sweep {sweep.id} was canceled: it cannot be extended")
    old = SweepSpec.model_validate(sweep.spec)
    errors = _fixed_errors(session, sweep, old, new)
    if errors:
        raise SpecError(errors)
    facts = resolve_dataset(session, new.dataset).facts
    validate_spec(new, facts, settings.max_trials, settings.max_epochs, settings.max_parameters)
    present = session.execute(
        select(Trial.config_key, Trial.seed, Trial.config_index).where(
            Trial.sweep_id == sweep.id, Trial.role == TrialRole.search
        )
    ).all()
    index_of = {key: ci for key, _, ci in present}
    n_configs = len(index_of)
    stored = dict(sweep.spec)
    if old.method == "grid":
        done = {(key, seed) for key, seed, _ in present}
        next_index = max(index_of.values(), default=-1) + 1
        before = set(index_of)
        rows, reused, new_keys = [], set(), 0
        for r in expand(new, facts):
            if r.config_key in before:
                reused.add(r.config_key)
            if (r.config_key, r.seed) in done:
                continue
            if r.config_key not in index_of:
                index_of[r.config_key] = next_index
                next_index += 1
                new_keys += 1
            rows.append(replace(r, config_index=index_of[r.config_key]))
        if len(present) + len(rows) > settings.max_trials:
            raise SpecError(
                [
                    {
                        "loc": ("parameters",),
                        "msg": f"the extended sweep would have {len(present) + len(rows)} trials, "
                        f"over the limit of {settings.max_trials}",
                    }
                ]
            )
        added = insert_trials(session, sweep, rows, settings.max_attempts)
        sweep.n_trials += added
        grids = _merged_grids(old, new)
        stored["parameters"] = grids[0] if len(grids) == 1 else grids
        stored["seeds"] = old.seeds + [s for s in new.seeds if s not in old.seeds]
        grew = added > 0
        extension = Extension(sweep, added, new_keys, len(reused))
    else:
        before = sweep.n_trials
        sweep.n_trials = (new.max_trials or 0) * len(new.seeds)
        stored["max_trials"] = new.max_trials
        grew = sweep.n_trials > before
        extension = Extension(sweep, 0, (new.max_trials or 0) - (old.max_trials or 0), n_configs)
    sweep.spec = stored
    if grew and sweep.status in (SweepStatus.succeeded, SweepStatus.failed):
        sweep.status = SweepStatus.running
        sweep.finished_at = None
        sweep.error = None
    session.flush()
    return extension
