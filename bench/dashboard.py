"""How fast a 10,000-trial sweep's dashboard page shows its first table page.

Seeds a store with one 10,000-trial sweep (9,400 finished, 100 running, the rest queued: a sweep
being watched), starts a real ``gridsweep serve`` and times, in the same run:

* the baseline: the API's JSON page of the same trials (``GET /api/v1/sweeps/{id}/trials?limit=50``);
* the sweep page (summary, best config and the first table page, server-rendered), sorted by
  id, by a parameter and by the metric, a deep page, the 2 s poll's fragment, the plot endpoints;
* with chromium present: a real browser's own timings of the page load: HTML received, first
  paint (the first table page is in the HTML, so it is on screen then), all four plots drawn.

Usage: ``python bench/dashboard.py [--db URL] [--repeat N]`` (default: SQLite in a temp dir).
It prints the figures and their ratio to the baseline; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli.local import free_port, stop_all, wait_healthy
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.services.sweeps import create_sweep
from app.spec import SweepSpec
from tests.dashboard_seed import CHROMIUM, CHROMIUM_ARGS, register, run_trials, val_loss_of

SPEC = {
    "name": "bench-10k",
    "dataset": "moons",
    "parameters": {
        "layers": [1, 2, 3, 4, 5],
        "hidden_units": [8, 16, 32, 64, 128],
        "activation": ["relu", "tanh", "gelu", "silu"],
        "learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0],
        "dropout": [0.0, 0.1, 0.2, 0.3, 0.5],
        "epochs": 5,
    },
    "seeds": [0, 1],
}


def seed(db_url: str) -> int:
    settings = Settings(database_url=db_url, max_trials=10_000)
    db = Database(db_url)
    try:
        with db.session() as s:
            sweep = create_sweep(s, SweepSpec.model_validate(SPEC), settings)
            sid, n = sweep.id, sweep.n_trials
        assert n == 10_000, n
        wid = register(db, "bench-worker", "cpu")

        def outcome(t):  # type: ignore[no-untyped-def]
            if t.params["learning_rate"] == 3.0 and t.params["activation"] == "tanh":
                return ("diverged", 2)
            return ("succeeded", val_loss_of(t.params, t.seed) + 0.001 * t.params["dropout"])

        run_trials(db, wid, outcome, max_trials=1000, limit=9_400)
        run_trials(db, register(db, "bench-gpu", "cuda:0"), lambda t: None, max_trials=100, limit=100)
        # Fresh planner statistics, as autovacuum would have them a minute after a bulk load
        # (without them PostgreSQL plans the 10,000-row table as if it were empty).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        return sid
    finally:
        db.dispose()


def timed(http: httpx.Client, path: str, repeat: int) -> tuple[float, float, float, int]:
    """(first, median, p90) in ms and the body size; the first request is also the warm-up."""
    t0 = time.perf_counter()
    r = http.get(path)
    first = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        http.get(path).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return first, statistics.median(times), times[int(0.9 * (len(times) - 1))], len(r.content)


def browser_times(url: str, runs: int = 3) -> list[dict[str, float]]:
    """Per page load, from the browser's own clock (ms since navigation start): the HTML received,
    the first paint (the table is in the HTML, so it is on screen then), all four plots drawn."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1440, "height": 900})
        for _ in range(runs):
            page.goto(url, wait_until="load")
            for name in ("curves", "heatmap", "parallel", "history"):
                page.wait_for_selector(f"#chart-{name}[data-state=drawn] svg", timeout=60_000)
            out.append(
                page.evaluate(
                    """() => {
                  const nav = performance.getEntriesByType("navigation")[0];
                  const paint = performance.getEntriesByName("first-contentful-paint")[0];
                  return {html: nav.responseEnd, rows: document.querySelectorAll("#trials tbody tr").length,
                          paint: paint ? paint.startTime : NaN, plots: performance.now()};
                }"""
                )
            )
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(db_url)
        t0 = time.perf_counter()
        sid = seed(db_url)
        print(f"seeded a 10,000-trial sweep in {time.perf_counter() - t0:.1f} s ({db_url.split(':')[0]})")
        port = free_port()
        log = open(Path(tmp) / "server.log", "wb")  # closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--db", db_url, "--port", str(port), "--no-upgrade"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, timeout=120, proc=server)
            cases = [
                ("baseline: API JSON, first 50 trials", f"/api/v1/sweeps/{sid}/trials?limit=50"),
                ("sweep page (first table page)", f"/sweeps/{sid}"),
                ("sweep page sorted by a param", f"/sweeps/{sid}?sort=params.learning_rate&order=desc"),
                ("sweep page sorted by metric", f"/sweeps/{sid}?sort=metric"),
                ("sweep page, page 150 of 200", f"/sweeps/{sid}?sort=metric&page=150"),
                ("table fragment, status filter", f"/fragments/sweeps/{sid}/trials?status=diverged"),
                ("summary fragment (the 2 s poll)", f"/fragments/sweeps/{sid}/summary"),
                ("API: curves, top 10", f"/api/v1/sweeps/{sid}/curves?top=10"),
                ("API: heatmap", f"/api/v1/sweeps/{sid}/heatmap?x=learning_rate&y=hidden_units"),
                ("API: configs (parallel coords)", f"/api/v1/sweeps/{sid}/configs"),
                ("API: history (completion order)", f"/api/v1/sweeps/{sid}/history"),
            ]
            with httpx.Client(base_url=base, timeout=60) as http:
                rows = [(label, *timed(http, path, args.repeat)) for label, path in cases]
            baseline = rows[0][2]
            head = ("request", "first ms", "median ms", "p90 ms", "x baseline", "KiB")
            print("\n{:40} {:>9} {:>10} {:>8} {:>11} {:>7}".format(*head))
            for label, first, med, p90, size in rows:
                ratio = med / baseline
                print(f"{label:40} {first:9.1f} {med:10.1f} {p90:8.1f} {ratio:11.2f} {size / 1024:7.1f}")
            page_ms = rows[1][3]
            verdict = "under" if page_ms < 1000 else "OVER"
            print(
                f"\nsweep page with its first table page: median {rows[1][2]:.0f} ms, p90 {page_ms:.0f} ms "
                f"({verdict} 1 s on the server)"
            )
            if CHROMIUM.exists():
                loads = browser_times(f"{base}/sweeps/{sid}")
                for i, t in enumerate(loads):
                    kind = "cold cache" if i == 0 else "warm cache"
                    print(
                        f"browser load {i + 1} ({kind}): HTML in {t['html']:.0f} ms, first paint with the "
                        f"table ({t['rows']} rows) at {t['paint']:.0f} ms, plots drawn by {t['plots']:.0f} ms"
                    )
                under = sum(t["paint"] < 1000 for t in loads)
                worst = max(t["paint"] for t in loads)
                print(
                    f"browser: first table page on screen in under 1 s in {under} of {len(loads)} loads "
                    f"(worst {worst:.0f} ms)"
                )
            else:
                print(f"(no browser timing: {CHROMIUM} not found)")
        finally:
            stop_all([server])
            log.close()


if __name__ == "__main__":
    main()
