"""Attempt accounting on the store (SQLite and PostgreSQL): a lost pack costs no attempt.

A pack lost with its worker is requeued with its attempts handed back and comes back in
packs of half the size; a trial lost alone uses up an attempt and fails after
``max_attempts``; a requeue forgets the unfinished attempt's metrics; a sweep says which of
its trials ran out of attempts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from app.config import Settings
from app.db import Database, db_now
from app.models import Sweep, Trial, TrialEpoch, Worker
from app.services import trials as ts
from app.services.sweeps import create_sweep
from app.spec import SweepSpec


def _sweep(database: Database, n: int, attempts: int = 3) -> list[int]:
    lrs = [round(0.001 * (i + 1), 6) for i in range(n)]
    spec = SweepSpec.model_validate(
        {"name": "acct", "dataset": "moons", "metric": "val_loss", "parameters": {"learning_rate": lrs}}
    )
    with database.session() as s:
        sid = create_sweep(s, spec, Settings(max_attempts=attempts)).id
        return list(s.scalars(select(Trial.id).where(Trial.sweep_id == sid).order_by(Trial.id)).all())


def _worker(database: Database) -> str:
    with database.session() as s:
        return ts.register_worker(s, "w", "host", "cpu").id


def _claim(database: Database, wid: str, n: int) -> list[dict[str, Any]]:
    with database.session() as s:
        got = ts.claim(s, s.get(Worker, wid), n, 30)
        return [{"id": t.id, "token": t.lease_token, "attempt": t.attempt} for t in got]


def _report(database: Database, claimed: list[dict[str, Any]], epoch: int) -> None:
    with database.session() as s:
        reports = [
            {
                "trial_id": c["id"],
                "lease_token": c["token"],
                "epoch": epoch,
                "val_loss": 0.5,
                "train_loss": 0.6,
            }
            for c in claimed
        ]
        assert set(ts.report_epochs(s, reports, 30).values()) == {"ok"}


def _worker_dies(database: Database) -> int:
    """Every running lease expires at once (the worker was killed); the reaper runs."""
    with database.session() as s:
        past = db_now(s) - timedelta(seconds=1)
        s.execute(update(Trial).where(Trial.status == "running").values(lease_expires_at=past))
    with database.session() as s:
        return ts.reap_expired(s)


def _trials(database: Database, ids: list[int]) -> list[Trial]:
    with database.session() as s:
        rows = [s.get(Trial, i) for i in ids]
        s.expunge_all()
        return rows


def _epoch_rows(database: Database, trial_id: int) -> int:
    with database.session(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(TrialEpoch).where(TrialEpoch.trial_id == trial_id))


def test_a_lost_pack_costs_no_attempt_and_comes_back_halved(database: Database) -> None:
    ids = _sweep(database, 8)
    wid = _worker(database)
    pack = _claim(database, wid, 8)
    assert [c["id"] for c in pack] == ids and {c["attempt"] for c in pack} == {1}
    _report(database, pack, 1)
    assert _worker_dies(database) == 8
    for t in _trials(database, ids):
        assert (t.status, t.attempt, t.max_pack, t.worker_id, t.lease_token) == ("queued", 0, 4, None, None)
        assert (t.val_loss, t.train_loss, t.epochs_done) == (None, None, 0)  # the lost attempt's numbers
        assert "pack of 8 trials" in (t.error or "") and "without using an attempt" in (t.error or "")
        assert _epoch_rows(database, t.id) == 0  # attempt 1 is handed back: its rows would be reused

    # However many a worker asks for, the next claims come in packs of at most 4, then 2, then 1.
    for size in (4, 2, 1):
        first = _claim(database, wid, 64)
        assert len(first) == size and {c["attempt"] for c in first} == {1}, first
        assert _worker_dies(database) == size
        if size > 1:
            assert {t.max_pack for t in _trials(database, [c["id"] for c in first])} == {size // 2}
    # Lost alone: now the attempt counts.
    (lone,) = _trials(database, [first[0]["id"]])
    assert (lone.status, lone.attempt, lone.max_pack) == ("queued", 1, 1)
    assert lone.error == "worker lost: lease expired on attempt 1 of 3; queued again"
    # Nobody was charged but the trial lost alone.
    assert sorted(t.attempt for t in _trials(database, ids)) == [0] * 7 + [1]


def test_a_trial_with_a_small_max_pack_never_joins_a_larger_pack(database: Database) -> None:
    ids = _sweep(database, 6)
    wid = _worker(database)
    with database.session() as s:  # trial 3 (of 6) was in a lost pair; trial 5 in a lost pack of 4
        s.execute(update(Trial).where(Trial.id == ids[2]).values(max_pack=1))
        s.execute(update(Trial).where(Trial.id == ids[4]).values(max_pack=2))
    first = [c["id"] for c in _claim(database, wid, 6)]
    assert first == [ids[0], ids[1], ids[3], ids[5]]  # the others would make it too large for them
    assert [c["id"] for c in _claim(database, wid, 6)] == [ids[2]]  # the head caps the pack
    assert [c["id"] for c in _claim(database, wid, 6)] == [ids[4]]


def test_a_trial_that_kills_its_worker_fails_alone_after_its_attempts(database: Database) -> None:
    """Only the killer is charged: the pack halves until it is alone, then it uses its attempts."""
    ids = _sweep(database, 8, attempts=2)
    killer = ids[5]
    wid = _worker(database)
    kills = 0
    while True:
        claimed = _claim(database, wid, 8)
        if not claimed:
            break
        got = [c["id"] for c in claimed]
        if killer in got:
            kills += 1
            _worker_dies(database)
            continue
        with database.session() as s:  # the others train fine
            outcomes = [
                {
                    "trial_id": c["id"],
                    "lease_token": c["token"],
                    "status": "succeeded",
                    "metrics": {"val_loss": 0.3},
                }
                for c in claimed
            ]
            assert set(ts.complete(s, outcomes).values()) == {"ok"}
    trials = {t.id: t for t in _trials(database, ids)}  # (the loop ran the final evaluation too)
    assert kills == 3 + 2  # 8 -> 4 -> 2 -> 1 (not charged), then 2 attempts alone
    k = trials.pop(killer)
    assert (k.status, k.attempt, k.error) == ("failed", 2, "worker lost: lease expired on attempt 2 of 2")
    assert k.val_loss is None
    assert {(t.status, t.attempt) for t in trials.values()} == {("succeeded", 1)}
    with database.session() as s:
        sweep = s.scalars(select(Sweep)).one()
        assert s.scalars(select(Trial.status).where(Trial.role == "final")).one() == "succeeded"
        assert sweep.status == "succeeded"  # a best config and its test score; but not plainly:
        assert sweep.error == (
            f"1 search trial ran out of attempts (worker lost or out of memory) and failed: {killer} "
            "(the best config is the best of the others)"
        )


def test_requeues_and_failures_clear_the_unfinished_attempts_metrics(database: Database) -> None:
    ids = _sweep(database, 3, attempts=2)
    wid = _worker(database)
    # Out of memory (alone): retried, the attempt counts, its numbers are forgotten.
    (c,) = _claim(database, wid, 1)
    _report(database, [c], 1)
    with database.session() as s:
        lease = ts.Lease(c["id"], c["token"])
        assert ts.release(s, [lease], ts.ReleaseReason.out_of_memory, "CUDA out of memory") == {c["id"]: "ok"}
    (t,) = _trials(database, [c["id"]])
    assert (t.status, t.attempt, t.val_loss, t.epochs_done) == ("queued", 1, None, 0)
    assert _epoch_rows(database, t.id) == 1  # attempt 1's curve stays, labelled by its attempt
    # Shutdown: the attempt is handed back with its rows and numbers.
    (c,) = _claim(database, wid, 1)
    assert c["attempt"] == 2
    _report(database, [c], 1)
    with database.session() as s:
        assert ts.release(s, [ts.Lease(c["id"], c["token"])]) == {c["id"]: "ok"}
    (t,) = _trials(database, [c["id"]])
    assert (t.status, t.attempt, t.val_loss) == ("queued", 1, None)
    # Lost alone on its last attempt: failed, with none of that attempt's numbers.
    (c,) = _claim(database, wid, 1)
    _report(database, [c], 1)
    assert _worker_dies(database) == 1
    (t,) = _trials(database, [c["id"]])
    assert (t.status, t.attempt, t.val_loss, t.train_loss) == ("failed", 2, None, None)
    # An exception in training: failed with its message, and no metrics of the unfinished run.
    (c,) = _claim(database, wid, 1)
    assert c["id"] == ids[1]
    _report(database, [c], 1)
    with database.session() as s:
        bad = {"trial_id": c["id"], "lease_token": c["token"], "status": "failed", "error": "boom"}
        assert ts.complete(s, [bad]) == {c["id"]: "ok"}
    (t,) = _trials(database, [c["id"]])
    assert (t.status, t.error, t.val_loss, t.epochs_done) == ("failed", "boom", None, 0)
    # A trial that succeeds keeps its numbers.
    (c,) = _claim(database, wid, 1)
    with database.session() as s:
        ok = {
            "trial_id": c["id"],
            "lease_token": c["token"],
            "status": "succeeded",
            "metrics": {"val_loss": 0.2},
        }
        assert ts.complete(s, [ok]) == {c["id"]: "ok"}
    assert _trials(database, [c["id"]])[0].val_loss == 0.2


def test_the_reaper_counts_a_pack_whole_even_when_its_leases_expire_apart(database: Database) -> None:
    """An epoch report extends its trial's lease: part of a pack may expire a little later."""
    ids = _sweep(database, 4)
    wid = _worker(database)
    pack = _claim(database, wid, 4)
    with database.session() as s:
        now = db_now(s)
        s.execute(update(Trial).where(Trial.id == ids[0]).values(lease_expires_at=now - timedelta(seconds=1)))
        s.execute(update(Trial).where(Trial.id != ids[0]).values(lease_expires_at=now + timedelta(seconds=2)))
    with database.session() as s:
        assert ts.reap_expired(s) == 4  # the whole pack, not one trial charged alone
    assert {(t.status, t.attempt, t.max_pack) for t in _trials(database, ids)} == {("queued", 0, 2)}
    assert len(pack) == 4
