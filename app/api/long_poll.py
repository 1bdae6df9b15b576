"""Long polls: a claim that waits for work to be queued, a sweep read that waits for its end.

Each try is one short transaction of its own, run in the thread pool; no transaction is held
while waiting, and the wait holds no thread. A try is made again at once when this process
queues work or ends a sweep (``app.services.workload.SIGNAL``, set after the commit that did
it), and at least every ``recheck`` seconds before the deadline (work queued, or a sweep ended,
by another API process behind the same load balancer). A claim's wait ends empty when
``wait_seconds`` pass, the client went away, or a sweep ended (a worker that exits with its
sweep, ``gridsweep run``, hears it at once); a sweep read's wait only when its own sweep ended
(``GET /api/v1/sweeps/{id}?wait_seconds=``: ``gridsweep run`` exits the moment its sweep ends,
and costs the API one request per wait instead of one per 0.1 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool

from app.services.workload import SIGNAL, Waiter

T = TypeVar("T")


async def long_poll(
    attempt: Callable[[bool], T | None],
    wait_seconds: float,
    recheck: float,
    gone: Callable[[], Awaitable[bool]],
    *,
    end_with_any_sweep: bool = True,
) -> T | None:
    """``attempt(first)`` until it answers (None: nothing yet) or the wait ends (None).

    ``end_with_any_sweep``: the wait also ends (empty) once any sweep ended since it began (a
    claim: its worker may be one that exits with its sweep). False: an ended sweep only wakes
    it for another try, like queued work (a wait for one sweep's end)."""
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
            if answer is not None or (end_with_any_sweep and waiter.ended) or left <= 0 or await gone():
                return answer
            try:
                await asyncio.wait_for(waiter.event.wait(), min(left, recheck))
            except TimeoutError:
                if loop.time() >= deadline:
                    return None  # no try at the deadline: the worker asks again at once anyway
    finally:
        SIGNAL.remove(waiter)
