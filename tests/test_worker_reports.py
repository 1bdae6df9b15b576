"""A long curve reaches the API whole: the client splits it into requests the API takes.

A final trial that reuses its search trial's training sends that trial's whole curve at once
(worker/loop.py); with thousands of fast epochs one request would pass the API's limits (4,096
reports, 1 MiB), the worker would take the 4xx for a dead API and the sweep would not end.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.models import TrialEpoch
from gridsweep.client import EPOCHS_PER_REQUEST, ApiClient
from tests.conftest import Server
from tests.robust_helpers import spec

EPOCHS = 5000  # past the API's 4,096 reports per request


def test_a_curve_of_thousands_of_epochs_is_sent_in_requests_the_api_takes(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(db_url)
    server.http.post("/api/v1/sweeps", json=spec("long-curve", 1, epochs=EPOCHS)).raise_for_status()
    client = ApiClient(server.url, retry_for=5)
    wid = client.register("reporter", "host", "cpu")["id"]
    (trial,) = client.claim(wid, 1)["trials"]
    ref = {"trial_id": trial["trial_id"], "lease_token": trial["lease_token"]}
    reports = [{**ref, "epoch": e, "train_loss": 1 / e, "val_loss": 2 / e} for e in range(1, EPOCHS + 1)]
    # As one request the API refuses it, a 4xx naming the limit (nothing is stored)...
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(f"/api/v1/workers/{wid}/epochs", json={"reports": reports})
    assert r.status_code in (413, 422) and ("4096" in r.text or "limit" in r.text), r.text
    # ...and the client sends it in parts: every epoch stored once, the trial's state said.
    assert EPOCHS > EPOCHS_PER_REQUEST
    assert client.report_epochs(wid, reports) == {trial["trial_id"]: "ok"}
    database = Database(db_url)
    try:
        with database.session(readonly=True) as s:
            rows = s.execute(
                select(func.count(), func.min(TrialEpoch.epoch), func.max(TrialEpoch.epoch)).where(
                    TrialEpoch.trial_id == trial["trial_id"]
                )
            ).one()
    finally:
        database.dispose()
    assert tuple(rows) == (EPOCHS, 1, EPOCHS)
