"""Failure classes of the trial lifecycle, on the store (SQLite and PostgreSQL).

worker lost -> requeued (the attempt counts) and failed after max_attempts; out of memory ->
the same with its own reason; shutdown -> back to the queue, attempt handed back and its
epoch rows dropped; stale lease tokens change nothing; renewal after an outage.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from app.config import Settings
from app.db import Database, db_now
from app.models import Trial, TrialEpoch, Worker
from app.schemas import SweepCreate
from app.services import sweeps as sweep_service
from app.services import trials as ts
from worker.loop import is_out_of_memory


def _setup(database: Database, n: int = 1, attempts: int = 3) -> tuple[str, list[int]]:
    spec = SweepCreate.model_validate(
        {
            "name": "life",
            "dataset": "moons",
            "parameters": {"learning_rate": [0.01 * (i + 1) for i in range(n)]},
        }
    )
    with database.session() as s:
        sweep_service.create_sweep(s, spec, Settings(max_attempts=attempts))
        w = ts.register_worker(s, "w", "host", "cpu")
        return w.id, list(s.scalars(select(Trial.id).order_by(Trial.id)).all())


def _claim(database: Database, worker_id: str) -> ts.Lease:
    with database.session() as s:
        (t,) = ts.claim(s, s.get(Worker, worker_id), 1, 30)
        return ts.Lease(t.id, t.lease_token or "")


def _expire(database: Database) -> int:
    with database.session() as s:
        past = db_now(s) - timedelta(seconds=1)
        s.execute(update(Trial).where(Trial.status == "running").values(lease_expires_at=past))
        return ts.reap_expired(s)


def _trial(database: Database, tid: int) -> Trial:
    with database.session(readonly=True) as s:
        t = s.get(Trial, tid)
        s.expunge(t)
        return t


def test_worker_lost_is_retried_then_failed(database: Database) -> None:
    wid, (tid,) = _setup(database)
    leases = []
    for attempt in (1, 2, 3):
        leases.append(_claim(database, wid))
        assert _trial(database, tid).attempt == attempt
        assert _expire(database) == 1
    t = _trial(database, tid)
    assert t.status == "failed" and t.error == "worker lost: lease expired on attempt 3 of 3"
    # The lost workers' late writes change nothing.
    with database.session() as s:
        reports = [{"trial_id": tid, "lease_token": lease.lease_token, "epoch": 1} for lease in leases]
        assert set(ts.report_epochs(s, reports, 30).values()) == {ts.LeaseState.lost}
        done = [{"trial_id": tid, "lease_token": leases[-1].lease_token, "status": "succeeded"}]
        assert ts.complete(s, done) == {tid: ts.LeaseState.lost}
        assert s.scalar(select(func.count()).select_from(TrialEpoch)) == 0
    assert _trial(database, tid).status == "failed"


def test_out_of_memory_is_retried_with_its_reason(database: Database) -> None:
    wid, (tid,) = _setup(database, attempts=2)
    for expected in ("queued", "failed"):
        lease = _claim(database, wid)
        with database.session() as s:
            assert ts.release(s, [lease], ts.ReleaseReason.out_of_memory, "CUDA out of memory") == {tid: "ok"}
        t = _trial(database, tid)
        assert t.status == expected and "out of memory on attempt" in (t.error or "")
    assert _trial(database, tid).error == "out of memory on attempt 2 of 2: CUDA out of memory"


def test_shutdown_release_hands_the_attempt_back(database: Database) -> None:
    wid, (tid,) = _setup(database)
    lease = _claim(database, wid)
    with database.session() as s:
        report = {"trial_id": tid, "lease_token": lease.lease_token, "epoch": 1, "val_loss": 0.5}
        assert ts.report_epochs(s, [report, report], 30) == {tid: "ok"}  # a retried report: one row
        assert s.scalar(select(func.count()).select_from(TrialEpoch)) == 1
    with database.session() as s:
        assert ts.release(s, [lease]) == {tid: "ok"}
        assert s.scalar(select(func.count()).select_from(TrialEpoch)) == 0
    t = _trial(database, tid)
    assert (t.status, t.attempt, t.epochs_done, t.lease_token) == ("queued", 0, 0, None)
    with database.session() as s:  # releasing twice (a retried request) is refused, harmlessly
        assert ts.release(s, [lease]) == {tid: "lost"}


def test_exception_and_divergence_are_final(database: Database) -> None:
    wid, tids = _setup(database, n=2)
    for tid, status in zip(tids, ("failed", "diverged"), strict=True):
        lease = _claim(database, wid)
        assert lease.trial_id == tid
        with database.session() as s:
            outcome = {"trial_id": tid, "lease_token": lease.lease_token, "status": status, "error": "boom"}
            assert ts.complete(s, [outcome]) == {tid: "ok"}
    assert _expire(database) == 0  # nothing left running to reap, nothing requeued
    assert [_trial(database, t).status for t in tids] == ["failed", "diverged"]
    assert all(_trial(database, t).attempt == 1 for t in tids)


def test_leases_renewed_after_an_outage_instead_of_reaped(database: Database) -> None:
    wid, (tid,) = _setup(database)
    _claim(database, wid)
    with database.session() as s:
        past = db_now(s) - timedelta(seconds=5)
        s.execute(update(Trial).values(lease_expires_at=past))
        assert ts.extend_running_leases(s, 30) == 1
    with database.session() as s:
        assert ts.reap_expired(s) == 0
    assert _trial(database, tid).status == "running"


def test_out_of_memory_errors_are_told_apart_from_bugs() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
