"""Commands about one sweep on a server: ``status``, ``best``, ``extend`` (``run``: app/cli/run.py)."""

from __future__ import annotations

import click

from app.cli import output as out
from app.cli.api import call, make_client
from app.cli.exit_codes import EXIT_CODES_HELP
from app.cli.options import (
    server_option,
)


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


COMMANDS = (status, best, extend)
