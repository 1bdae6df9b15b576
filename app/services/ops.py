"""Operational reads: readiness and the numbers behind ``/metrics`` (computed at scrape time).

Each is one aggregate query; none returns per-sweep or per-trial rows, so a scrape
costs the same with 10 sweeps or 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, case, func, inspect, select, text
from sqlalchemy.orm import Session

from app.db import db_now
from app.models import Sweep, SweepStatus, Trial, TrialRole, TrialStatus
from app.services.trials import count_online_workers


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    revision: str | None = None


def schema_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None before the first migration); quiet, unlike Alembic's."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def readiness(engine: Engine, head: str | None) -> Readiness:
    """Ready when the database answers and its schema is at the migrations' head."""
    try:
        current = schema_revision(engine)
    except Exception as exc:  # any failure to connect or read is "not ready", never a 500
        return Readiness(False, f"database unreachable ({exc.__class__.__name__})")
    if current != head:
        return Readiness(False, f"migrations not at head (database {current}, code {head})", current)
    return Readiness(True, "ok", current)


def trial_counts_by_role_status(session: Session) -> dict[tuple[str, str], int]:
    """Trials per (role, status), every pair present (zeros included)."""
    out = {(r.value, s.value): 0 for r in TrialRole for s in TrialStatus}
    q = select(Trial.role, Trial.status, func.count()).group_by(Trial.role, Trial.status)
    for role, status, n in session.execute(q):
        out[(role, status)] = n
    return out


def sweep_counts_by_status(session: Session) -> dict[str, int]:
    out = {s.value: 0 for s in SweepStatus}
    for status, n in session.execute(select(Sweep.status, func.count()).group_by(Sweep.status)):
        out[status] = n
    return out


def expired_leases(session: Session) -> int:
    """Running trials whose lease has expired and that the reaper has not reclaimed yet."""
    now = db_now(session)
    q = select(func.count()).where(Trial.status == TrialStatus.running, Trial.lease_expires_at < now)
    return session.scalar(q) or 0


def retried_attempts(session: Session) -> int:
    """Attempts beyond the first, over all trials: claims of a trial whose earlier lease expired."""
    q = select(func.coalesce(func.sum(Trial.attempt - 1), 0)).where(Trial.attempt > 1)
    return int(session.scalar(q) or 0)


def workers_online(session: Session, within_seconds: float) -> int:
    return count_online_workers(session, within_seconds)


@dataclass(frozen=True)
class DurationHistogram:
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count)
    count: int
    total_seconds: float


def trial_duration_histogram(session: Session, bounds: tuple[float, ...]) -> DurationHistogram:
    """Cumulative histogram of finished trials' ``duration_seconds``, in one query."""
    cols = [func.sum(case((Trial.duration_seconds <= b, 1), else_=0)) for b in bounds]
    q = select(func.count(), func.coalesce(func.sum(Trial.duration_seconds), 0.0), *cols).where(
        Trial.duration_seconds.is_not(None)
    )
    row = session.execute(q).one()
    count, total, *cum = row
    return DurationHistogram(
        buckets=[(b, int(c or 0)) for b, c in zip(bounds, cum, strict=True)],
        count=int(count or 0),
        total_seconds=float(total or 0.0),
    )
