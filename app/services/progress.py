"""How far sweeps have got: the phase, epochs done over epochs planned, elapsed time and an ETA.

Running trials report every epoch (``Trial.epochs_done``), so progress moves while they
train, not only when they end. One grouped query serves a whole page of sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import db_now, json_key_text
from app.models import TERMINAL_TRIAL_STATUSES, Sweep, SweepStatus, Trial, TrialRole, TrialStatus

# queued: no trial started; searching: the grid is training; evaluating: the best config is being
# retrained and scored on the test split (and refit); canceling: canceled, trials still stopping;
# finished: succeeded, failed or canceled, nothing running.
PHASES = ("queued", "searching", "evaluating", "canceling", "finished")
ENDED = {s.value for s in TERMINAL_TRIAL_STATUSES}
ENDED_SWEEP = (SweepStatus.succeeded, SweepStatus.failed, SweepStatus.canceled)


@dataclass(frozen=True)
class SweepProgress:
    phase: str
    epochs_done: int  # ended trials count their planned epochs (what is left of them will not run)
    epochs_planned: int  # every trial of the grid, and the test evaluation once it is queued
    running: int  # trials training now (any role but reruns)
    running_epochs_done: int
    running_epochs_planned: int
    elapsed_seconds: float | None  # since the first trial started (to the end once finished)
    eta_seconds: float | None  # while running: what is planned and not done, at the rate so far
    duration_seconds: float | None  # once finished: first trial started to the end


@dataclass
class _Tally:
    planned: int = 0
    done: int = 0
    trained: int = 0  # epochs actually trained (the rate)
    running: int = 0
    running_done: int = 0
    running_planned: int = 0
    testing: bool = False


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else max(0.0, (b - a).total_seconds())


def sweep_progress(session: Session, sweeps: list[Sweep]) -> dict[int, SweepProgress]:
    """The progress of each of ``sweeps`` (reruns are extra work and not counted)."""
    tallies = {s.id: _Tally() for s in sweeps}
    if not sweeps:
        return {}
    epochs = json_key_text(session, Trial.params, "epochs")
    rows = session.execute(
        select(
            Trial.sweep_id,
            Trial.role,
            Trial.status,
            epochs,
            func.count(),
            func.coalesce(func.sum(Trial.epochs_done), 0),
        )
        .where(Trial.sweep_id.in_(list(tallies)), Trial.role != TrialRole.rerun)
        .group_by(Trial.sweep_id, Trial.role, Trial.status, epochs)
    ).all()
    for sid, role, status, planned_text, n, trained in rows:
        t = tallies[sid]
        per_trial = int(float(planned_text)) if planned_text not in (None, "null") else 0
        t.planned += n * per_trial
        t.trained += int(trained)
        t.testing = t.testing or role != TrialRole.search
        if status in ENDED:
            t.done += n * per_trial
        elif status == TrialStatus.running:
            t.done += min(int(trained), n * per_trial)
            t.running += n
            t.running_done += int(trained)
            t.running_planned += n * per_trial
    now = db_now(session)
    out: dict[int, SweepProgress] = {}
    for s in sweeps:
        t = tallies[s.id]
        ended = s.status in ENDED_SWEEP
        if s.status == SweepStatus.queued:
            phase = "queued"
        elif ended:
            phase = "canceling" if t.running else "finished"
        else:
            phase = "evaluating" if t.testing else "searching"
        end = s.finished_at if ended and not t.running else now
        elapsed = _seconds(s.started_at, end)
        eta = None
        if not ended and elapsed and t.trained > 0 and t.planned > t.done:
            eta = (t.planned - t.done) / (t.trained / elapsed)
        out[s.id] = SweepProgress(
            phase=phase,
            epochs_done=t.done,
            epochs_planned=t.planned,
            running=t.running,
            running_epochs_done=t.running_done,
            running_epochs_planned=t.running_planned,
            elapsed_seconds=elapsed,
            eta_seconds=eta,
            duration_seconds=_seconds(s.started_at, s.finished_at) if ended else None,
        )
    return out
