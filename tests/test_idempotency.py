"""``Idempotency-Key`` on sweep submission: 20 concurrent POSTs with one key make one sweep."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.models import IdempotencyKey, Sweep, Trial
from tests.conftest import Server
from tests.robust_helpers import spec

N_REQUESTS = 20


def test_concurrent_posts_with_one_key_make_one_sweep(
    start_server: Callable[..., Server], db_url: str, backend: str
) -> None:
    server = start_server(db_url)
    body = spec("idem", 30)
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    go = threading.Barrier(N_REQUESTS)

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            go.wait()
            r = http.post("/api/v1/sweeps", json=body, headers={"Idempotency-Key": "ci-run-42"})
            with lock:
                answers.append(r)

    threads = [threading.Thread(target=post) for _ in range(N_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    statuses = Counter(r.status_code for r in answers)
    ids = {r.json()["id"] for r in answers if r.status_code == 201}
    replayed = sum(r.headers.get("idempotent-replayed") == "true" for r in answers)
    db = Database(db_url)
    with db.session(readonly=True) as s:
        n_sweeps = s.scalar(select(func.count()).select_from(Sweep))
        n_trials = s.scalar(select(func.count()).select_from(Trial))
        n_keys = s.scalar(select(func.count()).select_from(IdempotencyKey))
    print(
        f"\nidempotency [{backend}]: {N_REQUESTS} concurrent POSTs, one key -> statuses {dict(statuses)}, "
        f"sweeps {n_sweeps}, trials {n_trials}, replays {replayed}"
    )
    assert statuses == {201: N_REQUESTS}
    assert len(ids) == 1 and n_sweeps == 1 and n_trials == 30 and n_keys == 1
    assert replayed == N_REQUESTS - 1
    first = next(r for r in answers if r.headers.get("idempotent-replayed") is None).json()
    assert all(r.json() == first for r in answers)  # the first answer, replayed as it was

    # The same key with another body is refused with the field that is wrong.
    other = server.http.post(
        "/api/v1/sweeps", json=spec("idem-2", 3), headers={"Idempotency-Key": "ci-run-42"}
    )
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # The same body, key order changed: the same request.
    again = server.http.post(
        "/api/v1/sweeps", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": "ci-run-42"}
    )
    assert again.status_code == 201 and again.json() == first
    # A new key is a new sweep; an invalid spec is not remembered under its key.
    assert (
        server.http.post("/api/v1/sweeps", json=body, headers={"Idempotency-Key": "k2"}).json()["id"]
        != first["id"]
    )
    bad = {**body, "dataset": "nope"}
    assert server.http.post("/api/v1/sweeps", json=bad, headers={"Idempotency-Key": "k3"}).status_code == 422
    fixed = server.http.post("/api/v1/sweeps", json=body, headers={"Idempotency-Key": "k3"})
    assert fixed.status_code == 201
    with db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Sweep)) == 3
    db.dispose()
