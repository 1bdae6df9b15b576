"""Long polls: a worker already waiting is handed work the moment it is queued, and a sweep
read that waits for its sweep's end is answered the moment the sweep ends.

The servers here recheck the store only every 30 s, longer than any wait (25 s), and a waiting
claim makes no try at its deadline: a waiting claim that comes back with a trial was woken by
the request that queued it, not by a poll. Event order only, no clock read: the claim is seen
waiting (its first try stamped the worker) before the work is queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import update

from app.db import Database
from app.models import Worker
from tests.conftest import Server
from tests.robust_helpers import spec, trial_rows, wait_for

WAIT = 25.0  # shorter than the recheck: only the signal can hand a waiting claim its trial
NO_RECHECK = {"claim_recheck_seconds": "30", "lease_seconds": "600"}
LONG_AGO = datetime(2000, 1, 1)


def register(server: Server, db_url: str, name: str) -> str:
    wid = server.http.post("/api/v1/workers", json={"name": name}).json()["id"]
    db = Database(db_url)
    with db.session() as s:  # so that the waiting claim's first try is seen (it stamps the worker)
        s.execute(update(Worker).where(Worker.id == wid).values(last_heartbeat_at=LONG_AGO))
    db.dispose()
    return wid


def waiting_claim(server: Server, wid: str, max_trials: int = 4) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a claim with ``wait_seconds`` on a thread; return once it is waiting at the API."""
    out: dict[str, Any] = {}

    def call() -> None:
        with httpx.Client(base_url=server.url, timeout=WAIT + 30) as http:
            body = {"max_trials": max_trials, "wait_seconds": WAIT}
            r = http.post(f"/api/v1/workers/{wid}/claim", json=body)
            out["status"], out["body"] = r.status_code, r.json()

    t = threading.Thread(target=call, daemon=True)
    t.start()

    def seen() -> bool:
        workers = {w["id"]: w for w in server.http.get("/api/v1/workers").json()}
        return not workers[wid]["last_heartbeat_at"].startswith("2000-")

    wait_for(seen, 30, "the claim's first try")
    return t, out


def test_a_waiting_claim_is_handed_the_trials_of_a_sweep_created_while_it_waits(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url, **NO_RECHECK)
    wid = register(server, db_url, "waiter")
    thread, out = waiting_claim(server, wid)
    assert "status" not in out  # still waiting: nothing was queued
    sid = server.http.post("/api/v1/sweeps", json=spec("wake", 3)).json()["id"]
    thread.join(timeout=WAIT + 40)
    assert out["status"] == 200
    got = out["body"]["trials"]
    assert got and {t["sweep_id"] for t in got} == {sid}
    assert out["body"]["max_wait_seconds"] >= WAIT
    assert {t.worker_id for t in trial_rows(db_url, sid) if t.status == "running"} == {wid}


def test_the_request_ending_the_last_search_trial_queues_the_final_and_wakes_a_waiting_claim(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url, **NO_RECHECK)
    sid = server.http.post("/api/v1/sweeps", json=spec("final", 1)).json()["id"]
    a = register(server, db_url, "trainer")
    (search,) = server.http.post(f"/api/v1/workers/{a}/claim", json={"max_trials": 4}).json()["trials"]
    b = register(server, db_url, "waiter")
    thread, out = waiting_claim(server, b)
    assert "status" not in out  # the only trial is running: nothing to hand out yet
    outcome = {
        "trial_id": search["trial_id"],
        "lease_token": search["lease_token"],
        "status": "succeeded",
        "metrics": {"train_loss": 0.5, "val_loss": 0.4, "val_error": 0.2, "val_accuracy": 0.8},
        "epochs_done": 1,
    }
    r = server.http.post(f"/api/v1/workers/{a}/complete", json={"outcomes": [outcome]})
    assert r.json()["states"] == {str(search["trial_id"]): "ok"}
    # The store as that request left it: the final retrain is there already (queued, or taken
    # by the waiting claim), created by the very transaction that ended the search trial.
    finals = [t for t in trial_rows(db_url, sid) if t.role == "final"]
    assert len(finals) == 1 and finals[0].status in ("queued", "running")
    thread.join(timeout=WAIT + 40)
    assert out["status"] == 200
    assert [(t["trial_id"], t["role"]) for t in out["body"]["trials"]] == [(finals[0].id, "final")]


def test_a_worker_signing_off_gives_back_what_it_still_held(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url, **NO_RECHECK)
    sid = server.http.post("/api/v1/sweeps", json=spec("sign-off", 2)).json()["id"]
    wid = register(server, db_url, "leaving")
    held = server.http.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": 1}).json()["trials"]
    # Its claim is answered while it stops (it never reads the answer); the sign-off requeues it.
    r = server.http.post(f"/api/v1/workers/{wid}/sign-off")
    assert r.status_code == 200 and r.json()["states"] == {str(held[0]["trial_id"]): "lost"}
    rows = trial_rows(db_url, sid)
    assert all(t.status == "queued" and t.attempt == 0 and t.worker_id is None for t in rows)
    workers = {w["id"]: w for w in server.http.get("/api/v1/workers").json()}
    assert workers[wid]["status"] == "offline"


def waiting_read(server: Server, sid: int) -> tuple[threading.Thread, dict[str, Any]]:
    """``GET /api/v1/sweeps/{sid}?wait_seconds=WAIT`` on a thread, once its request was sent."""
    out: dict[str, Any] = {}
    sent = threading.Event()

    def call() -> None:
        hooks = {"request": [lambda _: sent.set()]}
        with httpx.Client(base_url=server.url, timeout=WAIT + 30, event_hooks=hooks) as http:
            r = http.get(f"/api/v1/sweeps/{sid}", params={"wait_seconds": WAIT})
            out["status"], out["body"] = r.status_code, r.json()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert sent.wait(30)
    return t, out


def test_a_sweep_read_that_waits_is_answered_when_the_sweep_ends_and_not_before(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url, **NO_RECHECK)
    sid = server.http.post("/api/v1/sweeps", json=spec("ends", 2)).json()["id"]
    thread, out = waiting_read(server, sid)
    # Another sweep queued, then ended, wakes every wait: this one tries again and waits on.
    other = server.http.post("/api/v1/sweeps", json=spec("other", 1)).json()["id"]
    assert server.http.post(f"/api/v1/sweeps/{other}/cancel").status_code == 200
    thread.join(timeout=1.0)
    assert thread.is_alive() and "status" not in out
    assert server.http.post(f"/api/v1/sweeps/{sid}/cancel").status_code == 200
    # Joined before the wait's own end (WAIT, and no recheck before it): woken by the cancel.
    thread.join(timeout=WAIT - 5)
    assert not thread.is_alive()
    assert out["status"] == 200 and out["body"]["id"] == sid and out["body"]["status"] == "canceled"


def test_a_sweep_read_of_an_ended_sweep_answers_at_once_and_bad_waits_are_4xx(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url, **NO_RECHECK)
    sid = server.http.post("/api/v1/sweeps", json=spec("over", 1)).json()["id"]
    server.http.post(f"/api/v1/sweeps/{sid}/cancel")
    # A wait far past the cap (30 s) is cut to it, not refused; an ended sweep needs none (the
    # client's timeout is shorter than any wait).
    with httpx.Client(base_url=server.url, timeout=WAIT - 5) as http:
        r = http.get(f"/api/v1/sweeps/{sid}", params={"wait_seconds": 3600})
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        missing = http.get("/api/v1/sweeps/999999", params={"wait_seconds": 10})
        assert missing.status_code == 404 and "sweep 999999 not found" in missing.json()["detail"]
        for bad in ("-1", "nan", "soon"):
            r = http.get(f"/api/v1/sweeps/{sid}", params={"wait_seconds": bad})
            assert r.status_code == 422, bad
            assert "wait_seconds" in r.text
