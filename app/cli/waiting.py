"""What ``gridsweep submit`` needs around the API: exit-code errors, the CI idempotency
key, progress while waiting, and the local dry run.

Off a terminal (or with ``CI=true``) progress is one plain line per finished trial.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from app.cli import output as out
from app.cli import reports
from app.cli.api import BadInput, call
from app.cli.live import LiveBar
from app.cli.reports import Gate
from app.config import Settings
from app.spec import DataFacts, SpecError, SweepSpec, count_trials, expand, format_loc, validate_spec
from gridsweep.client import SWEEP_ENDED, ApiClient, sweep_polls

TERMINAL = SWEEP_ENDED
# Trials worth a progress line (canceled ones are not).
FINISHED = ("succeeded", "failed", "diverged", "pruned")
IDEMPOTENCY_HEADER = "Idempotency-Key"
POLL_RETRY_SECONDS = 30.0  # ride out a short API restart while waiting


def plain_output() -> bool:
    """One plain line per event (no bar, no ANSI): off a terminal, or in CI."""
    return os.environ.get("CI", "").lower() in ("true", "1") or not sys.stderr.isatty()


def spec_digest(spec: SweepSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def ci_idempotency_key(env: dict[str, str], spec: SweepSpec) -> str | None:
    """A key that a retried CI step reproduces, so the retry gets the first sweep back.

    GitHub Actions: run id + run attempt (a re-run of the workflow starts a new sweep),
    repository, job and the spec. GitLab CI: pipeline + job name + the spec. Else none.
    """
    if env.get("GITHUB_RUN_ID"):
        head = f"gh-{env['GITHUB_RUN_ID']}-{env.get('GITHUB_RUN_ATTEMPT', '1')}"
        scope = [env.get("GITHUB_REPOSITORY", ""), env.get("GITHUB_JOB", "")]
    elif env.get("CI_PIPELINE_ID"):
        head = f"gl-{env['CI_PIPELINE_ID']}"
        scope = [env.get("CI_PROJECT_ID", ""), env.get("CI_JOB_NAME", "")]
    else:
        return None
    tail = hashlib.sha256("|".join([*scope, spec_digest(spec)]).encode()).hexdigest()[:24]
    return f"{head}-{tail}"


class Progress:
    """A Rich bar on a terminal (``app.cli.live``); otherwise one plain line per finished trial."""

    def __init__(self, client: ApiClient, sweep_id: int, plain: bool) -> None:
        self.client, self.sweep_id, self.plain = client, sweep_id, plain
        self.seen: set[int] = set()
        self.testing_said = False
        self.bar: LiveBar | None = None

    def close(self) -> None:
        """Leave the bar (if any) on screen in its last state."""
        if self.bar is not None:
            self.bar.close()

    def update(self, sweep: dict[str, Any]) -> None:
        if not self.plain:
            if self.bar is None:
                self.bar = LiveBar(self.sweep_id)
            self.bar.update(sweep)
            if sweep["status"] in TERMINAL:
                self.close()
            return
        done = sum(sweep["counts"].get(s, 0) for s in FINISHED)
        if done > len(self.seen):
            shown = len(self.seen)
            for k, t in enumerate(self._new_trials(done - shown), start=shown + 1):
                click.echo(self.line(sweep, t, k), err=True)
        if sweep.get("phase") == "evaluating" and not self.testing_said:
            click.echo(
                f"sweep {sweep['id']}: grid done, evaluating the best config on the test split", err=True
            )
            self.testing_said = True

    def _new_trials(self, wanted: int) -> list[dict[str, Any]]:
        """Finished trials not shown yet, oldest first (newest pages first, until enough)."""
        new: list[dict[str, Any]] = []
        limit, offset = 200, 0
        while len(new) < wanted:
            page = call(
                self.client,
                "GET",
                f"/api/v1/sweeps/{self.sweep_id}/trials",
                params={
                    "status": list(FINISHED),
                    "sort": "finished_at",
                    "order": "desc",
                    "limit": limit,
                    "offset": offset,
                },
                retry_for=POLL_RETRY_SECONDS,
            )
            new += [t for t in page["items"] if t["id"] not in self.seen]
            offset += len(page["items"])
            if len(page["items"]) < limit or offset >= page["total"]:
                break
        self.seen.update(t["id"] for t in new)
        return sorted(new, key=lambda t: (t["finished_at"] or "", t["id"]))

    def line(self, sweep: dict[str, Any], t: dict[str, Any], k: int) -> str:
        metric = sweep["metric"]["name"]
        value = t.get(metric)
        shown = f"{metric}={value:.4f}" if isinstance(value, float) else f"{metric}=-"
        if t.get("best_epoch"):
            shown += f" at epoch {t['best_epoch']}" + (" (stopped early)" if t.get("stopped_epoch") else "")
        params = reports.params_label(t["params"], out.varying_axes(sweep["spec"]))
        dur = f" ({t['duration_seconds']:.2f}s)" if t.get("duration_seconds") is not None else ""
        err = (
            f": {(t.get('error') or '').splitlines()[0][:200]}"
            if t["status"] != "succeeded" and t.get("error")
            else ""
        )
        return f"[{k}/{sweep['n_trials']}] trial {t['id']} {t['status']} {shown} {params}{dur}{err}"


def wait_for(
    client: ApiClient, sweep_id: int, poll: float, timeout: float | None, progress: Progress
) -> tuple[dict[str, Any], bool]:
    """Poll until the sweep ends or ``timeout`` passes; return the sweep and whether time ran out.
    Each poll is a long poll of up to ``poll`` seconds (``gridsweep.client.sweep_polls``)."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def read(wait: float) -> dict[str, Any]:
        left = None if deadline is None else deadline - time.monotonic()
        retry = POLL_RETRY_SECONDS if left is None else max(1.0, min(POLL_RETRY_SECONDS, left))
        return call(
            client, "GET", f"/api/v1/sweeps/{sweep_id}", params={"wait_seconds": wait}, retry_for=retry
        )

    sweep: dict[str, Any] = {}
    for sweep in sweep_polls(read, poll, deadline):
        progress.update(sweep)
    if sweep["status"] in TERMINAL:
        return sweep, False
    progress.close()
    return sweep, True


class Follower:
    """Progress of a sweep that this process trains itself (``gridsweep run``), polled on a thread
    of its own with its own client while the worker has the main thread."""

    def __init__(self, client: ApiClient, sweep_id: int, poll: float = 1.0) -> None:
        self.progress = Progress(client, sweep_id, plain_output())
        self.client, self.sweep_id, self.poll = client, sweep_id, poll
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        if not self.ended and not self.thread.is_alive():
            self._poll()  # the sweep ended between two polls: its last trials and the full bar
        self.progress.close()

    ended = False  # the last poll saw the sweep end

    def _poll(self) -> bool:
        """One look at the sweep; False when the in-process API is going away."""
        try:
            sweep = call(self.client, "GET", f"/api/v1/sweeps/{self.sweep_id}")
        except click.ClickException:
            return False
        self.progress.update(sweep)
        self.ended = sweep["status"] in TERMINAL
        return True

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self._poll() or self.ended:
                return
            self.stop.wait(self.poll)


def all_trials(client: ApiClient, sweep_id: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = call(
            client, "GET", f"/api/v1/sweeps/{sweep_id}/trials", params={"limit": 500, "offset": len(items)}
        )
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            return items


def dry_run(spec: SweepSpec, gate: Gate | None, show: int, as_json: bool) -> None:
    """What the spec expands to, checked locally (builtin datasets, local limits); nothing sent."""
    from gridsweep.datasets import BUILTIN_DATASETS

    settings = Settings()
    info = BUILTIN_DATASETS.get(spec.dataset)
    n = count_trials(spec)
    configs: list[dict[str, Any]] = []
    note = None
    if spec.method != "grid":
        note = f"method {spec.method}: Optuna suggests the {spec.max_trials} configs as results come in"
    try:
        if info is not None:
            facts = DataFacts(task=info.task, n_classes=info.n_classes, n_features=info.n_features)
            limits = (settings.max_trials, settings.max_epochs, settings.max_parameters)
            n = validate_spec(spec, facts, *limits)
            from app.services.datasets import check_builtin_split

            check_builtin_split(spec.dataset, spec.split)
            first = (r for r in expand(spec, facts) if r.seed == spec.seeds[0])
            configs = [
                {"config_index": r.config_index, "params": r.params} for r in itertools.islice(first, show)
            ]
        else:
            note = f"dataset {spec.dataset!r} is not built in: the server checks it and the losses" + (
                " (and counts shared configs of sub-grids once only after resolving loss: auto)"
                if len(spec.grids) > 1
                else ""
            )
            if n > settings.max_trials:
                raise SpecError(
                    [{"loc": ("parameters",), "msg": f"{n} trials, over the limit of {settings.max_trials}"}]
                )
    except SpecError as exc:
        lines = [f"  {format_loc(e['loc'])}: {e['msg']}" for e in exc.errors]
        raise BadInput("the spec is not valid:\n" + "\n".join(lines)) from exc
    n_seeds = len(spec.seeds)
    if as_json:
        gate_json = None if gate is None else gate.__dict__
        out.echo_json(
            {
                "name": spec.name,
                "dataset": spec.dataset,
                "n_trials": n,
                "n_configs": n // n_seeds,
                "n_seeds": n_seeds,
                "n_grids": len(spec.grids),
                "method": spec.method,
                "configs": configs,
                "gate": gate_json,
                "note": note,
            }
        )
        return
    click.echo(
        f"{spec.name}: {n} trials = {n // n_seeds} configs x {n_seeds} seed(s) on {spec.dataset}; "
        f"metric {spec.metric.name or 'the task default'} ({spec.metric.goal or 'its goal'})"
        + (f"; {len(spec.grids)} sub-grids (their union, each config once)" if len(spec.grids) > 1 else "")
        + (f"; pruner {spec.pruner.type}" if spec.pruner else "")
    )
    if gate is not None:
        bounds = [f"> {gate.fail_above:g}"] if gate.fail_above is not None else []
        bounds += [f"< {gate.fail_below:g}"] if gate.fail_below is not None else []
        click.echo(f"gate: fails if the best {gate.metric} is {' or '.join(bounds)} ({gate.source})")
    if note:
        click.echo(f"note: {note}")
    if configs:
        axes = out.varying_axes(spec.model_dump(mode="json"))
        click.echo(f"first {len(configs)} of {n // n_seeds} configs:")
        for c in configs:
            click.echo(f"  config {c['config_index']}: {reports.params_label(c['params'], axes)}")
    click.echo("nothing submitted (--dry-run)", err=True)


def write_text(path: str, text: str, append: bool = False) -> None:
    try:
        with Path(path).open("a" if append else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from exc
