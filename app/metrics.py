"""Prometheus metrics: HTTP traffic counted in-process, the store's state read at scrape time.

Label cardinality is bounded by construction: HTTP series are labelled by method,
route *template* (``/api/v1/sweeps/{sweep_id}``, never the raw path) and status code;
store series by trial role and status. No sweep id, trial id or metric value is a label.
Each app has its own registry, so several apps in one process (tests, ``gridsweep run``)
never collide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.config import Settings
from app.db import Database
from app.services import ops

log = logging.getLogger("gridsweep.metrics")

# No `*_created` series: they double the series count and no dashboard here reads them.
disable_created_metrics()

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
# Trials run from well under a second (tiny MLPs, fused packs) to hours.
TRIAL_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


class StoreCollector(Collector):
    """Gauges and the trial-duration histogram, computed from the database on each scrape.

    Reading the store (not counting in-process) makes every API replica report the same,
    true numbers, whichever replica the trials went through.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gridsweep_store_up", "1 when the last scrape could read the database.")
        try:
            families = self._read()
        except Exception as exc:  # the database is down: say so, keep the HTTP metrics scrapable
            log.warning("metrics: cannot read the store (%s)", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        with self.db.session(readonly=True) as s:
            trials = ops.trial_counts_by_role_status(s)
            sweeps = ops.sweep_counts_by_status(s)
            expired = ops.expired_leases(s)
            retried = ops.retried_attempts(s)
            online = ops.workers_online(s, self.settings.lease_seconds)
            hist = ops.trial_duration_histogram(s, TRIAL_DURATION_BUCKETS)
        t = GaugeMetricFamily("gridsweep_trials", "Trials by role and status.", labels=["role", "status"])
        for (role, status), n in sorted(trials.items()):
            t.add_metric([role, status], n)
        sw = GaugeMetricFamily("gridsweep_sweeps", "Sweeps by status.", labels=["status"])
        for status, n in sorted(sweeps.items()):
            sw.add_metric([status], n)
        queued = sum(n for (_, status), n in trials.items() if status == "queued")
        h = HistogramMetricFamily(
            "gridsweep_trial_duration_seconds", "Training time of finished trials (as the worker reported)."
        )
        h.add_metric(
            [],
            buckets=[(_le(b), c) for b, c in hist.buckets] + [("+Inf", hist.count)],
            sum_value=hist.total_seconds,
        )
        return [
            t,
            sw,
            GaugeMetricFamily("gridsweep_queue_depth", "Trials waiting for a worker.", value=queued),
            GaugeMetricFamily(
                "gridsweep_workers_online",
                "Workers seen (claim or heartbeat) within one lease.",
                value=online,
            ),
            GaugeMetricFamily(
                "gridsweep_leases_expired",
                "Running trials whose lease expired, not yet reclaimed.",
                value=expired,
            ),
            GaugeMetricFamily(
                "gridsweep_trial_retries",
                "Attempts beyond the first over all trials (claimed again after a lost lease).",
                value=retried,
            ),
            h,
        ]


def _le(bound: float) -> str:
    return str(float(bound))


class Metrics:
    """One app's registry: request counters and latencies, reaper counts, the store collector."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "gridsweep_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "gridsweep_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.lease_reclaims = Counter(
            "gridsweep_lease_reclaims",
            "Trials with an expired lease that this process's reaper requeued or failed.",
            registry=self.registry,
        )
        self.registry.register(StoreCollector(db, settings))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
