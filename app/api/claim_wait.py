"""Long-poll claims: try to claim, and while nothing is claimable wait for work to be queued.

Each try is one short transaction of its own, run in the thread pool; no transaction is held
while waiting, and the wait holds no thread. A try is made again at once when this process
queues work (``app.services.workload.SIGNAL``, set after the commit that queued it), and at
least every ``recheck`` seconds before the deadline (work queued by another API process behind
the same load balancer). The wait ends empty when ``wait_seconds`` pass, the client went away, or a sweep
ended (a worker that exits with its sweep, ``gridsweep run``, hears it at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool

from app.services.workload import SIGNAL, Waiter

T = TypeVar("T")


async def claim_waiting(
    attempt: Callable[[bool], T | None],
    wait_seconds: float,
    recheck: float,
    gone: Callable[[], Awaitable[bool]],
) -> T | None:
    """``attempt(first)`` until it answers (None: nothing yet) or the wait ends (None)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    waiter = Waiter()
    SIGNAL.add(waiter)  # before the first try: work queued during it wakes the wait below
    try:
        first = True
        while True:
            waiter.event.clear()
            answer = await run_in_threadpool(attempt, first)
            first = False
            left = deadline - loop.time()
            if answer is not None or waiter.ended or left <= 0 or await gone():
                return answer
            try:
                await asyncio.wait_for(waiter.event.wait(), min(left, recheck))
            except TimeoutError:
                if loop.time() >= deadline:
                    return None  # no try at the deadline: the worker asks again at once anyway
    finally:
        SIGNAL.remove(waiter)
