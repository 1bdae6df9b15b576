"""Claims that wait at the API for work (a long poll), without holding up a worker that stops.

The API answers a claim with ``wait_seconds`` as soon as a trial is queued (or empty once the
wait is over): no poll interval. The wait runs on a thread of its own; the worker's main
thread waits for its answer or for the stop flag (``Stopping``, which wakes it), so SIGTERM
is obeyed at once. A claim answered after the worker stopped is not lost: the worker signs
off on its way out and the API requeues whatever it still holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gridsweep.client import ApiClient

# How long one claim waits at the API for work (the API takes at most its max_wait_seconds).
CLAIM_WAIT_SECONDS = 20.0


class Stopping(threading.Event):
    """The worker's stop flag: setting it also wakes whatever waits in ``waking``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._wakes: set[threading.Event] = set()

    def set(self) -> None:
        super().set()
        with self._lock:
            wakes = list(self._wakes)
        for ev in wakes:
            ev.set()

    @contextmanager
    def waking(self, ev: threading.Event) -> Iterator[None]:
        with self._lock:
            self._wakes.add(ev)
        try:
            yield
        finally:
            with self._lock:
                self._wakes.discard(ev)


def claim(
    client: ApiClient, stopping: Stopping, worker_id: str, max_trials: int, wait_seconds: float
) -> dict[str, Any] | None:
    """The claim's answer (waiting up to ``wait_seconds`` at the API), or None when the worker
    began stopping meanwhile."""
    if wait_seconds <= 0:
        return client.claim(worker_id, max_trials)
    done = threading.Event()
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["answer"] = client.claim(worker_id, max_trials, wait_seconds)
        except BaseException as exc:  # handed to the main thread (or dropped: it stopped)
            box["error"] = exc
        finally:
            done.set()

    with stopping.waking(done):
        if stopping.is_set():
            return None
        threading.Thread(target=call, name="claim", daemon=True).start()
        done.wait()
    if stopping.is_set() and "answer" not in box:
        return None
    if "error" in box:
        raise box["error"]
    return box["answer"]
