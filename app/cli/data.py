"""CLI commands for datasets, models, predictions and reruns (registered on ``gridsweep``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from app.cli import output as out
from app.cli.api import BadInput, call, make_client
from app.cli.options import server_option


def _call(server: str, method: str, path: str, **kw: Any) -> Any:
    """One API call with a fresh client (closed after), exit codes from ``app.cli.api``."""
    client = make_client(server)
    try:
        return call(client, method, path, **kw)
    finally:
        client.close()


@click.group()
def dataset() -> None:
    """Upload and manage your own datasets (CSV or Parquet)."""


@dataset.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", required=True, help="The column to predict.")
@click.option("--task", type=click.Choice(["classification", "regression"]), help="Default: inferred.")
@click.option("--name", help="Default: the file name without its extension.")
@click.option(
    "--categorical", multiple=True, help="A text feature column to one-hot encode (repeat, or a,b,c)."
)
@click.option("--drop-missing", is_flag=True, help="Drop rows with missing or infinite values.")
@server_option
@click.option("--json", "as_json", is_flag=True)
def upload(
    file: str,
    target: str,
    task: str | None,
    name: str | None,
    categorical: tuple[str, ...],
    drop_missing: bool,
    server: str,
    as_json: bool,
) -> None:
    """Upload FILE; the same bytes are stored once. Prints the dataset's id."""
    cats = [c.strip() for item in categorical for c in item.split(",") if c.strip()]
    form: dict[str, Any] = {"target": target, "drop_missing": str(drop_missing).lower(), "categorical": cats}
    if task:
        form["task"] = task
    if name:
        form["name"] = name
    raw = Path(file).read_bytes()
    ds = _call(server, "POST", "/api/v1/datasets", data=form, files={"file": (Path(file).name, raw)})
    if as_json:
        out.echo_json(ds)
        return
    click.echo(ds["id"])
    verb = "stored" if ds.get("created") else "already stored (same bytes)"
    classes = (
        f" ({len(ds['classes'])} classes: {', '.join(map(str, ds['classes'][:10]))})" if ds["classes"] else ""
    )
    click.echo(
        f"dataset {ds['id']} {ds['name']!r} {verb}: {ds['n_rows']} rows, {ds['n_features']} features, "
        f"{ds['task']}{classes}",
        err=True,
    )
    click.echo(f"  task {ds['task_source']}: {ds['task_reason']}", err=True)
    if ds.get("n_dropped"):
        rows = ds.get("dropped_rows") or []
        shown = ", ".join(map(str, rows[:20])) + (", ..." if ds["n_dropped"] > min(len(rows), 20) else "")
        click.echo(
            f"  dropped {ds['n_dropped']} row(s) with missing or infinite values (--drop-missing): "
            f"rows {shown}",
            err=True,
        )


@dataset.command("list")
@server_option
@click.option("--json", "as_json", is_flag=True)
def list_(server: str, as_json: bool) -> None:
    """List uploaded datasets."""
    page = _call(server, "GET", "/api/v1/datasets", params={"limit": 500})
    if as_json:
        out.echo_json(page)
        return
    head = ["id", "name", "task", "rows", "features", "target", "sha256"]
    rows = [
        [
            str(d["id"]),
            d["name"],
            d["task"],
            str(d["n_rows"]),
            str(d["n_features"]),
            d["target"],
            d["sha256"][:12],
        ]
        for d in page["items"]
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    for r in [head, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@dataset.command("show")
@click.argument("ref")
@server_option
def show(ref: str, server: str) -> None:
    """A dataset (by id or name) with its schema and statistics, as JSON."""
    out.echo_json(_call(server, "GET", f"/api/v1/datasets/{ref}"))


@dataset.command("delete")
@click.argument("ref")
@server_option
def delete(ref: str, server: str) -> None:
    """Delete a dataset (refused while a sweep is at work on it)."""
    _call(server, "DELETE", f"/api/v1/datasets/{ref}")
    click.echo(f"dataset {ref} deleted", err=True)


@click.group()
def model() -> None:
    """Trained models of finished sweeps."""


@model.command("download")
@click.argument("sweep_id", type=int)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write it.")
@click.option("--kind", type=click.Choice(["best", "refit"]), default="best", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["state_dict", "torchscript"]),
    default="state_dict",
    show_default=True,
)
@server_option
def download(sweep_id: int, output: str, kind: str, fmt: str, server: str) -> None:
    """Download a sweep's model (load it with worker.model_io.load_model)."""
    data = _call(
        server, "GET", f"/api/v1/sweeps/{sweep_id}/model", params={"kind": kind, "format": fmt}, raw=True
    )
    Path(output).write_bytes(data)
    click.echo(f"{kind} model of sweep {sweep_id} ({fmt}, {len(data)} bytes) written to {output}", err=True)


@click.command()
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("data_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="CSV to write (default: stdout).")
def predict(model_file: str, data_file: str, output: str | None) -> None:
    """Predict every row of DATA_FILE (CSV or Parquet) with MODEL_FILE.

    Writes the input columns plus ``prediction`` (class labels, or values in the target's
    units) and, for classification, one ``p_<class>`` probability column per class.
    """
    from app.tabular import Encoding, TableError, encode_frame, read_table
    from worker.model_io import load_model

    try:
        m = load_model(model_file)
    except ValueError as exc:
        raise BadInput(f"{model_file}: {exc}") from exc
    enc = m.meta.get("encoding")
    encoding = Encoding.from_dict(enc) if enc else Encoding(columns=list(m.feature_names))
    try:
        df, _ = read_table(Path(data_file).read_bytes(), data_file)
        X = encode_frame(df, encoding)
    except TableError as exc:
        raise BadInput(f"{data_file}:\n" + "\n".join(f"  {e['msg']}" for e in exc.errors)) from exc
    result = df.copy()
    result["prediction"] = m.predict(X)
    if m.task == "classification":
        proba = m.predict_proba(X)
        for i, c in enumerate(m.classes):
            result[f"p_{c}"] = proba[:, i].tolist()
    if output:
        result.to_csv(output, index=False)
        click.echo(f"{len(result)} predictions written to {output}", err=True)
    else:
        result.to_csv(sys.stdout, index=False)


@click.command()
@click.argument("trial_id", type=int)
@server_option
@click.option("--json", "as_json", is_flag=True)
def rerun(trial_id: int, server: str, as_json: bool) -> None:
    """Queue an identical run of an ended trial; prints the new trial's id."""
    t = _call(server, "POST", f"/api/v1/trials/{trial_id}/rerun")
    if as_json:
        click.echo(json.dumps(t, indent=2))
        return
    click.echo(t["id"])
    click.echo(
        f"trial {t['id']} queued: a rerun of trial {trial_id} (seed {t['seed']}); "
        f"see its result with `gridsweep trial {t['id']}`",
        err=True,
    )


COMMANDS = (dataset, model, predict, rerun)
