"""``gridsweep run``: one sweep to the end on this machine, an in-process API and local workers.

Its module imports little (click, the process helpers, the shared options): the workers are
started before the settings, the spec's models, the HTTP client or the API are imported, so the
workers' import of torch, the longest step before a small sweep's first claim, starts ~0.3 s
sooner (measured on 2 cores: a 1-trial sweep 2.30 -> 1.88 s, the median of 10 interleaved pairs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import click

from app.cli.exit_codes import EXIT_INTERRUPTED
from app.cli.local import (
    ThreadServer,
    free_port,
    ignore_signals,
    local_threads,
    spawn_worker,
    stop_all,
    stop_on_signals,
    worker_started,
)
from app.cli.options import (
    db_option,
    log_options,
    open_store,
    pack_size_flag,
    run_log_level,
    settings_for,
    verbosity_flags,
)
from app.cli.startup import heavy_imports
from gridsweep.logs import configure_logging
from gridsweep.vocab import device_name

if TYPE_CHECKING:
    from gridsweep.client import ApiClient

# How long one ask of `run` whether its sweep has ended waits for the end (a long poll: the
# answer comes the moment it ends); between asks, it checks that its workers still run.
END_WAIT_SECONDS = 1.0


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@db_option
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--device", default="auto", show_default=True)
@pack_size_flag
@click.option("--top", default=10, show_default=True, help="Configs in the leaderboard.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (the shape of submit --json)."
)
@verbosity_flags[0]
@verbosity_flags[1]
@click.pass_context
def run(
    ctx: click.Context,
    spec_file: str,
    db: str | None,
    workers: int,
    device: str,
    pack_size: int | None,
    top: int,
    as_json: bool,
    verbose: int,
    quiet: bool,
) -> None:
    """Run one sweep to the end locally (no separate server) and print the leaderboard.

    On a terminal a progress bar shows trials, epochs, the best so far, elapsed time and
    the ETA; off a terminal, one plain line per finished trial. The in-process API and the
    workers log warnings only: -v shows their INFO lines, -vv DEBUG; -q prints only the result.
    """
    level = run_log_level(verbose, quiet, debug=bool(ctx.parent and ctx.parent.params.get("verbose")))
    try:  # a misspelt --device fails here, before anything is stored (the worker checks it exists)
        device = device_name(device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    # An in-process API on loopback for this one run: its workers need no token. The workers are
    # child processes started first, before this process imports anything heavy: their import
    # of torch (most of a small run's fixed cost) overlaps this process's imports, the spec's
    # check, migrations and API start-up on the other cores.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    threads = str(local_threads(workers))
    options = [
        "--server",
        url,
        "--device",
        device,
        "--pack-size",
        str(pack_size or "auto"),
        "--threads",
        threads,
    ]
    env = {"GRIDSWEEP_LOG_LEVEL": level}
    # Each says on a pipe when it has started, and then waits quietly for the API to answer.
    started_workers = [spawn_worker(options, env) for _ in range(workers)]
    procs = [p for p, _ in started_workers]
    first, first_ready = started_workers[0]
    # `kill` stops the run as Ctrl-C does: the workers release their trials.
    stop_on_signals()
    sid: int | None = None
    try:
        with heavy_imports():  # what this process needs, beside the workers' import of torch
            from app.cli import output as out
            from app.cli import reports
            from app.cli.api import call, make_client, masked_url
            from app.cli.waiting import TERMINAL, Follower

            configure_logging(level=level, fmt=log_options(False)["fmt"])
            spec = out.load_spec(spec_file)  # a bad spec: a usage error; the workers are stopped
            settings = settings_for(db).model_copy(update={"auth": "off"})
            open_store(settings.database_url)
            started = time.monotonic()
            server = ThreadServer(settings, port=port)
        with server as srv:
            client = make_client(srv.url)
            try:
                # Only a CUDA device can be missing (the worker's select_device): then wait for the
                # worker's word before storing the sweep. Otherwise the sweep is queued while the
                # worker still imports, and it claims the moment it is up.
                if device.startswith("cuda") and (problem := worker_started(first, first_ready)):
                    raise click.UsageError(problem)
                created = call(client, "POST", "/api/v1/sweeps", json=spec.model_dump(mode="json"))
                sid = created["id"]
                if not quiet:
                    click.echo(f"sweep {sid}: {created['n_trials']} trials on {spec.dataset}", err=True)
                follow = contextlib.nullcontext() if quiet else Follower(make_client(srv.url), sid)
                with follow:
                    wait_for_end(client, sid, procs)
            except KeyboardInterrupt:
                pass  # the sweep stays as it is in the store (said below)
            finally:  # while the API answers: the workers release what they hold and sign off
                _stop(procs)
            if sid is None:
                click.echo("interrupted before the sweep was stored", err=True)
                sys.exit(EXIT_INTERRUPTED)
            sweep = call(client, "GET", f"/api/v1/sweeps/{sid}")
            board = call(client, "GET", f"/api/v1/sweeps/{sid}/leaderboard", params={"limit": top})
    except KeyboardInterrupt:  # before the API answered
        click.echo("interrupted before the sweep was stored", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        _stop(procs)
        for _, ready in started_workers:  # read by worker_started (CUDA), or not at all
            with contextlib.suppress(OSError):
                os.close(ready)
    if sweep["status"] not in TERMINAL:  # Ctrl-C: the worker stopped, the sweep waits in the store
        message = (
            f"interrupted: sweep {sid} stays {sweep['status']} in {masked_url(settings.database_url)}; "
            f"its trials wait for a worker (gridsweep up --db ...), or cancel it with gridsweep cancel {sid}"
        )
        out.exit_interrupted(sid, message, as_json)
    verdict = reports.evaluate(sweep, None, False, None)
    if as_json:
        elapsed = round(time.monotonic() - started, 3)
        out.echo_json(
            reports.result_json(
                sweep, verdict, None, board, idempotency_key=None, server=None, elapsed_seconds=elapsed
            )
        )
    else:
        click.echo(out.progress_line(sweep))
        click.echo(out.leaderboard_table(sweep, board))
        click.echo(out.best_text(sweep.get("best")))
    if verdict.code:
        sys.exit(verdict.code)


def wait_for_end(client: ApiClient, sweep_id: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until the sweep has ended, or every local worker has exited (said on stderr)."""
    from app.cli.api import call
    from app.cli.waiting import TERMINAL

    path, wait = f"/api/v1/sweeps/{sweep_id}", {"wait_seconds": END_WAIT_SECONDS}
    while call(client, "GET", path, params=wait)["status"] not in TERMINAL:
        if all(p.poll() is not None for p in procs):
            codes = ", ".join(str(p.returncode) for p in procs)
            click.echo(f"the local worker(s) exited (exit code {codes}) before the sweep ended", err=True)
            return


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers (once: a second Ctrl-C while they release their trials is ignored)."""
    ignore_signals()
    stop_all(procs)


COMMANDS = (run,)
