"""Pruning: the sweep's pruner judges search trials at epoch rungs as their epoch reports arrive.

The rules are Optuna's, read from the store instead of a study:

* ``median`` (MedianPruner): at a rung epoch, once ``n_startup_trials`` trials of the sweep
  succeeded, a trial is pruned when its best value so far is worse than the median, at that
  epoch, of the succeeded trials' values (at least ``n_min_trials`` of them).
* ``asha`` (SuccessiveHalvingPruner): at rung ``k`` (epoch ``min_resource * eta ** (rate + k)``)
  the trial's value competes with every trial of the sweep that reached that epoch (its
  pack-mates, which report together, included); it goes on only if it is within the best
  ``len // eta`` of them (the best one while there are fewer than ``eta``).

A rung is never a trial's last epoch (nothing would be saved). Every decision is stored in
``trial_rung`` with its value, threshold and reason: a retried report, another replica or a
restarted API reads it back. A would-be-pruned config picked by ``pruner.audit`` (seeded, by
config hash) is recorded ``audit`` and trains to the end; ``pruning_report`` tells how many of
those would have beaten the best survivor. When one seed of a config is pruned, its other
seeds are pruned at their next report (a pruned config never ranks).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.db import db_now, insert_ignore
from app.models import RungDecision, Sweep, Trial, TrialEpoch, TrialRole, TrialRung, TrialStatus
from app.search_spec import PrunerSpec, audited


def _epoch_values(session: Session, sweep: Sweep, epoch: int, succeeded_only: bool) -> dict[int, float]:
    """Trial id -> the sweep's metric at ``epoch`` (current attempts of search trials)."""
    col = getattr(TrialEpoch, sweep.metric_name)
    q = (
        select(TrialEpoch.trial_id, col)
        .join(Trial, and_(Trial.id == TrialEpoch.trial_id, Trial.attempt == TrialEpoch.attempt))
        .where(Trial.sweep_id == sweep.id, Trial.role == TrialRole.search, TrialEpoch.epoch == epoch)
    )
    if succeeded_only:
        q = q.where(Trial.status == TrialStatus.succeeded)
    return {tid: v for tid, v in session.execute(q) if v is not None and math.isfinite(v)}


def _n_succeeded(session: Session, sweep: Sweep) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                Trial.sweep_id == sweep.id,
                Trial.role == TrialRole.search,
                Trial.status == TrialStatus.succeeded,
            )
        )
        or 0
    )


def _best_so_far(session: Session, sweep: Sweep, trials: list[Trial]) -> dict[int, dict[int, float]]:
    """Trial id -> {epoch: metric} of its current attempt."""
    col = getattr(TrialEpoch, sweep.metric_name)
    out: dict[int, dict[int, float]] = {t.id: {} for t in trials}
    attempts = {t.id: t.attempt for t in trials}
    for tid, attempt, epoch, v in session.execute(
        select(TrialEpoch.trial_id, TrialEpoch.attempt, TrialEpoch.epoch, col).where(
            TrialEpoch.trial_id.in_(list(attempts))
        )
    ):
        if attempt == attempts[tid] and v is not None:
            out[tid][epoch] = v
    return out


class Judge:
    """One sweep's pruner over one batch of epoch reports (queries shared per epoch)."""

    def __init__(self, session: Session, sweep: Sweep, pruner: PrunerSpec) -> None:
        self.session, self.sweep, self.pruner = session, sweep, pruner
        self.minimize = sweep.metric_goal == "minimize"
        self.metric = sweep.metric_name
        self._values: dict[tuple[int, bool], dict[int, float]] = {}
        self._n_ok: int | None = None

    def values(self, epoch: int, succeeded_only: bool) -> dict[int, float]:
        key = (epoch, succeeded_only)
        if key not in self._values:
            self._values[key] = _epoch_values(self.session, self.sweep, epoch, succeeded_only)
        return self._values[key]

    def n_succeeded(self) -> int:
        if self._n_ok is None:
            self._n_ok = _n_succeeded(self.session, self.sweep)
        return self._n_ok

    def judge(self, epoch: int, value: float, history: dict[int, float]) -> dict[str, Any] | None:
        """{would_prune, threshold, n_compared, reason} at a rung, or None when it cannot decide yet."""
        if self.pruner.type == "median":
            return self._median(epoch, history)
        return self._asha(epoch, value)

    def _median(self, epoch: int, history: dict[int, float]) -> dict[str, Any] | None:
        p = self.pruner
        n_ok = self.n_succeeded()
        if n_ok == 0 or n_ok < p.setting("n_startup_trials"):
            return None
        values = list(self.values(epoch, succeeded_only=True).values())
        return median_rule(epoch, history, values, self.minimize, p.setting("n_min_trials"), self.metric)

    def _asha(self, epoch: int, value: float) -> dict[str, Any]:
        competing = list(self.values(epoch, succeeded_only=False).values())
        return asha_rule(epoch, value, competing, self.minimize, self.pruner, self.metric)


def median_rule(
    epoch: int, history: dict[int, float], values: list[float], minimize: bool, n_min: int, metric: str
) -> dict[str, Any] | None:
    """Optuna's MedianPruner at ``epoch``: the trial's best value so far against the median of
    the finished trials' ``values`` at that epoch; None while fewer than ``n_min`` values."""
    if len(values) < n_min:
        return None
    seen = [v for e, v in history.items() if e <= epoch]
    best = min(seen) if minimize else max(seen)
    median = float(np.percentile(np.array(values, dtype=float), 50))
    worse = best > median if minimize else best < median
    return {
        "would_prune": worse,
        "value": best,
        "threshold": median,
        "n_compared": len(values),
        "reason": f"epoch {epoch}: best {metric} so far {best:.6g} is "
        f"{'worse than' if worse else 'not worse than'} the median {median:.6g} "
        f"of the {len(values)} finished trials at that epoch",
    }


def asha_rule(
    epoch: int, value: float, competing: list[float], minimize: bool, pruner: PrunerSpec, metric: str
) -> dict[str, Any]:
    """Optuna's SuccessiveHalvingPruner at a rung: ``competing`` holds the values of every trial
    that reached the rung, this one included."""
    eta = pruner.setting("reduction_factor")
    competing = sorted(competing)
    rung = pruner.rungs(10**9).index(epoch)
    if len(competing) <= pruner.setting("bootstrap_count"):
        return {
            "would_prune": True,
            "value": value,
            "threshold": None,
            "n_compared": len(competing),
            "reason": f"epoch {epoch} (rung {rung}): only {len(competing)} trials reached it, "
            f"bootstrap_count is {pruner.setting('bootstrap_count')}",
        }
    idx = max(len(competing) // eta - 1, 0)
    cut = competing[idx] if minimize else competing[-(idx + 1)]
    keep = value <= cut if minimize else value >= cut
    return {
        "would_prune": not keep,
        "value": value,
        "threshold": cut,
        "n_compared": len(competing),
        "reason": f"epoch {epoch} (rung {rung}): {metric} {value:.6g} is "
        f"{'within' if keep else 'outside'} the best {max(len(competing) // eta, 1)} of the "
        f"{len(competing)} trials that reached this rung (cut-off {cut:.6g})",
    }


def _pruned_configs(session: Session, sweep_ids: set[int], keys: set[str]) -> dict[tuple[int, str], str]:
    """(sweep, config key) -> why, for the configs among ``keys`` one of whose seeds was pruned."""
    out: dict[tuple[int, str], str] = {}
    for sid, key, seed, epoch in session.execute(
        select(Trial.sweep_id, Trial.config_key, Trial.seed, TrialRung.epoch)
        .join(TrialRung, and_(TrialRung.trial_id == Trial.id, TrialRung.attempt == Trial.attempt))
        .where(Trial.sweep_id.in_(sweep_ids), Trial.config_key.in_(keys), TrialRung.decision == "prune")
    ):
        out.setdefault((sid, key), f"seed {seed} of this config was pruned at epoch {epoch}")
    return out


def decide(session: Session, held: Iterable[Trial], reports: list[dict[str, Any]]) -> set[int]:
    """Judge the reported epochs (already stored) at their rungs; return the trials to prune."""
    search = [t for t in held if t.role == TrialRole.search]
    if not search:
        return set()
    sweeps = {
        s.id: s
        for s in session.scalars(select(Sweep).where(Sweep.id.in_({t.sweep_id for t in search})))
        if s.spec.get("pruner")
    }
    trials = {t.id: t for t in search if t.sweep_id in sweeps}
    if not trials:
        return set()
    stored: dict[tuple[int, int], str] = {}
    for tid, attempt, epoch, decision in session.execute(
        select(TrialRung.trial_id, TrialRung.attempt, TrialRung.epoch, TrialRung.decision).where(
            TrialRung.trial_id.in_(list(trials))
        )
    ):
        if attempt == trials[tid].attempt:
            stored[(tid, epoch)] = decision
    done = {tid for (tid, _), d in stored.items() if d in ("prune", "audit")}
    prune = {tid for (tid, _), d in stored.items() if d == "prune"}
    by_config = _pruned_configs(session, set(sweeps), {t.config_key for t in trials.values()})
    history = {}
    for sid, sweep in sweeps.items():
        history.update(_best_so_far(session, sweep, [t for t in trials.values() if t.sweep_id == sid]))
    judges = {
        sid: Judge(session, s, PrunerSpec.model_validate(s.spec["pruner"])) for sid, s in sweeps.items()
    }
    now = db_now(session)
    rows: list[dict[str, Any]] = []

    def record(t: Trial, epoch: int, decision: str, reason: str, **numbers: Any) -> None:
        rows.append(
            {
                "sweep_id": t.sweep_id,
                "trial_id": t.id,
                "attempt": t.attempt,
                "epoch": epoch,
                "value": numbers.get("value"),
                "threshold": numbers.get("threshold"),
                "n_compared": numbers.get("n_compared", 0),
                "decision": decision,
                "reason": reason[:2000],
                "created_at": now,
            }
        )

    for r in sorted(reports, key=lambda r: (r["epoch"], r["trial_id"])):
        t = trials.get(r["trial_id"])
        if t is None or t.id in done or (t.id, r["epoch"]) in stored:
            continue
        judge = judges[t.sweep_id]
        epoch, value = r["epoch"], r.get(judge.metric)
        sibling = by_config.get((t.sweep_id, t.config_key))
        if sibling is not None:
            record(t, epoch, "prune", sibling)
            done.add(t.id)
            prune.add(t.id)
            continue
        if value is None or epoch not in judge.pruner.rungs(int(t.params["epochs"])):
            continue
        verdict = judge.judge(epoch, value, history.get(t.id, {}))
        if verdict is None:
            continue
        reason = verdict.pop("reason")
        if not verdict.pop("would_prune"):
            record(t, epoch, RungDecision.go_on, reason, **verdict)
            continue
        spec = sweeps[t.sweep_id].spec
        if audited(spec.get("sampler_seed") or 0, t.config_key, judge.pruner.audit):
            kept = reason + "; kept training by the audit (pruner.audit)"
            record(t, epoch, RungDecision.audit, kept, **verdict)
            done.add(t.id)
            continue
        record(t, epoch, RungDecision.prune, reason, **verdict)
        done.add(t.id)
        prune.add(t.id)
        by_config[(t.sweep_id, t.config_key)] = f"seed {t.seed} of this config was pruned at epoch {epoch}"
    if rows:
        session.execute(insert_ignore(session, TrialRung.__table__), rows)
    return prune


def prune_decided(session: Session, trial_ids: list[int]) -> set[int]:
    """The trials among ``trial_ids`` whose current attempt has a prune decision."""
    if not trial_ids:
        return set()
    return set(
        session.scalars(
            select(TrialRung.trial_id)
            .join(Trial, and_(Trial.id == TrialRung.trial_id, Trial.attempt == TrialRung.attempt))
            .where(TrialRung.trial_id.in_(trial_ids), TrialRung.decision == "prune")
        )
    )


def pruning_report(session: Session, sweep: Sweep) -> dict[str, Any] | None:
    """What the pruner did: trials pruned, epochs saved and, with ``audit``, whether the
    audited would-be-pruned configs would have beaten the best config that was never judged bad."""
    raw = sweep.spec.get("pruner")
    if not raw:
        return None
    pruner = PrunerSpec.model_validate(raw)
    minimize = sweep.metric_goal == "minimize"
    metric = getattr(Trial, sweep.metric_name)
    trials = session.execute(
        select(Trial.id, Trial.config_index, Trial.status, metric, Trial.epochs_done, Trial.params).where(
            Trial.sweep_id == sweep.id, Trial.role == TrialRole.search
        )
    ).all()
    flagged: dict[int, str] = dict(
        session.execute(
            select(TrialRung.trial_id, TrialRung.decision).where(
                TrialRung.sweep_id == sweep.id, TrialRung.decision.in_(["prune", "audit"])
            )
        ).all()
    )
    config_of = {t[0]: t[1] for t in trials}
    audited_cfg = {config_of[tid] for tid, d in flagged.items() if d == "audit" and tid in config_of}
    judged_bad = {config_of[tid] for tid in flagged if tid in config_of}
    values: dict[int, list[float]] = {}
    spoiled: set[int] = set()  # configs that cannot rank (a diverged or pruned seed)
    for _, ci, status, value, _, _ in trials:
        if status == TrialStatus.succeeded and value is not None:
            values.setdefault(ci, []).append(value)
        elif status in (TrialStatus.diverged, TrialStatus.pruned):
            spoiled.add(ci)
    means = {ci: statistics.fmean(v) for ci, v in values.items() if ci not in spoiled}
    better = min if minimize else max
    survivors = [m for ci, m in means.items() if ci not in judged_bad]
    best_survivor = better(survivors) if survivors else None
    beat = []
    for ci in sorted(audited_cfg):
        m = means.get(ci)
        if m is None or best_survivor is None:
            continue
        if (m < best_survivor) if minimize else (m > best_survivor):
            beat.append({"config_index": ci, "value": m, "margin": abs(m - best_survivor)})
    pruned = [t for t in trials if t[2] == TrialStatus.pruned]
    return {
        "type": pruner.type,
        "audit": pruner.audit,
        "n_pruned": len(pruned),
        "epochs_trained": sum(t[4] or 0 for t in trials),
        "epochs_saved": sum(max(int(t[5]["epochs"]) - (t[4] or 0), 0) for t in pruned),
        "n_audited": len(audited_cfg),
        "n_audited_finished": sum(1 for ci in audited_cfg if ci in means),
        "best_survivor": best_survivor,
        "n_beat_best_survivor": len(beat),
        "max_margin": max((b["margin"] for b in beat), default=None),
        "beat": beat,
    }


def trial_rungs(session: Session, trial: Trial) -> list[TrialRung]:
    """A trial's rung decisions, current attempt, by epoch."""
    return list(
        session.scalars(
            select(TrialRung)
            .where(TrialRung.trial_id == trial.id, TrialRung.attempt == trial.attempt)
            .order_by(TrialRung.epoch)
        )
    )
