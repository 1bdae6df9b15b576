"""Pruning in the store, on SQLite and PostgreSQL: epoch reports answered ``prune`` at rungs,
decisions kept with their reason, pruned trials never the best, the audit's numbers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.models import TrialRung
from app.search_spec import audited
from app.services.pruning import pruning_report
from app.services.sweeps import leaderboard
from app.services.trials import complete, report_epochs
from tests.search_helpers import claim_pack, new_sweep, new_worker, run_all, sweep_of, trials_of

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
GRID: dict[str, Any] = {"learning_rate": LRS, "hidden_units": [8, 16], "epochs": 6}


def curve(params: dict[str, Any], seed: int) -> list[float]:
    """val_loss per epoch: the closer the learning rate to 0.03, the lower, from the first epoch on."""
    gap = abs(LRS.index(params["learning_rate"]) - 3) + (params["hidden_units"] == 8) * 0.5
    return [0.2 + 0.1 * gap + 0.5 / e + 0.001 * seed for e in range(1, 7)]


def late_bloomer(params: dict[str, Any], seed: int) -> list[float]:
    """As ``curve``, but learning rate 0.001 starts worst and ends best."""
    if params["learning_rate"] == 0.001 and params["hidden_units"] == 16:
        return [2.0, 1.9, 1.8, 1.0, 0.5, 0.1]
    return curve(params, seed)


def best_params(database: Database, sid: int) -> dict[str, Any]:
    with database.session() as s:
        return leaderboard(s, sweep_of(database, sid), limit=1)[0].params


def rungs(database: Database, sid: int) -> list[TrialRung]:
    with database.session() as s:
        return list(s.scalars(select(TrialRung).where(TrialRung.sweep_id == sid).order_by(TrialRung.id)))


def test_median_prunes_bad_trials_and_never_the_best(database: Database, settings: Settings) -> None:
    plain = new_sweep(database, settings, parameters=GRID)
    run_all(database, settings, curve, pack=2)
    pruned_sid = new_sweep(
        database, settings, parameters=GRID, pruner={"type": "median", "n_startup_trials": 2}
    )
    run_all(database, settings, curve, pack=2)
    assert best_params(database, pruned_sid) == best_params(database, plain)
    trials = trials_of(database, pruned_sid)
    pruned = [t for t in trials if t.status == "pruned"]
    assert len(pruned) >= 4
    assert all(t.epochs_done < 6 for t in pruned)
    assert best_params(database, plain) not in [t.params for t in pruned]
    decisions = {r.trial_id: r for r in rungs(database, pruned_sid) if r.decision == "prune"}
    assert set(decisions) == {t.id for t in pruned}
    for t in pruned:
        r = decisions[t.id]
        assert r.epoch == t.epochs_done and r.value is not None and r.value > r.threshold
        assert "worse than the median" in r.reason
    with database.session() as s:
        report = pruning_report(s, sweep_of(database, pruned_sid))
    assert report is not None and report["n_pruned"] == len(pruned)
    assert report["epochs_saved"] == sum(6 - t.epochs_done for t in pruned) > 0
    assert report["epochs_trained"] + report["epochs_saved"] == 6 * len(trials)
    assert sweep_of(database, pruned_sid).status == "succeeded"


def test_asha_compares_the_trials_of_a_pack_at_a_rung(database: Database, settings: Settings) -> None:
    sid = new_sweep(
        database,
        settings,
        parameters={**GRID, "hidden_units": 16, "learning_rate": [*LRS, 0.5, 0.7, 0.9]},
        pruner={"type": "asha"},
    )
    run_all(database, settings, lambda p, s: [p["learning_rate"] + 1 / e for e in range(1, 7)], pack=9)
    trials = trials_of(database, sid)
    # All 9 reach rung 0 (epoch 1) together: the best 9 // 3 = 3 go on, to rung 1 (epoch 3): 1 goes on.
    assert sorted(t.params["learning_rate"] for t in trials if t.status != "pruned") == [0.001]
    assert sorted(t.epochs_done for t in trials if t.status == "pruned") == [1] * 6 + [3] * 2
    (rung0,) = {r.threshold for r in rungs(database, sid) if r.epoch == 1}
    assert rung0 == 0.01 + 1.0  # the third best value at epoch 1


def test_audit_keeps_would_be_pruned_configs_and_reports_what_they_would_have_cost(
    database: Database, settings: Settings
) -> None:
    sid = new_sweep(database, settings, parameters=GRID, pruner={"type": "asha", "audit": 1.0})
    run_all(database, settings, late_bloomer, pack=12)
    trials = trials_of(database, sid)
    assert {t.status for t in trials} == {"succeeded"}  # audit 1.0: nothing is stopped
    with database.session() as s:
        report = pruning_report(s, sweep_of(database, sid))
    assert report is not None
    assert report["n_pruned"] == 0 and report["n_audited"] == report["n_audited_finished"] == 8
    # The late bloomer was one of them: it beat the best survivor (lr 0.03, 16 units: 0.2 + 0.5 / 6).
    assert report["n_beat_best_survivor"] == 1
    (beat,) = report["beat"]
    assert abs(report["best_survivor"] - (0.2 + 0.5 / 6)) < 1e-9
    assert abs(beat["margin"] - (report["best_survivor"] - 0.1)) < 1e-9 and beat["value"] == 0.1
    assert best_params(database, sid)["learning_rate"] == 0.001  # audited configs rank as usual

    half = new_sweep(database, settings, parameters=GRID, pruner={"type": "asha", "audit": 0.5})
    run_all(database, settings, late_bloomer, pack=12)
    flagged = {r.trial_id: r.decision for r in rungs(database, half) if r.decision != "continue"}
    by_id = {t.id: t for t in trials_of(database, half)}
    assert flagged and set(flagged.values()) == {"prune", "audit"}
    for tid, decision in flagged.items():  # seeded by config hash: the same spec audits the same configs
        assert (decision == "audit") == audited(0, by_id[tid].config_key, 0.5)
        assert by_id[tid].status == ("succeeded" if decision == "audit" else "pruned")


def test_decisions_are_kept_and_a_pruned_configs_other_seeds_stop(
    database: Database, settings: Settings
) -> None:
    sid = new_sweep(
        database,
        settings,
        parameters={"learning_rate": [0.01, 0.1, 0.3], "epochs": 4},
        seeds=[0, 1],
        pruner={"type": "asha", "reduction_factor": 2},
    )
    worker = new_worker(database)
    first = claim_pack(database, worker, 6, settings)
    seed0 = [t for t in first if t.seed == 0]
    reports = [
        {"trial_id": t.id, "lease_token": t.lease_token, "epoch": 1, "val_loss": t.params["learning_rate"]}
        for t in seed0
    ]
    with database.session() as s:
        states = report_epochs(s, reports, 60.0)
    worst = max(seed0, key=lambda t: t.params["learning_rate"])
    assert states[worst.id] == "prune" and sum(v == "prune" for v in states.values()) == 2
    with database.session() as s:  # a retried report gets the same answer: the decision is stored
        assert report_epochs(s, reports, 60.0) == states
    # The other seed of the pruned config is pruned at its first report, whatever its value.
    sibling = next(t for t in first if t.seed == 1 and t.config_key == worst.config_key)
    report = {"trial_id": sibling.id, "lease_token": sibling.lease_token, "epoch": 1, "val_loss": 0.0}
    with database.session() as s:
        assert report_epochs(s, [report], 60.0)[sibling.id] == "prune"
    reason = next(r.reason for r in rungs(database, sid) if r.trial_id == sibling.id)
    assert reason == "seed 0 of this config was pruned at epoch 1"
    # A worker that knows no `prune` reports the stopped trial canceled: it ends pruned.
    outcome = {"trial_id": worst.id, "lease_token": worst.lease_token, "status": "canceled", "epochs_done": 1}
    with database.session() as s:
        assert complete(s, [outcome]) == {worst.id: "ok"}
    assert next(t for t in trials_of(database, sid) if t.id == worst.id).status == "pruned"
