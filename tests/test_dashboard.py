"""The dashboard in a real browser: Debian's chromium driven by Playwright against a real server.

The store is seeded once per module (a finished sweep with failed and diverged trials and its
test evaluation, a running sweep with trials held by a worker); each test serves a copy of it.
Every test checks that no request left 127.0.0.1 and that the console stayed free of errors
(each page is loaded under ``Content-Security-Policy: default-src 'self'``, or the server's own
policy, so an inline script, an inline style or eval would show up there).
Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.dashboard.format import num, param
from app.migrate import upgrade
from app.spec import SweepSpec
from tests.conftest import ROOT, Server, require
from tests.dashboard_seed import CHROMIUM, CHROMIUM_ARGS, Seeded, seed_store

pytestmark = pytest.mark.slow

SHOTS = ROOT / "artifacts" / "screenshots"
CHARTS = ("curves", "heatmap", "parallel", "importance", "history")
TIMEOUT_MS = 15_000
CSP = "default-src 'self'"


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Seeded]:
    path = tmp_path_factory.mktemp("dashboard") / "seeded.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return path, seed_store(url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(CHROMIUM.exists(), f"chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Site:
    server: Server
    seeded: Seeded

    def api(self, path: str, **params: Any) -> Any:
        r = self.server.http.get(path, params=params)
        r.raise_for_status()
        return r.json()


def _copy(seeded_db: tuple[Path, Seeded], where: Path) -> str:
    path = where / "gridsweep.db"
    shutil.copy(seeded_db[0], path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def shared_site(seeded_db: tuple[Path, Seeded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One server for the tests that only read (starting one costs seconds)."""
    where = tmp_path_factory.mktemp("shared")
    server = Server(_copy(seeded_db, where), where / "server.log", lease_seconds="3600")
    yield Site(server, seeded_db[1])
    server.stop()


@pytest.fixture
def site(shared_site: Site) -> Site:
    return shared_site


@pytest.fixture
def own_site(seeded_db: tuple[Path, Seeded], tmp_path: Path, start_server: Callable[..., Server]) -> Site:
    """A server on a fresh copy of the store, for a test that changes it."""
    return Site(start_server(_copy(seeded_db, tmp_path), lease_seconds="3600"), seeded_db[1])


@dataclass
class Browse:
    """A fresh browser context on the site that records every request and console error."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response.status == 200, f"{path}: HTTP {response.status}"
        assert "'unsafe-inline'" not in self.policies[-1] and "'unsafe-eval'" not in self.policies[-1]
        return response

    def wait_charts(self, *names: str) -> None:
        for name in names:
            self.page.wait_for_selector(f"#chart-{name}[data-state=drawn] svg", timeout=TIMEOUT_MS)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert self.requests, "no request was seen"
        assert self.outside == [], f"requests left 127.0.0.1: {self.outside}"
        assert self.errors == [], f"browser console errors: {self.errors}"


@pytest.fixture
def browse(browser: Any, request: pytest.FixtureRequest) -> Iterator[Browse]:
    """A fresh browser context on the test's site (``own_site`` when it asks for one)."""
    site: Site = request.getfixturevalue("own_site" if "own_site" in request.fixturenames else "site")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    b = Browse(context.new_page(), site.server.url)

    def route(r: Any) -> None:
        url = r.request.url
        b.requests.append(url)
        if not url.startswith(b.base + "/"):
            b.outside.append(url)
            r.abort()
        elif r.request.resource_type == "document":
            # The pages must work under a strict policy: the server's own, else default-src 'self'.
            response = r.fetch()
            headers = {"content-security-policy": CSP, **response.headers}
            b.policies.append(headers["content-security-policy"])
            r.fulfill(response=response, headers=headers)
        else:
            r.continue_()

    context.route("**/*", route)
    b.page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
    b.page.on("pageerror", lambda e: b.errors.append(f"uncaught: {e}"))
    b.page.set_default_timeout(TIMEOUT_MS)
    yield b
    context.close()


def data_value(page: Any, selector: str) -> str:
    return page.get_attribute(selector, "data-value")


def row_ids(page: Any) -> list[int]:
    return [
        int(x)
        for x in page.eval_on_selector_all("#trials tbody tr", "rows => rows.map(r => r.dataset.trialId)")
    ]


def test_sweeps_page_lists_sweeps_newest_first_with_progress_and_best(site: Site, browse: Browse) -> None:
    sweeps = site.api("/api/v1/sweeps")["items"]
    browse.goto("/")
    rows = browse.page.locator("[data-testid=sweeps-table] tbody tr")
    assert rows.count() == 3
    ids = [int(rows.nth(i).get_attribute("data-sweep-id")) for i in range(3)]
    seeded = site.seeded
    assert ids == [s["id"] for s in sweeps] == [seeded.queued_id, seeded.running_id, seeded.finished_id]
    assert rows.nth(0).locator("[data-testid=best]").inner_text() == "\N{EM DASH}"
    for i, s in enumerate(sweeps[1:], start=1):
        row = rows.nth(i)
        done = sum(s["counts"][k] for k in ("succeeded", "failed", "diverged", "canceled"))
        assert row.locator("[data-testid=progress]").inner_text() == f"{done} / {s['n_trials']}"
        best = row.locator("[data-testid=best]")
        assert float(best.get_attribute("data-value")) == s["best"]["validation"]["mean"]
        assert best.inner_text() == num(s["best"]["validation"]["mean"])
        assert s["name"] in row.inner_text() and s["status"] in row.inner_text()
    browse.shot("sweeps")
    browse.assert_clean()


def test_finished_sweep_page_best_card_counts_spec_and_plots(site: Site, browse: Browse) -> None:
    sid = site.seeded.finished_id
    sweep = site.api(f"/api/v1/sweeps/{sid}")
    best = site.api(f"/api/v1/sweeps/{sid}/best")
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    # The best card shows exactly what GET /best says.
    assert float(data_value(page, "[data-testid=best-mean]")) == best["validation"]["mean"]
    assert float(data_value(page, "[data-testid=best-std]")) == best["validation"]["std"]
    assert page.inner_text("[data-testid=best-mean]") == num(best["validation"]["mean"])
    assert best["test"] and set(best["test"]) == {"test_loss", "test_error", "test_accuracy"}
    for name, value in best["test"].items():
        assert float(data_value(page, f"[data-testid=best-{name}]")) == value
    for name, value in best["params"].items():
        assert page.inner_text(f"[data-testid=best-param-{name}]") == param(value)
    assert int(page.get_attribute("[data-testid=best-trial]", "data-trial-id")) == best["trial_id"]
    # Counts by status, and the spec: its YAML is the stored spec.
    for status, n in sweep["counts"].items():
        assert int(page.get_attribute(f"[data-testid=counts] li[data-status={status}]", "data-count")) == n
    assert sweep["counts"]["failed"] > 0 and sweep["counts"]["diverged"] > 0
    raw = page.text_content("[data-testid=spec-yaml]")
    assert SweepSpec.model_validate(yaml.safe_load(raw)).model_dump(mode="json") == sweep["spec"]

    # Every plot draws an svg with the data the API gives it.
    browse.wait_charts(*CHARTS)
    curves = site.api(f"/api/v1/sweeps/{sid}/curves", top=10)
    history = site.api(f"/api/v1/sweeps/{sid}/history")
    heat = site.api(f"/api/v1/sweeps/{sid}/heatmap", x="learning_rate", y="hidden_units")
    configs = site.api(f"/api/v1/sweeps/{sid}/configs")
    importance = site.api(f"/api/v1/sweeps/{sid}/importance")
    expected = {
        "curves": sum(v is not None for t in curves["trials"] for v in t["val_loss"]),
        "heatmap": sum(c["value"] is not None for c in heat["cells"]),
        "parallel": len(configs["value"]),
        "importance": len(importance["importances"]),
        "history": len(history["trial_ids"]),
    }
    assert all(n > 0 for n in expected.values()), expected
    for name, n in expected.items():
        assert int(page.get_attribute(f"#chart-{name}", "data-points")) == n, name
        assert page.locator(f"#chart-{name} svg path").count() > 0, name
    assert int(page.get_attribute("#chart-curves", "data-series")) == len(curves["trials"])
    # The importance bars, largest first, are the API's.
    assert page.get_attribute("#chart-importance", "data-params") == ",".join(importance["importances"])
    # The best config's curves are drawn in the highlight colour, thicker than the others.
    assert page.locator("#chart-curves svg path[stroke='#e8590c'][stroke-width='3']").count() == len(
        curves["best_trial_ids"]
    )
    browse.shot("sweep-finished")

    # Another pair of axes redraws the heatmap.
    page.select_option("#heatmap-x", "layers")
    other = site.api(f"/api/v1/sweeps/{sid}/heatmap", x="layers", y="hidden_units")
    page.wait_for_selector(f"#chart-heatmap[data-cells='{len(other['cells'])}'][data-state=drawn]")
    assert int(page.get_attribute("#chart-heatmap", "data-points")) == sum(
        c["value"] is not None for c in other["cells"]
    )
    browse.assert_clean()


def test_trials_table_sorts_by_any_column_filters_and_pages(site: Site, browse: Browse) -> None:
    sid = site.seeded.finished_id
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    page.evaluate("window.__sameDocument = true")

    def trials(**params: Any) -> list[int]:
        return [t["id"] for t in site.api(f"/api/v1/sweeps/{sid}/trials", limit=50, **params)["items"]]

    assert page.get_attribute("#trials", "data-total") == "96"
    assert row_ids(page) == trials()

    def click_sort(column: str, order: str) -> None:
        page.click(f"#trials th[data-sort='{column}'] a")
        page.wait_for_selector(f"#trials[data-sort='{column}'][data-order='{order}']")

    # A parameter whose text order differs from its numeric order: 8 < 32 < 128.
    click_sort("params.hidden_units", "asc")
    widths = [
        int(v)
        for v in page.eval_on_selector_all(
            "#trials td[data-col='params.hidden_units']", "tds => tds.map(td => td.dataset.value)"
        )
    ]
    assert widths == sorted(widths) and widths[0] == 8
    assert row_ids(page) == trials(sort="params.hidden_units")
    assert "sort=params.hidden_units" in page.url
    click_sort("params.hidden_units", "desc")
    assert row_ids(page) == trials(sort="params.hidden_units", order="desc")
    click_sort("metric", "asc")
    assert row_ids(page) == trials(sort="metric")

    # Paging keeps the sort; the pager says which rows these are.
    page.click("#trials .pager a.next")
    page.wait_for_selector("#trials[data-page='2']")
    assert row_ids(page) == trials(sort="metric", offset=50)
    assert "rows 51\N{EN DASH}96 of 96" in page.inner_text("[data-testid=pager]")

    # Filtering by status.
    counts = site.api(f"/api/v1/sweeps/{sid}")["counts"]
    page.click("[data-testid=status-filter] a:has-text('diverged')")
    page.wait_for_selector("#trials[data-status='diverged']")
    statuses = page.eval_on_selector_all("#trials tbody tr", "rows => rows.map(r => r.dataset.status)")
    assert statuses == ["diverged"] * counts["diverged"]
    assert page.get_attribute("#trials", "data-total") == str(counts["diverged"])
    assert page.evaluate("window.__sameDocument") is True  # all of it without a reload
    browse.assert_clean()


def test_running_sweep_updates_live_and_cancels(own_site: Site, browse: Browse) -> None:
    site = own_site
    sid = site.seeded.running_id
    trial_id, token, worker_id = site.seeded.running[0]
    browse.goto(f"/sweeps/{sid}")
    page = browse.page
    page.evaluate("window.__sameDocument = true")
    browse.wait_charts(*CHARTS)
    before = site.api(f"/api/v1/sweeps/{sid}")
    assert page.get_attribute(f"#trials tr[data-trial-id='{trial_id}']", "data-status") == "running"
    n_history = int(page.get_attribute("#chart-history", "data-points"))

    # A worker finishes the trial (over the worker protocol) while the page is open: a new best.
    http = site.server.http
    reports = [
        {"trial_id": trial_id, "lease_token": token, "epoch": e, "val_loss": 0.1, "val_accuracy": 0.99}
        for e in (3, 4, 5)
    ]
    assert http.post(f"/api/v1/workers/{worker_id}/epochs", json={"reports": reports}).json()["states"] == {
        str(trial_id): "ok"
    }
    outcome = {
        "trial_id": trial_id,
        "lease_token": token,
        "status": "succeeded",
        "epochs_done": 5,
        "metrics": {"train_loss": 0.09, "val_loss": 0.1, "val_error": 0.01, "val_accuracy": 0.99},
        "device": "cuda:0",
        "duration_seconds": 3.5,
    }
    http.post(f"/api/v1/workers/{worker_id}/complete", json={"outcomes": [outcome]}).raise_for_status()

    page.wait_for_selector(f"#trials tr[data-trial-id='{trial_id}'][data-status=succeeded]")
    page.wait_for_selector(
        f"[data-testid=counts] li[data-status=succeeded][data-count='{before['counts']['succeeded'] + 1}']"
    )
    page.wait_for_selector("[data-testid=best-mean][data-value='0.99']")
    page.wait_for_selector(f"#chart-history[data-points='{n_history + 1}']")
    assert page.evaluate("window.__sameDocument") is True
    browse.shot("sweep-running")

    page.once("dialog", lambda d: d.accept())
    page.click("[data-testid=cancel]")
    page.wait_for_selector("#summary[data-status=canceled]")
    after = site.api(f"/api/v1/sweeps/{sid}")
    assert after["status"] == "canceled" and after["counts"]["queued"] == 0
    assert after["counts"]["canceled"] == before["counts"]["queued"]
    page.wait_for_selector(
        f"[data-testid=counts] li[data-status=canceled][data-count='{after['counts']['canceled']}']"
    )
    assert page.locator("[data-testid=cancel]").count() == 0
    browse.assert_clean()


def test_trial_and_workers_pages(site: Site, browse: Browse) -> None:
    page = browse.page
    best = site.api(f"/api/v1/sweeps/{site.seeded.finished_id}/best")
    trial = site.api(f"/api/v1/trials/{best['trial_id']}")
    browse.goto(f"/trials/{trial['id']}")
    for m in ("train_loss", "val_loss", "val_error", "val_accuracy"):
        assert float(data_value(page, f"[data-testid=trial-metrics] td[data-metric={m}]")) == trial[m]
    browse.wait_charts("trial")
    # train_loss and val_loss for every epoch.
    assert int(page.get_attribute("#chart-trial", "data-points")) == 2 * len(trial["epochs"]) > 0
    assert "cpu-worker-1" in page.inner_text("[data-testid=trial-run]")
    browse.shot("trial")

    diverged = site.api(f"/api/v1/sweeps/{site.seeded.finished_id}/trials", status="diverged", limit=1)[
        "items"
    ][0]
    browse.goto(f"/trials/{diverged['id']}")
    assert diverged["error"] and diverged["error"] in page.inner_text("[data-testid=trial-error]")

    browse.goto("/workers")
    rows = page.locator("[data-testid=workers-table] tbody tr")
    assert rows.count() == 2
    gpu = page.locator(f"tr[data-worker-id='{site.seeded.workers['gpu']}']")
    assert "cuda:0" in gpu.inner_text() and "online" in gpu.inner_text()
    held = sorted(int(x) for x in gpu.locator("a.held").evaluate_all("as => as.map(a => a.dataset.trialId)"))
    assert held == sorted(tid for tid, _, _ in site.seeded.running)
    browse.shot("workers")
    browse.assert_clean()


def test_sweep_without_results_or_grid_axes_says_so(site: Site, browse: Browse) -> None:
    browse.goto(f"/sweeps/{site.seeded.queued_id}")
    page = browse.page
    assert "No trial has finished yet." in page.inner_text("[data-testid=best-empty]")
    assert "needs a grid over two parameters" in page.inner_text("#plots")
    for name in ("curves", "parallel", "importance", "history"):
        page.wait_for_selector(f"#chart-{name}[data-state=empty]")
    assert page.get_attribute("#trials", "data-total") == "1"
    assert page.locator("[data-testid=cancel]").count() == 1
    browse.assert_clean()
