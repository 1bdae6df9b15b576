"""Claim exclusivity: many concurrent claimers over HTTP, every trial claimed exactly once."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Server

N_CLAIMERS = 8
# 100 learning rates x 3 batch sizes = 300 trials in 3 packs (a claim never mixes packs).
SPEC = {
    "name": "race",
    "dataset": "moons",
    "parameters": {
        "learning_rate": [i / 1000 for i in range(1, 101)],
        "batch_size": [16, 32, 64],
        "epochs": 1,
    },
}


def claimer(url: str, sweep_id: int, seed: int, out: list[dict[str, Any]], errors: list[str]) -> None:
    """A worker of its own: register, then claim 1..3 at a time until nothing is queued."""
    rng = random.Random(seed)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            wid = http.post("/api/v1/workers", json={"name": f"claimer-{seed}"}).json()["id"]
            while True:
                n = rng.randint(1, 3)
                r = http.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": n})
                r.raise_for_status()
                trials = r.json()["trials"]
                if trials:
                    out.append({"worker": wid, "asked": n, "trials": trials})
                    continue
                counts = http.get(f"/api/v1/sweeps/{sweep_id}").json()["counts"]
                if counts["queued"] == 0:
                    return
    except Exception as exc:  # reported by the test, not lost in a thread
        errors.append(f"claimer {seed}: {exc!r}")


def test_each_trial_is_claimed_exactly_once(db_url: str, start_server: Callable[..., Server]) -> None:
    server = start_server(db_url, lease_seconds=600)  # no lease may expire mid-test, however slow
    created = server.http.post("/api/v1/sweeps", json=SPEC).json()
    sid, n = created["id"], created["n_trials"]
    assert n == 300

    claims: list[dict[str, Any]] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=claimer, args=(server.url, sid, i, claims, errors)) for i in range(N_CLAIMERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert errors == [] and not any(t.is_alive() for t in threads)

    got = Counter(t["trial_id"] for c in claims for t in c["trials"])
    duplicates = sum(k - 1 for k in got.values() if k > 1)
    unclaimed = n - len(got)
    per_worker = Counter(c["worker"] for c in claims for _ in c["trials"])
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    print(
        f"\nclaim race [{backend}]: {n} trials, {N_CLAIMERS} claimers, {len(claims)} claims, "
        f"duplicates {duplicates}, unclaimed {unclaimed}, trials per claimer {sorted(per_worker.values())}"
    )
    assert duplicates == 0 and unclaimed == 0
    assert len(per_worker) > 1  # the claimers really raced

    for c in claims:  # each claim: at most what was asked, one pack, one lease
        assert 1 <= len(c["trials"]) <= c["asked"]
        assert len({t["lease_token"] for t in c["trials"]}) == 1
        assert len({t["params"]["batch_size"] for t in c["trials"]}) == 1

    # The store agrees: every trial running, held by the worker that was told it won it.
    owner = {t["trial_id"]: c["worker"] for c in claims for t in c["trials"]}
    page = server.http.get(f"/api/v1/sweeps/{sid}/trials", params={"limit": 500}).json()
    assert page["total"] == n
    assert {t["status"] for t in page["items"]} == {"running"}
    assert all(t["worker_id"] == owner[t["id"]] and t["attempt"] == 1 for t in page["items"])
