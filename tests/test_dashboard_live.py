"""The dashboard's live progress in a real browser (issue 16): a running sweep's page shows its
phase, epoch progress and the running trials' curves, and moves as epochs arrive; after Cancel
the counts and the status agree without a reload; the datasets page; model download links;
a refit trial is labelled. Same browser, seeded store and checks as ``test_dashboard``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tests.test_dashboard as dashboard
from app.db import Database
from app.models import Trial
from app.services.artifacts import store_models
from tests.test_dashboard import Browse, Site

pytestmark = pytest.mark.slow

# The dashboard tests' fixtures (the seeded store, the browser, the sites), used here as they are.
seeded_db, browser, shared_site = dashboard.seeded_db, dashboard.browser, dashboard.shared_site
site, own_site, browse = dashboard.site, dashboard.own_site, dashboard.browse


def epoch(live: Site, trial: tuple[int, str, str], n: int, val_loss: float) -> str:
    """A worker reports epoch ``n`` of a seeded running trial; returns the API's word on it."""
    trial_id, token, worker_id = trial
    # A worker reports every metric; the curves draw the sweep's (the seeded running sweep: val_accuracy).
    report = {
        "trial_id": trial_id,
        "lease_token": token,
        "epoch": n,
        "val_loss": val_loss,
        "val_accuracy": 1 - val_loss / 2,
    }
    r = live.server.http.post(f"/api/v1/workers/{worker_id}/epochs", json={"reports": [report]})
    r.raise_for_status()
    return r.json()["states"][str(trial_id)]


def test_running_sweep_shows_epoch_progress_and_running_curves(own_site: Site, browse: Browse) -> None:
    live = own_site
    sid = live.seeded.running_id
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    page.evaluate("window.__sameDocument = true")
    api = live.api(f"/api/v1/sweeps/{sid}")
    assert page.get_attribute("[data-testid=phase]", "data-phase") == api["phase"] == "searching"
    epochs = "[data-testid=epochs]"
    assert int(page.get_attribute(epochs, "data-done")) == api["epochs_done"]
    assert int(page.get_attribute(epochs, "data-planned")) == api["epochs_planned"] == 12 * 5
    assert int(page.get_attribute(epochs, "data-running-done")) == api["running_epochs_done"] == 4
    text = page.inner_text(epochs)
    assert f"epochs {api['epochs_done']} / 60" in text and "2 running at 4 / 10 epochs" in text
    assert "elapsed" in text and "ETA" in text
    # The bar's running part is the epochs done, not the running trials' count (it is not full).
    assert page.locator("[data-testid=running-seg]").count() == 1

    # The running trials' curves are drawn (dashed), next to the finished ones.
    browse.wait_charts("curves", "heatmap")
    page.wait_for_selector("#chart-curves[data-running='2']")
    curves = live.api(f"/api/v1/sweeps/{sid}/curves")
    assert int(page.get_attribute("#chart-curves", "data-series")) == len(curves["trials"])
    assert page.locator("#chart-curves svg path[stroke-dasharray]").count() >= 2
    points = int(page.get_attribute("#chart-curves", "data-points"))
    assert "Infinity" not in page.inner_text("#plots") and "inf" not in page.inner_text("#chart-heatmap")

    # A worker reports an epoch: the page moves without a reload.
    running = live.seeded.running
    assert epoch(live, running[0], 3, 0.31) == "ok"
    page.wait_for_selector(f"{epochs}[data-running-done='5']")
    page.wait_for_selector(f"#chart-curves[data-points='{points + 1}']")
    assert "2 running at 5 / 10 epochs" in page.inner_text(epochs)
    browse.shot("sweep-running-epochs")

    # Cancel: the status turns now; the counts follow as the running trials stop, without a reload.
    page.once("dialog", lambda d: d.accept())
    with page.expect_response(lambda r: r.url.endswith(f"/sweeps/{sid}/cancel")):
        page.click("[data-testid=cancel]")
    page.wait_for_selector("#summary[data-status=canceled]")
    page.wait_for_selector("[data-testid=phase][data-phase=canceling]")
    canceled = live.api(f"/api/v1/sweeps/{sid}")["counts"]["canceled"]
    for trial in running:
        assert epoch(live, trial, 4, 0.3) == "cancel"
        trial_id, token, worker_id = trial
        outcome = {"trial_id": trial_id, "lease_token": token, "status": "canceled", "epochs_done": 4}
        live.server.http.post(f"/api/v1/workers/{worker_id}/complete", json={"outcomes": [outcome]})
    page.wait_for_selector("[data-testid=phase][data-phase=finished]")
    after = live.api(f"/api/v1/sweeps/{sid}")
    assert after["counts"]["running"] == 0 and after["counts"]["canceled"] == canceled + 2
    for status, n in after["counts"].items():
        assert int(page.get_attribute(f"[data-testid=counts] li[data-status={status}]", "data-count")) == n
    assert page.locator("[data-testid=running-seg]").count() == 0
    assert page.evaluate("window.__sameDocument") is True
    browse.assert_clean()


def test_models_datasets_page_and_a_refit_trial(own_site: Site, browse: Browse, tmp_path: Path) -> None:
    live = own_site
    sid = live.seeded.finished_id
    db = Database(f"sqlite:///{tmp_path / 'gridsweep.db'}")  # own_site's copy of the store
    try:
        with db.session() as s:
            final = s.query(Trial).filter_by(sweep_id=sid, role="final").order_by(Trial.seed).first()
            assert final is not None
            store_models(s, final, "best", {"state_dict": b"weights" * 100, "torchscript": b"script" * 50})
            final_id = final.id
            final.role = "refit"  # the page of a refit trial (same columns, another role)
    finally:
        db.dispose()
    page = browse.page
    browse.goto(f"/sweeps/{sid}")
    links = page.locator("[data-testid=models] a")
    assert links.count() == 2
    href = links.first.get_attribute("href")
    assert href == f"/api/v1/sweeps/{sid}/model?kind=best&format=state_dict"
    assert "best model (state_dict" in links.first.inner_text()
    assert page.request.get(browse.base + href).body() == b"weights" * 100
    took = page.get_attribute("[data-testid=sweep-duration]", "data-value")
    assert float(took) == live.api(f"/api/v1/sweeps/{sid}")["duration_seconds"]

    browse.goto(f"/trials/{final_id}")
    assert page.inner_text("[data-testid=trial-role]") == "refit: trained on train + validation"
    assert "measured on data it trained on" in page.inner_text("[data-testid=refit-note]")
    assert "(on its training data)" in page.inner_text("[data-testid=trial-metrics]")
    assert "share of the pack's wall time" in page.inner_text("[data-testid=trial-run]")

    browse.goto("/datasets")
    assert "No uploaded dataset yet." in page.inner_text("[data-testid=datasets-empty]")
    rows = "a,b,label\n" + "".join(f"{i},{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(30))
    r = live.server.http.post(
        "/api/v1/datasets", files={"file": ("shop.csv", rows.encode())}, data={"target": "label"}
    )
    assert r.status_code == 201, r.text
    browse.goto("/datasets")
    row = page.locator(f"[data-testid=datasets-table] tr[data-dataset-id='{r.json()['id']}']")
    assert (
        "shop" in row.inner_text() and "classification" in row.inner_text() and "no, yes" in row.inner_text()
    )
    assert row.locator("[data-testid=n-rows]").inner_text() == "30"
    browse.shot("datasets")
    browse.assert_clean()


def test_a_sweep_whose_trials_all_run_draws_their_curves_and_no_infinity(
    own_site: Site, browse: Browse
) -> None:
    # The issue's case: every trial at some epoch, none finished. The plots must not say "no
    # finished trial yet" for the curves, the heatmap must not get an Infinity colour scale, and
    # the bar must not look full.
    live = own_site
    http = live.server.http
    spec = {
        "name": "all-running",
        "dataset": "moons",
        "parameters": {"hidden_units": [8, 16], "learning_rate": [0.01, 0.1], "epochs": 500},
    }
    for other in (live.seeded.running_id, live.seeded.queued_id):  # their queued trials come first
        http.post(f"/api/v1/sweeps/{other}/cancel").raise_for_status()
    sid = http.post("/api/v1/sweeps", json=spec).json()["id"]
    wid = http.post("/api/v1/workers", json={"name": "w-all", "device": "cpu"}).json()["id"]
    held = http.post(f"/api/v1/workers/{wid}/claim", json={"max_trials": 4}).json()["trials"]
    assert len(held) == 4 and {t["sweep_id"] for t in held} == {sid}
    reports = [
        # val_error: the sweep's metric (moons' default), what the curves draw.
        {
            "trial_id": t["trial_id"],
            "lease_token": t["lease_token"],
            "epoch": e,
            "val_loss": 1.0 / e,
            "val_error": 0.5 / e,
        }
        for t in held
        for e in range(1, 238)
    ]
    http.post(f"/api/v1/workers/{wid}/epochs", json={"reports": reports}).raise_for_status()
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    page.wait_for_selector("#chart-curves[data-state=drawn][data-running='4']")
    assert int(page.get_attribute("#chart-curves", "data-points")) == 4 * 237
    page.wait_for_selector("#chart-heatmap[data-state=empty]")
    assert "no scored config yet" in page.inner_text("#chart-heatmap")
    assert "Infinity" not in page.inner_text("#plots")
    text = page.inner_text("[data-testid=epochs]")
    assert "epochs 948 / 2000" in text and "4 running at 948 / 2000 epochs" in text and "ETA" in text
    assert page.get_attribute("[data-testid=phase]", "data-phase") == "searching"
    # 4 trials at 237 of 500 epochs: under half the bar, not all of it.
    assert "w47" in page.get_attribute("[data-testid=running-seg]", "class")
    assert page.inner_text("[data-testid=done]") == "0"
    browse.shot("sweep-all-running")
    browse.assert_clean()


def test_a_click_held_across_the_summary_s_poll_is_not_lost(own_site: Site, browse: Browse) -> None:
    """The summary polls itself and is swapped whole: a count link (or Cancel) held down while a
    poll answers would be replaced under the pointer, and its mouseup would land on the new one:
    no click. A poll that lands mid-press is not swapped in (app/dashboard/static/dashboard.js);
    the press ends in its click, and the polls swap again once it is released."""
    live = own_site
    sid = live.seeded.running_id
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    page.evaluate(
        """() => { window.__polls = 0; document.addEventListener("htmx:afterRequest", (e) => {
            if (e.detail.requestConfig.verb === "get" && e.detail.pathInfo.requestPath.endsWith("/summary"))
                window.__polls++; }); }"""
    )
    link = page.locator("[data-testid=counts] li[data-status=succeeded] a")
    box = link.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    # A poll answers while the link is held (the page's CSP allows no eval: asked from here).
    deadline = time.monotonic() + 15
    while page.evaluate("() => window.__polls") == 0:
        assert time.monotonic() < deadline, "no poll of the summary in 15 s"
        page.wait_for_timeout(50)
    page.mouse.up()
    page.wait_for_url(f"**/sweeps/{sid}?status=succeeded")
    page.wait_for_selector("#trials[data-status=succeeded]")
    # Released: the next poll is swapped in (a reported epoch shows without a reload).
    assert epoch(live, live.seeded.running[0], 3, 0.29) == "ok"
    page.wait_for_selector("[data-testid=epochs][data-running-done='5']")
    browse.assert_clean()
