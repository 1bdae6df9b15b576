"""The worker's HTTP client for the API. Retries through outages with backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from gridsweep.text import clean_text

log = logging.getLogger("gridsweep.worker")

RETRY_STATUS = (502, 503, 504)
MAX_ERROR_CHARS = 20_000  # the API keeps this much of an error text
# Epoch reports per request: at most ~0.4 KB each with every metric, so ~0.4 MB, well inside the API's
# default body limit (1 MiB) and its 4,096 reports per request.
EPOCHS_PER_REQUEST = 1000
# The longest one long-poll read of a sweep waits for its end (``wait_seconds``): well inside the
# client's 30 s read timeout (the API caps a wait at 30 s anyway).
SWEEP_WAIT_SECONDS = 20.0
SWEEP_ENDED = ("succeeded", "failed", "canceled")  # a sweep's statuses once it has ended


def clean_error(error: str | None) -> str | None:
    """An error text the API can store (no NUL byte, no lone surrogate): a failure must be recorded."""
    return None if error is None else clean_text(str(error), MAX_ERROR_CHARS)


def sweep_polls(
    read: Callable[[float], dict[str, Any]], poll: float, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """Each read of a sweep until it has ended or ``deadline`` (``time.monotonic``) passed.

    ``read(wait_seconds)`` is ``GET /api/v1/sweeps/{id}?wait_seconds=``: a long poll of up to
    ``poll`` seconds, answered the moment the sweep ends. An answer that came sooner without the
    end (an older API, which answers at once) is followed by the rest of ``poll`` asleep, so such
    an API is asked once per ``poll`` seconds, as before the long poll."""
    while True:
        asked = time.monotonic()
        left = None if deadline is None else deadline - asked
        sweep = read(min(SWEEP_WAIT_SECONDS, poll if left is None else max(0.0, min(poll, left))))
        yield sweep
        if sweep["status"] in SWEEP_ENDED or (deadline is not None and time.monotonic() >= deadline):
            return
        rest = asked + poll - time.monotonic()
        time.sleep(max(0.0, rest if deadline is None else min(rest, deadline - time.monotonic())))


class ApiError(RuntimeError):
    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {detail}")


class ApiClient:
    """Thin JSON client. Connection errors and 502/503/504 are retried until ``retry_for`` runs out.

    ``interrupt``: when set, a request in its retry loop gives up at once (a worker
    stopping must not sit out an outage); ``interruptible=False`` requests keep retrying.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        timeout: float = 30.0,
        retry_for: float = 600.0,
        interrupt: threading.Event | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = server.rstrip("/")
        # Plain HTTP never handshakes (httpx follows no redirect unless asked), so it loads no
        # certificate store: ~25 ms of each client's start-up, and `gridsweep run` makes four.
        verify = self.base_url.startswith("https://")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, verify=verify)
        self.retry_for = retry_for
        self.interrupt = interrupt or threading.Event()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        retry_for: float | None = None,
        interruptible: bool = True,
        *,
        raw: bool = False,
        **kw: Any,
    ) -> Any:
        """JSON in and out; ``raw=True`` returns the body's bytes; ``kw`` goes to httpx (files, data)."""
        deadline = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        delay = 0.2
        while True:
            try:
                r = self._http.request(method, path, json=json, params=params, **kw)
                if r.status_code not in RETRY_STATUS:
                    if r.status_code >= 400:
                        try:
                            detail = r.json().get("detail")
                        except ValueError:
                            detail = r.text
                        raise ApiError(r.status_code, detail)
                    if raw:
                        return r.content
                    return r.json() if r.content else None
                problem = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise ApiError(503, f"API unreachable: {problem}")
            if interruptible and self.interrupt.is_set():
                raise ApiError(503, f"stopping; API unreachable: {problem}")
            log.warning("%s %s failed (%s); retrying in %.1fs", method, path, problem, delay)
            # Jitter: workers do not retry in lockstep. An interrupt cuts the wait short.
            pause = delay * (0.5 + random.random())
            if interruptible:
                self.interrupt.wait(pause)
            else:
                time.sleep(pause)
            delay = min(delay * 2, 5.0)

    def download(self, path: str, dest: Any, params: Any = None) -> int:
        """Stream a GET's body into the binary file ``dest`` (not held in memory); the bytes written.

        Not retried: a failure part way would leave a partial file behind.
        """
        try:
            with self._http.stream("GET", path, params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    try:
                        detail = r.json().get("detail")
                    except ValueError:
                        detail = r.text
                    raise ApiError(r.status_code, detail)
                n = 0
                for chunk in r.iter_bytes():
                    dest.write(chunk)
                    n += len(chunk)
                return n
        except httpx.TransportError as exc:
            raise ApiError(503, f"API unreachable: {exc.__class__.__name__}: {exc}") from exc

    # --- the worker protocol ---------------------------------------------------------

    def register(self, name: str, hostname: str, device: str) -> dict[str, Any]:
        return self.request("POST", "/api/v1/workers", {"name": name, "hostname": hostname, "device": device})

    def claim(self, worker_id: str, max_trials: int, wait_seconds: float = 0.0) -> dict[str, Any]:
        """Claim a pack; with ``wait_seconds`` the API holds the answer until work is queued (or
        that long): the HTTP timeout covers the wait. An API without the long poll refuses the
        field (422): then the claim is asked again without it (its answer lacks max_wait_seconds)."""
        body: dict[str, Any] = {"max_trials": max_trials}
        if wait_seconds <= 0:
            return self.request("POST", f"/api/v1/workers/{worker_id}/claim", body)
        try:
            return self.request(
                "POST",
                f"/api/v1/workers/{worker_id}/claim",
                {**body, "wait_seconds": wait_seconds},
                timeout=self._http.timeout.read + wait_seconds if self._http.timeout.read else None,
            )
        except ApiError as exc:
            if exc.status_code != 422 or "wait_seconds" not in str(exc.detail):
                raise
            return self.request("POST", f"/api/v1/workers/{worker_id}/claim", body)

    def sign_off(self, worker_id: str) -> dict[int, str]:
        """The worker is stopping: not counted idle any more; what it still held is requeued."""
        r = self.request("POST", f"/api/v1/workers/{worker_id}/sign-off", retry_for=5.0, interruptible=False)
        return {int(k): v for k, v in r["states"].items()}

    def heartbeat(self, worker_id: str, leases: list[dict[str, Any]]) -> dict[int, str]:
        r = self.request("POST", f"/api/v1/workers/{worker_id}/heartbeat", {"leases": leases}, retry_for=5.0)
        return {int(k): v for k, v in r["states"].items()}

    def report_epochs(
        self, worker_id: str, reports: list[dict[str, Any]], retry_for: float | None = None
    ) -> dict[int, str]:
        """Epoch reports, in requests of at most ``EPOCHS_PER_REQUEST`` (a long curve sent at once,
        e.g. a final trial's reused one of 10,000 epochs, would pass the API's body limit)."""
        states: dict[int, str] = {}
        for start in range(0, len(reports), EPOCHS_PER_REQUEST):
            body = {"reports": reports[start : start + EPOCHS_PER_REQUEST]}
            r = self.request("POST", f"/api/v1/workers/{worker_id}/epochs", body, retry_for=retry_for)
            states.update({int(k): v for k, v in r["states"].items()})
        return states

    def complete(self, worker_id: str, outcomes: list[dict[str, Any]]) -> dict[int, str]:
        outcomes = [{**o, "error": clean_error(o["error"])} if o.get("error") else o for o in outcomes]
        r = self.request("POST", f"/api/v1/workers/{worker_id}/complete", {"outcomes": outcomes})
        return {int(k): v for k, v in r["states"].items()}

    def release(
        self, worker_id: str, leases: list[dict[str, Any]], reason: str = "shutdown", error: str | None = None
    ) -> dict[int, str]:
        body = {"leases": leases, "reason": reason, "error": clean_error(error)}
        r = self.request(
            "POST", f"/api/v1/workers/{worker_id}/release", body, retry_for=10.0, interruptible=False
        )
        return {int(k): v for k, v in r["states"].items()}
