"""Commands about one sweep: ``run`` (a whole sweep locally), ``status``, ``best``, ``extend``."""

from __future__ import annotations

import sys
import time

import click

from app.cli import output as out
from app.cli import reports
from app.cli.api import EXIT_CODES_HELP, EXIT_INTERRUPTED, call, make_client, masked_url
from app.cli.local import ThreadServer, free_port, gridsweep_cmd, local_threads, spawn, stop_all
from app.cli.options import (
    db_option,
    log_options,
    open_store,
    pack_size_flag,
    run_log_level,
    server_option,
    settings_for,
    verbosity_flags,
)
from app.cli.waiting import TERMINAL, Follower
from gridsweep.logs import configure_logging


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
    from worker.loop import Worker
    from worker.train import select_device

    level = run_log_level(verbose, quiet, debug=bool(ctx.parent and ctx.parent.params.get("verbose")))
    configure_logging(level=level, fmt=log_options(False)["fmt"])
    spec = out.load_spec(spec_file)
    try:  # a bad --device fails here, not after the sweep is stored (left queued, with a traceback)
        select_device(device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    # An in-process API on loopback for this one run: its own workers need no token.
    settings = settings_for(db).model_copy(update={"auth": "off"})
    open_store(settings.database_url)
    started = time.monotonic()
    with ThreadServer(settings, port=free_port()) as srv:
        client = make_client(srv.url)
        created = call(client, "POST", "/api/v1/sweeps", json=spec.model_dump(mode="json"))
        sid = created["id"]
        if not quiet:
            click.echo(f"sweep {sid}: {created['n_trials']} trials on {spec.dataset}", err=True)

        def sweep_done() -> bool:
            return call(client, "GET", f"/api/v1/sweeps/{sid}")["status"] in TERMINAL

        threads = local_threads(workers)
        helpers = [
            spawn(
                gridsweep_cmd(
                    "worker",
                    "--server",
                    srv.url,
                    "--device",
                    device,
                    "--pack-size",
                    str(pack_size or "auto"),
                    "--threads",
                    str(threads),
                ),
                env={"GRIDSWEEP_LOG_LEVEL": level},
            )
            for _ in range(workers - 1)
        ]
        try:
            w = Worker(
                srv.url,
                device=device,
                pack_size=pack_size,
                # A fused CPU pack trains in `threads` parts; one trial at a time (final trials,
                # --pack-size 1) gets one torch thread: OpenMP threads beside the in-process API
                # spin on a small machine (see local_threads).
                threads=1,
                pack_threads=threads,
                exit_when=sweep_done,
                cache_dir=settings.data_cache_dir,
                allow_tf32=settings.allow_tf32,
            )
            w.install_signal_handlers()
            if quiet:
                w.run()
            else:
                with Follower(make_client(srv.url), sid):
                    w.run()
        finally:
            stop_all(helpers)
        sweep = call(client, "GET", f"/api/v1/sweeps/{sid}")
        board = call(client, "GET", f"/api/v1/sweeps/{sid}/leaderboard", params={"limit": top})
    if sweep["status"] not in TERMINAL:  # Ctrl-C: the worker stopped, the sweep waits in the store
        message = (
            f"interrupted: sweep {sid} stays {sweep['status']} in {masked_url(settings.database_url)}; "
            f"its trials wait for a worker (gridsweep up --db ...), or cancel it with gridsweep cancel {sid}"
        )
        if as_json:
            out.echo_json({"sweep_id": sid, "error": message, "exit_code": EXIT_INTERRUPTED, "errors": []})
        click.echo(message, err=True)
        sys.exit(EXIT_INTERRUPTED)
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


@click.command()
@click.argument("sweep_id", type=int)
@server_option
@click.option("--json", "as_json", is_flag=True)
def status(sweep_id: int, server: str, as_json: bool) -> None:
    """Show a sweep's status and progress: phase, trials and epochs done, elapsed time, ETA."""
    sweep = call(make_client(server), "GET", f"/api/v1/sweeps/{sweep_id}")
    if as_json:
        out.echo_json(sweep)
    else:
        click.echo(out.progress_line(sweep))
        click.echo("  " + ", ".join(f"{k} {v}" for k, v in sweep["counts"].items() if v))
        if sweep.get("error"):  # a failed sweep's reason, or what a succeeded one gave up on
            click.echo(f"  note: {sweep['error']}")


@click.command()
@click.argument("sweep_id", type=int)
@server_option
@click.option("--json", "as_json", is_flag=True)
def best(sweep_id: int, server: str, as_json: bool) -> None:
    """Show a sweep's best config."""
    result = call(make_client(server), "GET", f"/api/v1/sweeps/{sweep_id}/best")
    if as_json:
        out.echo_json(result)
    else:
        click.echo(out.best_text(result))


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("sweep_id", type=int)
@click.argument("spec_file", type=click.Path(dir_okay=False))
@server_option
@click.option("--json", "as_json", is_flag=True)
def extend(sweep_id: int, spec_file: str, server: str, as_json: bool) -> None:
    """Add the configs of SPEC_FILE that sweep SWEEP_ID has not run (finished results are reused).

    Dataset, split, metric, method and pruner must stay as they are; a random / tpe / qmc
    sweep takes a larger max_trials. A finished sweep runs again and is evaluated on the
    test split again only if its best config changes.
    """
    spec = out.load_spec(spec_file)
    result = call(
        make_client(server), "POST", f"/api/v1/sweeps/{sweep_id}/extend", json=spec.model_dump(mode="json")
    )
    if as_json:
        out.echo_json(result)
        return
    click.echo(
        f"sweep {result['id']} {result['status']}: {result['added_trials']} new trials "
        f"({result['added_configs']} new configs, {result['reused_configs']} reused), "
        f"{result['n_trials']} in all"
    )


COMMANDS = (run, status, best, extend)
