"""Work for idle workers: a signal when trials are queued, each claim's fair share, signing off.

``mark_work_queued(session)``: called wherever trials become queued (a sweep created or
extended, a search top-up, a final evaluation, a rerun, a release, the reaper). Once that
session commits, every claim waiting in this process (``app.api.long_poll``) is woken and
tries again at once; claims queued by another API process are found by the waiting claims'
short recheck (``GRIDSWEEP_CLAIM_RECHECK_SECONDS``). ``mark_sweep_ended`` wakes them too: a
worker that exits once its sweep ended (``gridsweep run``) is answered at once.

Fair share: a claim takes at most ``ceil(queued / (1 + idle workers))`` trials of the pack at
the head of the queue, where the idle workers are the others that hold no running trial, are
not signed off and were seen in the last ``IDLE_SEEN_SECONDS`` (a waiting claim is seen at
every recheck). On one machine a small sweep thus spreads over every worker instead of one
worker taking it whole; a lone worker still takes the whole pack. A stopping worker signs off
(``app.services.requeue.sign_off``): it is not counted, and what it still holds is requeued.
"""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import datetime, timedelta

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app.models import Trial, TrialStatus, Worker, WorkerStatus

# A worker seen this recently, holding nothing, is idle (a waiting claim is seen every recheck).
IDLE_SEEN_SECONDS = 5.0
_QUEUED, _ENDED = "gridsweep_work_queued", "gridsweep_sweep_ended"


class Waiter:
    """One waiting claim: an asyncio event of its loop, set from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.ended = False  # a sweep ended since the claim began waiting

    def wake(self, ended: bool) -> None:
        def _set() -> None:
            self.ended = self.ended or ended
            self.event.set()

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # its loop is closed: nobody waits there any more
            pass


class WorkSignal:
    """Wakes the claims waiting in this process; ``notify`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[Waiter] = set()

    def add(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self, ended: bool = False) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for w in waiters:
            w.wake(ended)


SIGNAL = WorkSignal()


def mark_work_queued(session: Session) -> None:
    """Wake the waiting claims once ``session`` commits (not before: they would find nothing)."""
    session.info[_QUEUED] = True


def mark_sweep_ended(session: Session) -> None:
    session.info[_ENDED] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    queued, ended = session.info.pop(_QUEUED, False), session.info.pop(_ENDED, False)
    if queued or ended:
        SIGNAL.notify(ended=ended)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_QUEUED, None)
    session.info.pop(_ENDED, None)


def idle_others(session: Session, worker: Worker, now: datetime) -> int:
    """Other workers that could take work now: online, seen lately, holding no running trial."""
    busy = select(Trial.id).where(Trial.worker_id == Worker.id, Trial.status == TrialStatus.running)
    return (
        session.scalar(
            select(func.count())
            .select_from(Worker)
            .where(
                Worker.id != worker.id,
                Worker.status == WorkerStatus.online,
                Worker.last_heartbeat_at >= now - timedelta(seconds=IDLE_SEEN_SECONDS),
                ~busy.exists(),
            )
        )
        or 0
    )


def fair_share(queued: int, idle: int) -> int:
    """This claim's share of ``queued`` trials when ``idle`` other workers wait too."""
    return max(1, math.ceil(queued / (1 + idle)))
