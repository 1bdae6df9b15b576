"""Commands that run gridsweep's processes: ``db upgrade``, ``serve``, ``worker``, ``up``."""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from app.cli.api import Unreachable, masked_url
from app.cli.local import (
    gridsweep_cmd,
    ignore_signals,
    local_threads,
    spawn,
    stop_all,
    stop_on_signals,
    wait_healthy,
)
from app.cli.options import (
    auth_option,
    check_exposure,
    db_option,
    insecure_option,
    open_store,
    pack_size_flag,
    server_option,
    settings_for,
)
from app.cli.startup import heavy_imports
from app.config import get_settings
from gridsweep.client import ApiError


@click.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@db_option
def db_upgrade(db: str | None) -> None:
    """Create or upgrade the store's schema to the latest migration."""
    url = settings_for(db).database_url
    open_store(url)
    click.echo(f"database at head: {masked_url(url)}")


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-upgrade", is_flag=True, help="Do not run migrations at start.")
@auth_option
@insecure_option
def serve(db: str | None, host: str, port: int, no_upgrade: bool, auth: str | None, insecure: bool) -> None:
    """Run the API server."""
    settings = settings_for(db)
    if auth:
        settings = settings.model_copy(update={"auth": auth})
    check_exposure(settings, host, insecure)
    with heavy_imports():  # Alembic, FastAPI, SQLAlchemy: built once, kept for the server's life
        if not no_upgrade:
            open_store(settings.database_url)
        from app.api import create_app
        from app.api.slow_clients import serve as serve_api

        # Our logging (JSON off a terminal, request ids) instead of uvicorn's; the middleware logs
        # requests. Slow clients are cut off (header and body timeouts, a connection cap):
        # app/api/slow_clients.py.
        app = create_app(settings)
    serve_api(app, settings, host=host, port=port, log_config=None, access_log=False, server_header=False)


@click.command()
@server_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--name", default=None, help="Worker name (default: host-pid).")
@pack_size_flag
@click.option(
    "--threads",
    default=None,
    type=int,
    help="CPU threads: parts of a fused CPU pack (each part, and a trial alone, on one torch thread).",
)
@click.option(
    "--exit-when-idle",
    type=click.FloatRange(min=0),
    is_flag=False,
    flag_value=0.0,
    default=None,
    metavar="SECONDS",
    help="Exit (code 0) once no trial has been claimable for SECONDS (alone: at the first empty claim).",
)
@click.option(
    "--retrain-final",
    is_flag=True,
    help="Train a final trial again even when this worker trained its search trial "
    "(default: reuse that training, the same numbers bit for bit, and score it on the test split).",
)
@click.option("--ready-fd", type=int, default=None, hidden=True)  # `gridsweep run`: app/cli/local.py
def worker(
    server: str,
    device: str,
    name: str | None,
    pack_size: int | None,
    threads: int | None,
    exit_when_idle: float | None,
    retrain_final: bool,
    ready_fd: int | None,
) -> None:
    """Claim trials from the API and train them."""
    ready = os.fdopen(ready_fd, "w") if ready_fd is not None else None
    with heavy_imports():  # torch: the longest step of a local sweep before its first claim
        from worker.loop import Worker
        from worker.recall import RECALL_BYTES

    try:
        w = Worker(
            server,
            device=device,
            name=name,
            token=os.environ.get("GRIDSWEEP_TOKEN"),
            pack_size=pack_size,
            threads=threads,
            idle_exit_seconds=exit_when_idle,
            cache_dir=get_settings().data_cache_dir,
            allow_tf32=get_settings().allow_tf32,
            recall_bytes=0 if retrain_final else RECALL_BYTES,
        )
    except ValueError as exc:
        if ready is not None:  # the parent (`gridsweep run`) says it, as its own usage error
            ready.write(f"error: {exc}\n")
            ready.close()
            sys.exit(2)
        raise click.UsageError(str(exc)) from exc
    w.install_signal_handlers()
    if ready is not None:
        ready.write("ready\n")
        ready.close()
        try:  # the parent's API starts beside this worker: register once it answers
            if not wait_healthy(server, timeout=120, interval=0.02, stop=w.stopping):
                return  # stopped before the API answered (the parent is stopping, or gone)
        except TimeoutError as exc:
            raise Unreachable(f"cannot reach the API at {server}: {exc}") from exc
    try:
        n = w.run()
    except ApiError as exc:
        raise Unreachable(f"cannot reach the API at {server}: {exc}") from exc
    logging.getLogger("gridsweep.worker").info("worker stopped after %d trials", n)


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64))
@click.option("--device", default="auto", show_default=True)
@auth_option
@insecure_option
def up(
    db: str | None, host: str, port: int, workers: int, device: str, auth: str | None, insecure: bool
) -> None:
    """API + N local workers in one command (Ctrl-C stops them all).

    On loopback auth may stay off (the default, said at start); with auth on, the workers
    use GRIDSWEEP_TOKEN (a worker or admin token).
    """
    settings = settings_for(db)
    if auth:
        settings = settings.model_copy(update={"auth": auth})
    check_exposure(settings, host, insecure)
    if settings.auth_enabled and workers and not os.environ.get("GRIDSWEEP_TOKEN"):
        raise click.UsageError("auth is on: set GRIDSWEEP_TOKEN to a worker token for the local workers")
    url = f"http://{host}:{port}"
    # `kill` and a closed terminal stop everything the way Ctrl-C does (by default they ended
    # this process alone and orphaned the server and workers).
    stop_on_signals()
    serve_args = ["serve", "--host", host, "--port", str(port), "--auth", settings.auth]
    server = spawn(
        gridsweep_cmd(*serve_args, *(["--insecure"] if insecure else [])),
        env={"GRIDSWEEP_DATABASE_URL": settings.database_url},
    )
    procs = [server]
    try:
        wait_healthy(url, timeout=60, proc=server)
        threads = str(local_threads(workers))
        for _ in range(workers):
            procs.append(
                spawn(gridsweep_cmd("worker", "--server", url, "--device", device, "--threads", threads))
            )
        click.echo(
            f"gridsweep up: API at {url}, {workers} worker(s), store {settings.database_url}", err=True
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        died = next(p for p in procs if p.poll() is not None)
        click.echo(f"gridsweep up: the {died.args[3]} process exited ({died.returncode}); stopping", err=True)
        code = 1
    except KeyboardInterrupt:
        click.echo("stopping...", err=True)
        code = 0
    finally:
        # The children have process groups of their own (a terminal's Ctrl-C reaches only this
        # process): workers stop first and release their trials while the server still answers.
        ignore_signals()
        stop_all(procs[1:])
        stop_all(procs[:1])
    sys.exit(code)


COMMANDS = (db, serve, worker, up)
