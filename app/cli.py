"""The ``gridsweep`` command line."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import time
from typing import Any

import click
import uvicorn

from app import cli_ci
from app import cli_output as out
from app.ci_client import make_client
from app.cli_options import db_option, server_option
from app.config import Settings, get_settings
from app.local import (
    ThreadServer,
    free_port,
    gridsweep_cmd,
    local_threads,
    spawn,
    stop_all,
    wait_healthy,
)
from app.logs import configure_logging
from worker.client import ApiClient, ApiError
from worker.packing import parse_pack_size

TERMINAL = ("succeeded", "failed", "canceled")


def pack_size_option(value: str | int | None) -> int | None:
    """``--pack-size``: an integer, or ``auto`` (None: the worker picks by device)."""
    try:
        return parse_pack_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


class Unreachable(click.ClickException):
    exit_code = 3


def settings_for(db: str | None) -> Settings:
    s = get_settings()
    return s.model_copy(update={"database_url": db}) if db else s


def call(client: ApiClient, method: str, path: str, **kw: Any) -> Any:
    """One API call with CLI-shaped errors: exit 2 on a bad spec, 3 when unreachable."""
    try:
        return client.request(method, path, **kw)
    except ApiError as exc:
        if exc.status_code == 422:
            raise out.SpecFileError(
                "the server rejected the spec:\n" + out.format_api_errors(exc.detail)
            ) from exc
        if exc.status_code == 503:
            raise Unreachable(str(exc.detail)) from exc
        raise click.ClickException(f"{method} {path}: {exc}") from exc


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """gridsweep: hyperparameter grid search for PyTorch MLPs."""
    configure_logging(**cli_ci.log_options(verbose))


def _register_commands() -> None:
    from app.cli_tokens import token

    main.add_command(token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str, insecure: bool) -> None:
    """Refuse to serve without auth beyond loopback (unless --insecure); say how it runs."""
    if settings.auth_enabled:
        click.echo(f"gridsweep: auth is on (API tokens required) on {host}", err=True)
        return
    if not is_loopback(host) and not insecure:
        raise click.UsageError(
            f"refusing to serve on {host} without auth: set GRIDSWEEP_AUTH=on and create tokens "
            "(gridsweep token create), or pass --insecure to accept anyone who can reach it"
        )
    where = "loopback only" if is_loopback(host) else "INSECURE, anyone who can reach it"
    click.echo(f"gridsweep: auth is OFF ({where}); set GRIDSWEEP_AUTH=on to require tokens", err=True)


auth_option = click.option(
    "--auth",
    type=click.Choice(["on", "off"]),
    default=None,
    help="Require API tokens (default: GRIDSWEEP_AUTH).",
)
insecure_option = click.option(
    "--insecure", is_flag=True, help="Allow a non-loopback address without auth (anyone may use the API)."
)


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@db_option
def db_upgrade(db: str | None) -> None:
    """Create or upgrade the store's schema to the latest migration."""
    from app.migrate import upgrade

    url = settings_for(db).database_url
    upgrade(url)
    click.echo(f"database at head: {url.split('@')[-1]}")


@main.command()
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
    if not no_upgrade:
        from app.migrate import upgrade

        upgrade(settings.database_url)
    from app.api import create_app

    # Our logging (JSON off a terminal, request ids) instead of uvicorn's; the middleware logs requests.
    uvicorn.run(
        create_app(settings), host=host, port=port, log_config=None, access_log=False, server_header=False
    )


@main.command()
@server_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--name", default=None, help="Worker name (default: host-pid).")
@click.option(
    "--pack-size",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: pack_size_option(value),
    help="Trials claimed and trained at once (fused); 1 trains one by one; auto: 64 on CPU, 512 on CUDA.",
)
@click.option(
    "--threads",
    default=None,
    type=int,
    help="CPU threads: parts of a fused CPU pack (each part, and a trial alone, on one torch thread).",
)
@click.option("--exit-when-idle", is_flag=True, help="Exit when no trial is queued.")
def worker(
    server: str,
    device: str,
    name: str | None,
    pack_size: int | None,
    threads: int | None,
    exit_when_idle: bool,
) -> None:
    """Claim trials from the API and train them."""
    from worker.loop import Worker

    try:
        w = Worker(
            server,
            device=device,
            name=name,
            token=os.environ.get("GRIDSWEEP_TOKEN"),
            pack_size=pack_size,
            threads=threads,
            exit_when=(lambda: True) if exit_when_idle else None,
            cache_dir=get_settings().data_cache_dir,
            allow_tf32=get_settings().allow_tf32,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    w.install_signal_handlers()
    try:
        n = w.run()
    except ApiError as exc:
        raise Unreachable(f"cannot reach the API at {server}: {exc}") from exc
    click.echo(f"worker stopped after {n} trials", err=True)


@main.command()
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
    # this process alone and orphaned the server and workers). An ignored signal stays ignored (nohup).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
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
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_all(procs[1:])
        stop_all(procs[:1])
    sys.exit(code)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def call_create(client: ApiClient, body: dict[str, Any], server: str) -> dict[str, Any]:
    try:
        return call(client, "POST", "/api/v1/sweeps", json=body)
    except click.ClickException:
        raise
    except Exception as exc:  # pragma: no cover - defensive
        raise Unreachable(f"cannot reach {server}: {exc}") from exc


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@db_option
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--pack-size",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: pack_size_option(value),
    help="Trials trained at once (fused); 1 trains one by one.",
)
@click.option("--top", default=10, show_default=True, help="Configs in the leaderboard.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run(
    spec_file: str, db: str | None, workers: int, device: str, pack_size: int | None, top: int, as_json: bool
) -> None:
    """Run one sweep to the end locally (no separate server) and print the leaderboard."""
    from app.migrate import upgrade
    from worker.loop import Worker
    from worker.train import select_device

    spec = out.load_spec(spec_file)
    try:  # a bad --device fails here, not after the sweep is stored (left queued, with a traceback)
        select_device(device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    # An in-process API on loopback for this one run: its own workers need no token.
    settings = settings_for(db).model_copy(update={"auth": "off"})
    upgrade(settings.database_url)
    with ThreadServer(settings, port=free_port()) as srv:
        client = make_client(srv.url)
        created = call_create(client, spec.model_dump(mode="json"), srv.url)
        sid = created["id"]
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
                )
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
            w.run()
        finally:
            stop_all(helpers)
        sweep = call(client, "GET", f"/api/v1/sweeps/{sid}")
        board = call(client, "GET", f"/api/v1/sweeps/{sid}/leaderboard", params={"limit": top})
    if as_json:
        out.echo_json({"sweep": sweep, "leaderboard": board, "best": sweep.get("best")})
    else:
        click.echo(out.progress_line(sweep))
        click.echo(out.leaderboard_table(sweep, board))
        click.echo(out.best_text(sweep.get("best")))
    if sweep["status"] != "succeeded":
        sys.exit(1)


@main.command()
@click.argument("sweep_id", type=int)
@server_option
@click.option("--json", "as_json", is_flag=True)
def status(sweep_id: int, server: str, as_json: bool) -> None:
    """Show a sweep's status and progress."""
    sweep = call(make_client(server), "GET", f"/api/v1/sweeps/{sweep_id}")
    if as_json:
        out.echo_json(sweep)
    else:
        click.echo(out.progress_line(sweep))
        click.echo("  " + ", ".join(f"{k} {v}" for k, v in sweep["counts"].items() if v))


@main.command()
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


# Datasets, models, predict, rerun (app/cli_data.py).
from app.cli_data import register as _register_data  # noqa: E402

_register_data(main)

for _command in cli_ci.COMMANDS:  # submit, schema, config: CI and operations (app/cli_ci.py)
    main.add_command(_command)

_register_commands()  # gridsweep token ... (app/cli_tokens.py)

if __name__ == "__main__":
    main()
