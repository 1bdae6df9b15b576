"""Everyday commands over the API: ``sweeps`` (the list), ``cancel``, ``delete``, ``export``,
``trials`` (a sweep's table) and ``trial`` (one trial, reruns included)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.cli import output as out
from app.cli.api import BadInput, CliError, Unreachable, call, make_client
from app.cli.options import server_option
from app.cli.reports import params_label
from gridsweep.client import ApiClient, ApiError
from gridsweep.vocab import metric_units

json_flag = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
ROLES = click.Choice(["search", "final", "refit", "rerun"])


def _metric(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-"


def _best(metric: str, value: float) -> str:
    return f"{metric} {value:.4f} ({metric_units(metric)})"


def _client(server: str) -> ApiClient:
    return make_client(server)


@click.command("sweeps")
@server_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500), help="Newest first.")
@json_flag
def sweeps_(server: str, limit: int, as_json: bool) -> None:
    """List sweeps, newest first: status, progress, best so far, created, duration."""
    page = call(_client(server), "GET", "/api/v1/sweeps", params={"limit": limit})
    if as_json:
        out.echo_json(page)
        return
    head = ["id", "name", "dataset", "status", "progress", "best", "created (UTC)", "duration"]
    rows = []
    for s in page["items"]:
        best = s.get("best")
        phase = s.get("phase")
        progress = f"{out.trials_done(s)}/{s['n_trials']}"
        if phase in ("searching", "evaluating", "canceling"):
            progress += f" {phase}"
        rows.append(
            [
                str(s["id"]),
                s["name"],
                s["dataset"],
                s["status"],
                progress,
                _best(s["metric"]["name"], best["validation"]["mean"]) if best else "-",
                str(s["created_at"])[:19].replace("T", " "),
                out.clock(s.get("duration_seconds") or s.get("elapsed_seconds")),
            ]
        )
    click.echo(out.table(head, rows))
    if page["total"] > len(rows):
        click.echo(f"{len(rows)} of {page['total']} sweeps (--limit)", err=True)


@click.command()
@click.argument("sweep_id", type=int)
@server_option
@json_flag
def cancel(sweep_id: int, server: str, as_json: bool) -> None:
    """Cancel a sweep: queued trials now, running ones at their next epoch."""
    sweep = call(_client(server), "POST", f"/api/v1/sweeps/{sweep_id}/cancel")
    if as_json:
        out.echo_json(sweep)
        return
    c = sweep["counts"]
    running = f"; {c['running']} running trial(s) stop at their next epoch" if c.get("running") else ""
    click.echo(f"sweep {sweep_id} {sweep['status']}: {c.get('canceled', 0)} trial(s) canceled{running}")


@click.command()
@click.argument("sweep_id", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Cancel a queued or running sweep first, then delete it.")
@server_option
def delete(sweep_id: int, yes: bool, force: bool, server: str) -> None:
    """Delete an ended sweep with its trials, epochs and models (a running one only with --force)."""
    client = _client(server)
    sweep = call(client, "GET", f"/api/v1/sweeps/{sweep_id}")
    live = sweep["status"] in ("queued", "running")
    if live and not force:
        raise CliError(
            f"sweep {sweep_id} is {sweep['status']}: cancel it first (gridsweep cancel {sweep_id}), "
            "or pass --force to cancel and delete it"
        )
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput(f"not deleting sweep {sweep_id} without confirmation: pass --yes")
        what = f"sweep {sweep_id} {sweep['name']!r} ({sweep['status']}, {sweep['n_trials']} trials)"
        click.confirm(f"Delete {what} with its trials, epochs and models?", abort=True, err=True)
    if live:
        call(client, "POST", f"/api/v1/sweeps/{sweep_id}/cancel")
    call(client, "DELETE", f"/api/v1/sweeps/{sweep_id}")
    click.echo(f"sweep {sweep_id} deleted", err=True)


@click.command()
@click.argument("sweep_id", type=int)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="FILE.csv or FILE.parquet."
)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), help="Default: by the file's suffix.")
@click.option("--role", type=ROLES, help="Only trials of this role (default: all).")
@server_option
def export(sweep_id: int, output: str, fmt: str | None, role: str | None, server: str) -> None:
    """Write a sweep's trials to CSV or Parquet: a row per trial, a column per parameter and metric."""
    fmt = fmt or ("parquet" if Path(output).suffix.lower() in (".parquet", ".pq") else "csv")
    client = _client(server)
    call(client, "GET", f"/api/v1/sweeps/{sweep_id}")  # a missing sweep: exit 2 before a file is made
    params = {"format": fmt, **({"role": role} if role else {})}
    part = Path(output + ".part")
    try:
        with part.open("wb") as f:
            n = client.download(f"/api/v1/sweeps/{sweep_id}/export", f, params=params)
    except ApiError as exc:
        part.unlink(missing_ok=True)
        kind = Unreachable if exc.status_code in (401, 403, 503) else CliError
        raise kind(f"export of sweep {sweep_id} failed: {exc}") from exc
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise BadInput(f"cannot write {output}: {exc.strerror}") from exc
    part.replace(output)
    click.echo(f"sweep {sweep_id}: {n} bytes of {fmt} written to {output}", err=True)


@click.command()
@click.argument("sweep_id", type=int)
@click.option("--role", type=ROLES, default="search", show_default=True)
@click.option("--status", "statuses", multiple=True, help="Only these statuses (repeat).")
@click.option("--sort", default="id", show_default=True, help="id, metric, a column or params.NAME.")
@click.option("--desc", is_flag=True, help="Descending.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@server_option
@json_flag
def trials(
    sweep_id: int,
    role: str,
    statuses: tuple[str, ...],
    sort: str,
    desc: bool,
    limit: int,
    server: str,
    as_json: bool,
) -> None:
    """A sweep's trials: parameters that vary, status, metric, epochs and duration."""
    client = _client(server)
    sweep = call(client, "GET", f"/api/v1/sweeps/{sweep_id}")
    params: dict[str, Any] = {"role": role, "sort": sort, "order": "desc" if desc else "asc", "limit": limit}
    if statuses:
        params["status"] = list(statuses)
    page = call(client, "GET", f"/api/v1/sweeps/{sweep_id}/trials", params=params)
    if as_json:
        out.echo_json(page)
        return
    metric = sweep["metric"]["name"]
    axes = out.varying_axes(sweep["spec"])
    shown = f"{metric} ({metric_units(metric)})"
    head = ["id", "config", "seed", "params", "status", shown, "epochs", "duration"]
    rows = [
        [
            str(t["id"]),
            str(t["config_index"]),
            str(t["seed"]),
            params_label(t["params"], axes),
            t["status"],
            _metric(t.get(metric)),
            f"{t['epochs_done']}/{t['params'].get('epochs', '?')}"
            + (f" best {t['best_epoch']}" if t.get("best_epoch") else "")
            + (" stopped early" if t.get("stopped_epoch") else ""),
            f"{t['duration_seconds']:.2f}s" if t.get("duration_seconds") is not None else "-",
        ]
        for t in page["items"]
    ]
    click.echo(out.table(head, rows))
    click.echo(f"{len(rows)} of {page['total']} {role} trials", err=True)


@click.command()
@click.argument("trial_id", type=int)
@server_option
@json_flag
def trial(trial_id: int, server: str, as_json: bool) -> None:
    """One trial: parameters, status, metrics, epochs, times; a rerun says what it repeats."""
    t = call(_client(server), "GET", f"/api/v1/trials/{trial_id}")
    if as_json:
        out.echo_json(t)
        return
    roles = {"final": "test evaluation", "refit": "refit: trained on train + validation"}
    role = roles.get(t["role"], t["role"])
    click.echo(
        f"trial {t['id']} of sweep {t['sweep_id']}: {t['status']} ({role}), "
        f"config {t['config_index']}, seed {t['seed']}"
    )
    if t.get("rerun_of"):
        click.echo(f"  a rerun of trial {t['rerun_of']}")
    click.echo("  " + params_label(t["params"], []))
    for name in [k for k in t if k.startswith(("train_", "val_", "test_")) and t[k] is not None]:
        note = " (measured on data it trained on)" if t["role"] == "refit" and name.startswith("val_") else ""
        click.echo(f"  {name}: {t[name]:.6g}{note}")
    click.echo(f"  epochs: {t['epochs_done']}/{t['params'].get('epochs', '?')}, attempt {t['attempt']}")
    if t.get("duration_seconds") is not None:
        secs = t["duration_seconds"]
        click.echo(f"  training time: {secs:.3f}s (in a fused pack: its share of the pack's wall time)")
    if t.get("wall_seconds") is not None:
        click.echo(f"  wall time: {t['wall_seconds']:.3f}s (started {t['started_at']} to finished)")
    if t.get("device"):
        click.echo(f"  device: {t['device']}")
    if t.get("error"):
        click.echo(f"  error: {t['error']}")


COMMANDS = (sweeps_, cancel, delete, export, trials, trial)
