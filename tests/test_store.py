"""The store's services, called directly in transactions of their own, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import Database
from app.models import Sweep, Trial, TrialEpoch, Worker
from app.services.sweeps import cancel_sweep, create_sweep, finalize_if_done, leaderboard
from app.services.trial_queries import trial_epochs
from app.services.trials import (
    Lease,
    claim,
    complete,
    heartbeat,
    reap_expired,
    register_worker,
    release,
    report_epochs,
)
from app.spec import SweepSpec

# --------------------------------------------------------------------------- helpers


def new_sweep(database: Database, settings: Settings, **raw: Any) -> int:
    # These tests play the worker and report val_loss: the sweeps rank by it (the default for
    # moons, val_error, is checked in tests/test_metric_e2e.py).
    spec = SweepSpec.model_validate({"name": "t", "dataset": "moons", "metric": "val_loss", **raw})
    with database.session() as s:
        return create_sweep(s, spec, settings).id


def new_worker(database: Database, name: str = "w") -> str:
    with database.session() as s:
        return register_worker(s, name, "host", "cpu").id


def claim_(database: Database, worker_id: str, n: int = 1, lease_seconds: float = 60.0) -> list[Trial]:
    with database.session() as s:
        return claim(s, s.get(Worker, worker_id), n, lease_seconds)


def outcome(
    t: Trial, status: str = "succeeded", token: str | None = None, **metrics: float
) -> dict[str, Any]:
    return {"trial_id": t.id, "lease_token": token or t.lease_token, "status": status, "metrics": metrics}


def complete_(database: Database, *outcomes: dict[str, Any]) -> dict[int, str]:
    with database.session() as s:
        return complete(s, list(outcomes))


# Read-write sessions here: their commit keeps the rows loaded (a read-only one rolls back,
# which expires them).
def get_sweep(database: Database, sweep_id: int) -> Sweep:
    with database.session() as s:
        return s.get(Sweep, sweep_id)


def trials_of(database: Database, sweep_id: int, role: str = "search") -> list[Trial]:
    with database.session() as s:
        q = select(Trial).where(Trial.sweep_id == sweep_id, Trial.role == role)
        return list(s.scalars(q.order_by(Trial.config_index, Trial.seed)).all())


def get_trial(database: Database, trial_id: int) -> Trial:
    with database.session() as s:
        return s.get(Trial, trial_id)


def n_epoch_rows(database: Database, trial_id: int) -> int:
    with database.session(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(TrialEpoch).where(TrialEpoch.trial_id == trial_id))


# --------------------------------------------------------------------------- create


def test_create_sweep_stores_every_trial_queued(database: Database, settings: Settings) -> None:
    sid = new_sweep(
        database, settings, parameters={"layers": [1, 2], "hidden_units": [8, 16, 32]}, seeds=[0, 1]
    )
    sweep = get_sweep(database, sid)
    trials = trials_of(database, sid)
    assert sweep.status == "queued" and sweep.n_trials == 12 == len(trials)
    assert sweep.metric_name == "val_loss" and sweep.metric_goal == "minimize"
    assert [(t.config_index, t.seed) for t in trials] == [(i, s) for i in range(6) for s in (0, 1)]
    assert {(t.status, t.attempt, t.role, t.max_attempts) for t in trials} == {("queued", 0, "search", 3)}
    assert trials[0].params["loss"] == "bce" and trials[0].config_key == trials[1].config_key


# --------------------------------------------------------------------------- the best-config query

# (config_index, seed) -> (status, metric value). Values are binary fractions: exact means.
RESULTS = {
    (0, 0): ("succeeded", 0.5), (0, 1): ("succeeded", 0.75),     # mean 0.625
    (1, 0): ("succeeded", 0.25), (1, 1): ("succeeded", 0.5),     # mean 0.375
    (2, 0): ("succeeded", 0.125), (2, 1): ("succeeded", 0.625),  # mean 0.375: ties with 1
    (3, 0): ("succeeded", 0.0625), (3, 1): ("diverged", None),   # would be best: a diverged seed drops it
    (4, 0): ("succeeded", 0.875), (4, 1): ("failed", 0.0),       # the failed seed's partial value is ignored
    (5, 0): ("failed", 0.0), (5, 1): ("failed", 0.0),            # nothing succeeded: not ranked
}  # fmt: skip


def store_results(database: Database, sweep_id: int, column: str) -> None:
    with database.session() as s:
        for (ci, seed), (status, value) in RESULTS.items():
            s.execute(
                update(Trial)
                .where(Trial.sweep_id == sweep_id, Trial.config_index == ci, Trial.seed == seed)
                .values(status=status, **{column: value})
            )


@pytest.mark.parametrize(
    ("metric", "order"),
    [("val_loss", [1, 2, 0, 4]), ("val_accuracy", [4, 0, 1, 2])],
    ids=["minimize", "maximize"],
)
def test_best_config_is_the_mean_over_seeds(
    database: Database, settings: Settings, metric: str, order: list[int]
) -> None:
    lrs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    sid = new_sweep(
        database, settings, metric={"name": metric}, parameters={"learning_rate": lrs}, seeds=[0, 1]
    )
    store_results(database, sid, metric)
    with database.session(readonly=True) as s:
        sweep = s.get(Sweep, sid)
        assert sweep.metric_goal == ("minimize" if metric == "val_loss" else "maximize")
        ranked = leaderboard(s, sweep, limit=10)
        assert [r.config_index for r in ranked] == order
        means = {r.config_index: r.mean for r in ranked}
        assert means == {0: 0.625, 1: 0.375, 2: 0.375, 4: 0.875}
        by_index = {r.config_index: r for r in ranked}
        assert by_index[4].n_seeds == 1 and [t.seed for t in by_index[4].trials] == [0]
        assert by_index[1].n_seeds == 2 and by_index[1].std == pytest.approx(0.125)
        assert by_index[1].params["learning_rate"] == 0.2
        assert [r.config_index for r in leaderboard(s, sweep, limit=1)] == order[:1]


def test_no_ranking_before_any_trial_succeeded(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2]})
    with database.session(readonly=True) as s:
        assert leaderboard(s, s.get(Sweep, sid)) == []


# --------------------------------------------------------------------------- finalize


def test_finished_search_queues_the_best_config_once_per_seed_then_succeeds(
    database: Database, settings: Settings
) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2]}, seeds=[0, 1])
    wid = new_worker(database)
    claimed = claim_(database, wid, n=4)
    assert len(claimed) == 4 and get_sweep(database, sid).status == "running"
    values = {(0, 0): 0.5, (0, 1): 0.5, (1, 0): 0.25, (1, 1): 0.5}  # config 1 is best
    for t in claimed[:-1]:
        complete_(database, outcome(t, val_loss=values[t.config_index, t.seed]))
        assert trials_of(database, sid, "final") == []  # not before every search trial ended
    last = claimed[-1]
    assert complete_(database, outcome(last, val_loss=values[last.config_index, last.seed])) == {
        last.id: "ok"
    }

    finals = trials_of(database, sid, "final")
    assert [(t.config_index, t.seed, t.status, t.priority) for t in finals] == [
        (1, 0, "queued", 0),
        (1, 1, "queued", 0),
    ]
    sweep = get_sweep(database, sid)
    assert sweep.status == "running"
    assert get_trial(database, sweep.best_trial_id).config_index == 1
    with database.session() as s:  # a second look changes nothing
        finalize_if_done(s, sid)
    assert len(trials_of(database, sid, "final")) == 2

    got = claim_(database, wid, n=4)
    assert sorted(t.id for t in got) == [t.id for t in finals]
    complete_(database, outcome(got[0], val_loss=0.25, test_loss=0.25, test_accuracy=0.75, test_error=0.25))
    assert get_sweep(database, sid).status == "running"
    complete_(database, outcome(got[1], val_loss=0.5, test_loss=0.5, test_accuracy=0.5, test_error=0.5))
    sweep = get_sweep(database, sid)
    assert sweep.status == "succeeded" and sweep.finished_at is not None and sweep.error is None
    assert sweep.test_metrics == {"test_loss": 0.375, "test_error": 0.375, "test_accuracy": 0.625}


@pytest.mark.parametrize("n_failed", [1, 2])
def test_failed_test_evaluations_are_told_and_all_failing_fails_the_sweep(
    database: Database, settings: Settings, n_failed: int
) -> None:
    """One seed's test evaluation failing leaves the other's score; all failing fails the sweep."""
    sid = new_sweep(database, settings, seeds=[0, 1])
    wid = new_worker(database)
    for t in claim_(database, wid, n=2):
        complete_(database, outcome(t, val_loss=0.5))
    finals = sorted(claim_(database, wid, n=2), key=lambda t: t.seed)
    assert [t.role for t in finals] == ["final", "final"]
    for t in finals[:n_failed]:
        complete_(database, {**outcome(t, "failed"), "error": "RuntimeError: boom"})
    for t in finals[n_failed:]:
        complete_(database, outcome(t, val_loss=0.5, test_loss=0.3, test_accuracy=0.9, test_error=0.1))
    sweep = get_sweep(database, sid)
    assert sweep.finished_at is not None and sweep.best_trial_id is not None
    assert "test evaluation failed: seed 0: RuntimeError: boom" in sweep.error
    if n_failed == 1:
        assert sweep.status == "succeeded" and sweep.test_metrics["test_loss"] == 0.3
    else:
        assert sweep.status == "failed" and sweep.test_metrics is None


def test_final_evaluations_jump_the_queue(database: Database, settings: Settings) -> None:
    first = new_sweep(database, settings)
    second = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2]})
    wid = new_worker(database)
    (t,) = claim_(database, wid)
    assert t.sweep_id == first
    complete_(database, outcome(t, val_loss=0.5))
    (nxt,) = claim_(database, wid)
    assert (nxt.sweep_id, nxt.role) == (first, "final")
    assert {x.status for x in trials_of(database, second)} == {"queued"}


@pytest.mark.parametrize("status", ["failed", "diverged"])
def test_a_sweep_where_nothing_succeeded_fails(database: Database, settings: Settings, status: str) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2]})
    wid = new_worker(database)
    for t in claim_(database, wid, n=2):
        complete_(database, {**outcome(t, status), "error": "boom"})
    sweep = get_sweep(database, sid)
    assert sweep.status == "failed" and sweep.error == "no trial succeeded" and sweep.finished_at is not None
    assert trials_of(database, sid, "final") == []
    assert {t.error for t in trials_of(database, sid)} == {"boom"}


def test_failed_trials_do_not_stop_the_sweep(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2, 0.3]})
    wid = new_worker(database)
    a, b, c = claim_(database, wid, n=3)
    complete_(database, {**outcome(a, "failed"), "error": "RuntimeError: boom"})
    complete_(database, outcome(b, "diverged", val_loss=None))
    complete_(database, outcome(c, val_loss=0.5))
    (final,) = trials_of(database, sid, "final")
    assert final.config_index == c.config_index
    assert get_trial(database, a.id).error == "RuntimeError: boom"


# --------------------------------------------------------------------------- cancel


def test_cancel_cancels_queued_trials_and_stops_running_ones(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, parameters={"learning_rate": [0.1, 0.2, 0.3, 0.4]})
    wid = new_worker(database)
    a, b = claim_(database, wid, n=2)
    with database.session() as s:
        cancel_sweep(s, s.get(Sweep, sid))
    sweep = get_sweep(database, sid)
    assert sweep.status == "canceled" and sweep.finished_at is not None
    statuses = {t.id: t.status for t in trials_of(database, sid)}
    assert sorted(statuses.values()) == ["canceled", "canceled", "running", "running"]
    assert claim_(database, wid) == []

    with database.session() as s:
        assert heartbeat(s, s.get(Worker, wid), [Lease(a.id, a.lease_token)], 60) == {a.id: "cancel"}
        rep = {"trial_id": b.id, "lease_token": b.lease_token, "epoch": 1, "train_loss": 0.5, "val_loss": 0.5}
        assert report_epochs(s, [rep], 60) == {b.id: "cancel"}
    complete_(database, outcome(a, "canceled"), outcome(b, "canceled"))
    assert {t.status for t in trials_of(database, sid)} == {"canceled"}
    assert get_sweep(database, sid).status == "canceled" and trials_of(database, sid, "final") == []
    with database.session() as s:  # canceling an ended sweep changes nothing
        assert cancel_sweep(s, s.get(Sweep, sid)).status == "canceled"


# --------------------------------------------------------------------------- leases


def test_a_stale_lease_token_is_lost_and_writes_nothing(database: Database, settings: Settings) -> None:
    new_sweep(database, settings)
    wid = new_worker(database)
    (t,) = claim_(database, wid)
    stale = "0" * 32
    with database.session() as s:
        assert heartbeat(s, s.get(Worker, wid), [Lease(t.id, stale)], 60) == {t.id: "lost"}
        rep = {"trial_id": t.id, "lease_token": stale, "epoch": 1, "train_loss": 0.1, "val_loss": 0.1}
        assert report_epochs(s, [rep], 60) == {t.id: "lost"}
    assert complete_(database, outcome(t, token=stale, val_loss=0.1)) == {t.id: "lost"}
    got = get_trial(database, t.id)
    assert (got.status, got.val_loss, got.epochs_done) == ("running", None, 0)
    assert n_epoch_rows(database, t.id) == 0


def test_a_reclaimed_trial_refuses_the_old_workers_writes(database: Database, settings: Settings) -> None:
    new_sweep(database, settings)
    old, new = new_worker(database, "old"), new_worker(database, "new")
    (t1,) = claim_(database, old, lease_seconds=0.01)
    time.sleep(0.05)
    with database.session() as s:
        assert reap_expired(s) == 1
    (t2,) = claim_(database, new)
    assert t2.id == t1.id and t2.lease_token != t1.lease_token and t2.attempt == 2
    assert complete_(database, outcome(t1, val_loss=9.0)) == {t1.id: "lost"}
    assert complete_(database, outcome(t2, val_loss=0.5)) == {t2.id: "ok"}
    got = get_trial(database, t1.id)
    assert (got.status, got.val_loss, got.worker_id) == ("succeeded", 0.5, new)


def test_epoch_reports_are_idempotent(database: Database, settings: Settings) -> None:
    new_sweep(database, settings)
    wid = new_worker(database)
    (t,) = claim_(database, wid)
    ref = {"trial_id": t.id, "lease_token": t.lease_token}
    with database.session() as s:
        assert report_epochs(s, [{**ref, "epoch": 1, "train_loss": 0.7, "val_loss": 0.6}], 60) == {t.id: "ok"}
    with database.session() as s:  # a retried report of the same epoch
        assert report_epochs(s, [{**ref, "epoch": 1, "train_loss": 0.7, "val_loss": 0.6}], 60) == {t.id: "ok"}
        report_epochs(s, [{**ref, "epoch": 2, "train_loss": 0.5, "val_loss": 0.4}], 60)
    assert n_epoch_rows(database, t.id) == 2
    got = get_trial(database, t.id)
    assert (got.epochs_done, got.val_loss) == (2, 0.4)


def test_heartbeat_extends_the_lease(database: Database, settings: Settings) -> None:
    new_sweep(database, settings)
    wid = new_worker(database)
    (t,) = claim_(database, wid, lease_seconds=0.01)
    with database.session() as s:
        assert heartbeat(s, s.get(Worker, wid), [Lease(t.id, t.lease_token)], 60) == {t.id: "ok"}
    time.sleep(0.05)
    with database.session() as s:
        assert reap_expired(s) == 0
    assert get_trial(database, t.id).status == "running"


def test_release_requeues_without_using_an_attempt(database: Database, settings: Settings) -> None:
    new_sweep(database, settings)
    wid = new_worker(database)
    (t,) = claim_(database, wid)
    assert t.attempt == 1
    ref = {"trial_id": t.id, "lease_token": t.lease_token}
    with database.session() as s:
        report_epochs(s, [{**ref, "epoch": 1, "train_loss": 0.9, "val_loss": 0.9}], 60)
        assert release(s, [Lease(t.id, t.lease_token)]) == {t.id: "ok"}
    got = get_trial(database, t.id)
    assert (got.status, got.attempt, got.worker_id, got.lease_token) == ("queued", 0, None, None)
    with database.session() as s:  # releasing again: the lease is gone
        assert release(s, [Lease(t.id, t.lease_token)]) == {t.id: "lost"}

    (again,) = claim_(database, wid)
    assert (again.id, again.attempt) == (t.id, 1)
    ref = {"trial_id": t.id, "lease_token": again.lease_token}
    with database.session() as s:
        report_epochs(s, [{**ref, "epoch": 1, "train_loss": 0.3, "val_loss": 0.2}], 60)
    with database.session(readonly=True) as s:  # the curve is the new run's, not the abandoned one's
        assert [(e.epoch, e.val_loss) for e in trial_epochs(s, s.get(Trial, t.id))] == [(1, 0.2)]


def test_the_reaper_requeues_then_fails_after_max_attempts(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings.model_copy(update={"max_attempts": 2}))
    wid = new_worker(database)
    (t,) = claim_(database, wid, lease_seconds=60)
    with database.session() as s:
        assert reap_expired(s) == 0  # a live lease is left alone

    with database.session() as s:  # expire it (the worker went silent)
        s.execute(update(Trial).where(Trial.id == t.id).values(lease_expires_at=Trial.created_at))
    with database.session() as s:
        assert reap_expired(s) == 1
    got = get_trial(database, t.id)
    assert (got.status, got.attempt, got.lease_token, got.worker_id) == ("queued", 1, None, None)

    (t2,) = claim_(database, wid, lease_seconds=0.01)
    assert t2.attempt == 2
    time.sleep(0.05)
    with database.session() as s:
        assert reap_expired(s) == 1
    got = get_trial(database, t.id)
    assert got.status == "failed" and got.finished_at is not None
    assert got.error == "worker lost: lease expired on attempt 2 of 2"
    sweep = get_sweep(database, sid)
    lost = f"1 search trial ran out of attempts (worker lost or out of memory) and failed: {t.id}"
    assert (sweep.status, sweep.error) == ("failed", f"no trial succeeded; {lost}")


def test_a_claim_takes_at_most_max_trials_of_one_pack(database: Database, settings: Settings) -> None:
    sid = new_sweep(database, settings, parameters={"batch_size": [16, 32], "hidden_units": [8, 16, 24]})
    other = new_sweep(database, settings)
    wid = new_worker(database)
    got = claim_(database, wid, n=2)
    assert [(t.sweep_id, t.config_index) for t in got] == [(sid, 0), (sid, 2)]  # batch_size 16
    assert len({t.lease_token for t in got}) == 1 and {t.status for t in got} == {"running"}
    # Then the head of the queue (config 1) and its pack mates; never another pack or sweep.
    assert [(t.sweep_id, t.config_index) for t in claim_(database, wid, n=10)] == [
        (sid, 1),
        (sid, 3),
        (sid, 5),
    ]
    assert [(t.sweep_id, t.config_index) for t in claim_(database, wid, n=10)] == [(sid, 4)]
    assert [t.sweep_id for t in claim_(database, wid, n=10)] == [other]
    assert claim_(database, wid, n=10) == []
