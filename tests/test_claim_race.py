"""Claim race: 1,000 queued trials, 8 concurrent claimers over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.models import Trial
from tests.conftest import Server
from tests.robust_helpers import log_text, spec

N_TRIALS = 1000
N_CLAIMERS = 8


def test_concurrent_claims_never_duplicate_or_skip(
    start_server: Callable[..., Server], db_url: str, backend: str
) -> None:
    # A long lease: nothing may be reaped while the claimers run (they send no heartbeat).
    server = start_server(db_url, lease_seconds="600")
    created = server.http.post("/api/v1/sweeps", json=spec("race", N_TRIALS))
    assert created.status_code == 201, created.text
    assert created.json()["n_trials"] == N_TRIALS

    claims: list[list[int]] = [[] for _ in range(N_CLAIMERS)]
    oversized: list[int] = []
    errors: list[str] = []
    start = threading.Barrier(N_CLAIMERS)

    def claimer(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            wid = http.post("/api/v1/workers", json={"name": f"claimer-{i}"}).json()["id"]
            start.wait()
            pack = 1 + i % 3  # single claims and packs of 2 and 3 race each other
            while True:
                r = http.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": pack})
                if r.status_code != 200:
                    errors.append(f"claimer {i}: HTTP {r.status_code} {r.text[:200]}")
                    return
                got = [t["trial_id"] for t in r.json()["trials"]]
                if not got:
                    return
                if len(got) > pack:
                    oversized.append(len(got))
                claims[i].extend(got)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(N_CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0

    everything = [tid for c in claims for tid in c]
    counts = Counter(everything)
    duplicates = sum(n - 1 for n in counts.values())
    db = Database(db_url)
    with db.session(readonly=True) as s:
        by_status = dict(s.execute(select(Trial.status, func.count()).group_by(Trial.status)).all())
        attempts = dict(s.execute(select(Trial.attempt, func.count()).group_by(Trial.attempt)).all())
        owners = len(set(s.scalars(select(Trial.worker_id)).all()))
    db.dispose()
    unclaimed = N_TRIALS - len(counts)
    print(
        f"\nclaim race [{backend}]: {N_TRIALS} trials, {N_CLAIMERS} claimers, {len(everything)} claims "
        f"in {seconds:.1f}s ({len(everything) / seconds:.0f}/s); per claimer {[len(c) for c in claims]}; "
        f"duplicates {duplicates}, unclaimed {unclaimed}, errors {len(errors)}"
    )
    assert not errors, errors[:5]
    assert not oversized, f"claims returned more trials than asked for: {oversized[:5]}"
    assert duplicates == 0
    assert unclaimed == 0
    assert by_status == {"running": N_TRIALS}
    assert attempts == {1: N_TRIALS}
    assert owners > 1  # the claimers really raced
    assert "database is locked" not in log_text(Path(server.log.name))  # SQLite: WAL + BEGIN IMMEDIATE
