"""Configs of random, tpe and qmc sweeps: Optuna's samplers by ask-and-tell, the store the one truth.

A search sweep is stored with no trial. Before a worker claims, ``top_up_active`` queues
enough configs of each running search sweep to fill the worker's pack (``max_trials`` of
the claim): one batch of asks, so TPE sees the pending ones through its constant liar.

* Every finished config is told to Optuna (the mean of the sweep's metric over its seeds;
  a diverged or pruned config as pruned, which TPE ranks below every finished one; a failed
  or canceled one as failed).
* A suggestion whose config hash is already in the sweep (or is not a valid config) is told
  as failed and asked again: the sweep never queues a config twice.
* The store is the truth: Optuna's in-memory study is a cache per API process, keyed by the
  sweep and checked against the configs the store holds (their count and hashes), rebuilt
  from the store whenever they disagree (after a restart, or configs queued by another replica).
* Seeded: the sampler is seeded from ``sampler_seed`` and the number of configs so far, so
  the same spec and results give the same suggestions, restart or not (QMC keeps one
  sequence; a rebuilt one skips the points already in the store).
* Several API replicas: suggestions are made under a row lock on the sweep, so two replicas
  never queue the same config index.

Optuna is imported here, on the first search sweep only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Sweep, SweepStatus, Trial, TrialRole, TrialStatus
from app.search_spec import Distribution
from app.services.sweeps import finalize_if_done, insert_trials, resolve_dataset
from app.spec import AXES, DataFacts, Parameters, SweepSpec, config_rows, resolve_params, trial_keys
from gridsweep.vocab import resolve_loss

log = logging.getLogger("gridsweep.search")

ACTIVE = (SweepStatus.queued, SweepStatus.running)
PENDING = (TrialStatus.queued, TrialStatus.running)
INT_AXES = ("layers", "hidden_units")


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Space:
    """A sweep's search space as Optuna distributions, and the fixed parameters."""

    distributions: dict[str, Any]
    fixed: dict[str, Any]
    encoded: frozenset[str]  # categorical axes whose choices are JSON text (per-layer width lists)

    def to_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A config (every axis, in order) from Optuna's suggestion."""
        out = {}
        for axis in AXES:
            if axis in self.fixed:
                out[axis] = self.fixed[axis]
                continue
            v = sampled[axis]
            out[axis] = json.loads(v) if axis in self.encoded else int(v) if axis in INT_AXES else v
        return out

    def to_optuna(self, params: dict[str, Any]) -> dict[str, Any]:
        return {a: json.dumps(params[a]) if a in self.encoded else params[a] for a in self.distributions}


def build_space(grid: Parameters, facts: DataFacts) -> Space:
    """Distributions become Float/Int distributions, lists of several values categories
    (losses resolved for the task, so a suggestion is what is trained and stored)."""
    d = _optuna().distributions
    dists: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    encoded = set()
    for axis in AXES:
        v = getattr(grid, axis)
        if isinstance(v, Distribution):
            if axis in INT_AXES:
                dists[axis] = d.IntDistribution(int(v.min), int(v.max), log=v.log)
            else:
                dists[axis] = d.FloatDistribution(v.min, v.max, log=v.log)
            continue
        values = [resolve_loss(x, facts.task, facts.n_classes) for x in v] if axis == "loss" else list(v)
        if len(values) == 1:
            fixed[axis] = values[0]
        elif any(isinstance(x, list) for x in values):
            encoded.add(axis)
            dists[axis] = d.CategoricalDistribution([json.dumps(x) for x in values])
        else:
            dists[axis] = d.CategoricalDistribution(values)
    return Space(dists, fixed, frozenset(encoded))


@dataclass
class StoredConfig:
    """One config of the sweep as the store has it, in Optuna's terms."""

    index: int
    key: str
    state: str  # "running" | "complete" | "pruned" | "fail"
    value: float | None = None


def stored_configs(session: Session, sweep: Sweep) -> list[StoredConfig]:
    """The sweep's configs by config index, each with its state and mean metric over seeds."""
    metric = getattr(Trial, sweep.metric_name)
    rows = session.execute(
        select(Trial.config_index, Trial.config_key, Trial.status, metric)
        .where(Trial.sweep_id == sweep.id, Trial.role == TrialRole.search)
        .order_by(Trial.config_index, Trial.seed)
    ).all()
    grouped: dict[int, list[Any]] = {}
    for r in rows:
        grouped.setdefault(r[0], []).append(r)
    out = []
    for index, trials in grouped.items():
        statuses = {t[2] for t in trials}
        values = [t[3] for t in trials if t[2] == TrialStatus.succeeded and t[3] is not None]
        if statuses & set(PENDING):
            state = "running"
        elif statuses & {TrialStatus.pruned, TrialStatus.diverged}:
            state = "pruned"
        elif values:
            state = "complete"
        else:
            state = "fail"
        out.append(StoredConfig(index, trials[0][1], state, statistics.fmean(values) if values else None))
    return out


@dataclass
class CachedStudy:
    """Optuna's study of one sweep in this process, and which store config each trial is."""

    study: Any
    keys: list[str] = field(default_factory=list)  # config_key by config index
    numbers: list[int] = field(default_factory=list)  # Optuna trial number by config index
    states: list[str] = field(default_factory=list)  # what Optuna was told, by config index
    sampler: Any = None  # qmc: one sequence for the sweep


_CACHE: dict[int, CachedStudy] = {}
_LOCK = threading.Lock()


def _tell_args(optuna: Any, c: StoredConfig) -> dict[str, Any]:
    state = {"complete": "COMPLETE", "pruned": "PRUNED", "fail": "FAIL", "running": "RUNNING"}[c.state]
    args: dict[str, Any] = {"state": getattr(optuna.trial.TrialState, state)}
    if c.state == "complete":
        args["value"] = c.value
    return args


def _new_study(optuna: Any, sweep: Sweep, spec: SweepSpec) -> CachedStudy:
    study = optuna.create_study(direction=sweep.metric_goal)
    entry = CachedStudy(study)
    if spec.method == "qmc":
        with warnings.catch_warnings():  # "QMCSampler is experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            entry.sampler = optuna.samplers.QMCSampler(
                seed=spec.sampler_seed,
                scramble=True,
                independent_sampler=optuna.samplers.RandomSampler(seed=spec.sampler_seed),
                warn_asynchronous_seeding=False,
                warn_independent_sampling=False,
            )
    return entry


def synced_study(session: Session, sweep: Sweep, spec: SweepSpec, space: Space) -> CachedStudy:
    """The sweep's study, brought in line with the store (rebuilt when the cache disagrees)."""
    optuna = _optuna()
    configs = stored_configs(session, sweep)
    params_of: dict[int, dict[str, Any]] = {}
    entry = _CACHE.get(sweep.id)
    known = len(entry.keys) if entry is not None else 0
    if entry is None or known > len(configs) or any(entry.keys[i] != configs[i].key for i in range(known)):
        entry, known = _new_study(optuna, sweep, spec), 0
    if len(configs) > known:
        for ci, params in session.execute(
            select(Trial.config_index, Trial.params).where(
                Trial.sweep_id == sweep.id, Trial.role == TrialRole.search, Trial.config_index >= known
            )
        ):
            params_of.setdefault(ci, params)
    for c in configs[known:]:
        args = _tell_args(optuna, c)
        entry.study.add_trial(
            optuna.trial.create_trial(
                params=space.to_optuna(params_of[c.index]), distributions=space.distributions, **args
            )
        )
        entry.keys.append(c.key)
        entry.numbers.append(len(entry.study.trials) - 1)
        entry.states.append(c.state)
    for c in configs[:known]:  # results that came in since the last batch
        if entry.states[c.index] == "running" and c.state != "running":
            args = _tell_args(optuna, c)
            if "value" in args:  # create_trial takes `value`, tell takes `values`
                args["values"] = args.pop("value")
            entry.study.tell(entry.numbers[c.index], **args)
            entry.states[c.index] = c.state
    _CACHE[sweep.id] = entry
    return entry


def _seed(base: int, n: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{n}".encode()).digest()[:4], "big")


def _sampler(optuna: Any, spec: SweepSpec, entry: CachedStudy) -> Any:
    """The batch's sampler: seeded by the spec and the configs so far (qmc: the sweep's sequence)."""
    if spec.method == "qmc":
        return entry.sampler
    seed = _seed(spec.sampler_seed, len(entry.keys))
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def ask_configs(entry: CachedStudy, spec: SweepSpec, space: Space, facts: DataFacts, need: int) -> list[dict]:
    """Up to ``need`` new configs (none already in the sweep), recorded in ``entry`` as running."""
    optuna = _optuna()
    entry.study.sampler = _sampler(optuna, spec, entry)
    taken = set(entry.keys)
    out: list[dict[str, Any]] = []
    # Duplicates are skipped; a space that is nearly used up ends the search early.
    budget = need * 20 + 50 + (len(taken) if spec.method == "qmc" else 0)
    for _ in range(budget):
        if len(out) >= need:
            break
        trial = entry.study.ask(space.distributions)
        params = resolve_params(space.to_params(trial.params), facts)
        width = params["hidden_units"]
        key = trial_keys(spec, params)[0]
        if (isinstance(width, list) and len(width) != params["layers"]) or key in taken:
            entry.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        taken.add(key)
        out.append(params)
        entry.keys.append(key)
        entry.numbers.append(trial.number)
        entry.states.append("running")
    return out


def _counts(session: Session, sweep_id: int) -> tuple[int, int]:
    """(configs made, trials queued) of a search sweep."""
    search = (Trial.sweep_id == sweep_id, Trial.role == TrialRole.search)
    made = session.scalar(select(func.max(Trial.config_index)).where(*search))
    queued = session.scalar(select(func.count()).where(*search, Trial.status == TrialStatus.queued))
    return (made + 1 if made is not None else 0), queued or 0


def _need(sweep: Sweep, n_seeds: int, want_trials: int, made: int, queued: int) -> int:
    budget = sweep.n_trials // n_seeds
    return min(budget - made, -(-want_trials // n_seeds) - -(-queued // n_seeds))


def top_up(session: Session, sweep_id: int, want_trials: int, max_attempts: int) -> int:
    """Queue configs until ``want_trials`` trials of the sweep are queued (within its budget);
    returns how many trials were added. Runs under a row lock on the sweep."""
    sweep = session.scalars(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).first()
    if sweep is None or sweep.method == "grid" or sweep.status not in ACTIVE:
        return 0
    spec = SweepSpec.model_validate(sweep.spec)
    n_seeds = len(spec.seeds)
    made, queued = _counts(session, sweep.id)  # again, under the lock
    need = _need(sweep, n_seeds, want_trials, made, queued)
    if need <= 0:
        return 0
    facts = resolve_dataset(session, sweep.dataset).facts
    space = build_space(spec.grids[0], facts)
    with _LOCK:
        entry = synced_study(session, sweep, spec, space)
        configs = ask_configs(entry, spec, space, facts, need)
    rows = [r for j, params in enumerate(configs) for r in config_rows(spec, params, made + j)]
    added = insert_trials(session, sweep, rows, max_attempts)
    if len(configs) < need:
        # The space ran out of new configs: the sweep ends with what it has.
        sweep.n_trials = (made + len(configs)) * n_seeds
        log.info("sweep %d: the space has no new config left, ending at %d", sweep.id, made + len(configs))
        session.flush()
        finalize_if_done(session, sweep.id)
    return added


def top_up_active(session: Session, want_trials: int, max_attempts: int) -> int:
    """Before a claim: top up every queued or running search sweep that has fewer than
    ``want_trials`` trials queued and configs left to suggest."""
    added = 0
    rows = session.execute(
        select(Sweep.id, Sweep.n_trials, Sweep.spec)
        .where(Sweep.status.in_(ACTIVE), Sweep.method != "grid")
        .order_by(Sweep.id)
    ).all()
    for sweep_id, n_trials, spec in rows:
        n_seeds = len(spec.get("seeds") or [0])
        made, queued = _counts(session, sweep_id)
        if queued >= want_trials or made >= n_trials // n_seeds:
            continue
        added += top_up(session, sweep_id, want_trials, max_attempts)
    return added


def forget(sweep_id: int) -> None:
    """Drop a sweep's cached study (the next batch rebuilds it from the store)."""
    with _LOCK:
        _CACHE.pop(sweep_id, None)
