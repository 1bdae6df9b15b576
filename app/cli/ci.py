"""CI and operations commands: ``submit`` (with a pass/fail gate), ``schema``, ``config``.

``submit --wait`` turns a sweep into a CI step: it waits, judges the best metric
against the gate and exits with a documented code (``app.cli.exit_codes``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from app.cli import output as out
from app.cli import reports
from app.cli import waiting as ci
from app.cli.api import BadInput, call, make_client
from app.cli.exit_codes import EXIT_CODES_HELP, EXIT_OK
from app.cli.options import server_option
from app.cli.reports import Gate
from app.config import Settings
from app.spec import DataFacts, resolve_metric
from gridsweep.client import ApiClient
from gridsweep.datasets import BUILTIN_DATASETS


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("spec_file", type=click.Path(dir_okay=False))
@server_option
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the end and judge the sweep (implied by --fail-*, --timeout, reports).",
)
@click.option("--fail-above", type=float, metavar="X", help="Gate: exit 1 if the best metric is above X.")
@click.option("--fail-below", type=float, metavar="X", help="Gate: exit 1 if the best metric is below X.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop waiting after SECONDS: exit 4 (the sweep itself goes on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the result object, as JSON, on stdout.")
@click.option("--junit", metavar="FILE", help="Write a JUnit XML report: one test case per config.")
@click.option("--summary-md", metavar="FILE", help="Append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    default=None,
    help="Sent as Idempotency-Key: a repeated submit returns the first sweep. Default: derived from "
    "the CI run (GitHub: run id, attempt, job, spec; GitLab: pipeline, job, spec); '' sends none.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check and expand the spec locally, print the first configs; submit nothing.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Configs shown.")
@click.option(
    "--poll", default=1.0, show_default=True, type=click.FloatRange(min=0.05), help="Seconds between polls."
)
def submit(
    spec_file: str,
    server: str,
    wait: bool,
    fail_above: float | None,
    fail_below: float | None,
    timeout: float | None,
    as_json: bool,
    junit: str | None,
    summary_md: str | None,
    idempotency_key: str | None,
    dry_run: bool,
    top: int,
    poll: float,
) -> None:
    """Submit a sweep from a YAML spec and print its id; with --wait, a CI gate.

    The gate compares the best config's validation metric (mean over seeds) with
    --fail-above / --fail-below, or else with the spec's metric.threshold read with its
    goal (minimize: fail above it; maximize: fail below it). On a terminal a progress
    bar shows trials, epochs, the best so far, elapsed time and the ETA; off a terminal or
    with CI=true, progress is one plain line per finished trial; on GitHub Actions a
    failed gate also prints an ::error:: annotation. Ctrl-C stops waiting (exit 130):
    the sweep goes on.
    """
    if fail_above is not None and fail_below is not None and fail_below > fail_above:
        raise click.UsageError("--fail-below is above --fail-above: no value could pass")
    spec = out.load_spec(spec_file)
    builtin = BUILTIN_DATASETS.get(spec.dataset)
    if builtin is not None:  # the task is known here: name its default metric (the server would)
        resolve_metric(spec, DataFacts(task=builtin.task, n_classes=builtin.n_classes))
    gate = Gate.resolve(spec.metric.model_dump(), fail_above, fail_below)
    if dry_run:
        ci.dry_run(spec, gate, top, as_json)
        return
    wait = wait or any(x is not None for x in (fail_above, fail_below, timeout, junit, summary_md))
    key = idempotency_key if idempotency_key is not None else ci.ci_idempotency_key(dict(os.environ), spec)
    client = make_client(server)
    started = time.monotonic()
    created = call(
        client,
        "POST",
        "/api/v1/sweeps",
        json=spec.model_dump(mode="json"),
        headers={ci.IDEMPOTENCY_HEADER: key} if key else None,
    )
    sid = created["id"]
    progress = ci.Progress(client, sid, ci.plain_output())
    try:  # from here on, Ctrl-C leaves the sweep to the server (exit 130)
        _follow(
            client, created, progress, started, server=server, key=key, wait=wait, as_json=as_json,
            gate=gate, timeout=timeout, poll=poll, top=top, junit=junit, summary_md=summary_md,
        )  # fmt: skip
    except KeyboardInterrupt:
        progress.close()
        interrupted(sid, server, as_json)


def _follow(
    client: ApiClient,
    created: dict[str, Any],
    progress: ci.Progress,
    started: float,
    *,
    server: str,
    key: str | None,
    wait: bool,
    as_json: bool,
    gate: Gate | None,
    timeout: float | None,
    poll: float,
    top: int,
    junit: str | None,
    summary_md: str | None,
) -> None:
    """After the submit: print the id, wait, judge, report (see ``submit``)."""
    sid = created["id"]
    if not as_json:
        click.echo(sid)
    keyed = f" (idempotency key {key})" if key else ""
    click.echo(f"sweep {sid} {created['status']} with {created['n_trials']} trials{keyed}", err=True)
    if not wait:
        if as_json:  # the shape of every --json result: the sweep as it stands, verdict "submitted"
            sweep = call(client, "GET", f"/api/v1/sweeps/{sid}")
            verdict = reports.Verdict(
                EXIT_OK, "submitted", f"sweep {sid} submitted: {created['n_trials']} trials"
            )
            elapsed = round(time.monotonic() - started, 3)
            out.echo_json(
                reports.result_json(
                    sweep, verdict, gate, [], idempotency_key=key, server=server, elapsed_seconds=elapsed
                )
            )
        return
    sweep, timed_out = ci.wait_for(client, sid, poll, timeout, progress)
    verdict = reports.evaluate(sweep, gate, timed_out, timeout)
    board = call(client, "GET", f"/api/v1/sweeps/{sid}/leaderboard", params={"limit": top})
    elapsed = time.monotonic() - started
    if junit:
        ci.write_text(junit, reports.junit_xml(sweep, ci.all_trials(client, sid), verdict, board, elapsed))
    if summary_md:
        ci.write_text(summary_md, reports.summary_markdown(sweep, verdict, board), append=True)
    if as_json:
        result = reports.result_json(
            sweep, verdict, gate, board, idempotency_key=key, server=server, elapsed_seconds=round(elapsed, 3)
        )
        out.echo_json(result)
    else:
        click.echo(out.progress_line(sweep))
        click.echo(out.leaderboard_table(sweep, board))
        click.echo(out.best_text(sweep.get("best")))
    click.echo(verdict.message, err=True)
    if os.environ.get("GITHUB_ACTIONS") == "true" and not verdict.ok:
        click.echo(reports.github_error(verdict), err=as_json)  # stdout keeps pure JSON with --json
    if verdict.code:
        sys.exit(verdict.code)


def interrupted(sweep_id: int, server: str, as_json: bool) -> NoReturn:
    """Ctrl-C while waiting: the sweep goes on on the server; say so, and how to cancel it (exit 130)."""
    message = (
        f"interrupted: sweep {sweep_id} goes on on the server ({server}); "
        f"follow it with `gridsweep status {sweep_id}`, cancel it with `gridsweep cancel {sweep_id}`"
    )
    out.exit_interrupted(sweep_id, message, as_json)


@click.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors: yaml-language-server, VS Code)."""
    from app.cli.spec_schema import spec_json_schema

    click.echo(json.dumps(spec_json_schema(), indent=2))


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--markdown", is_flag=True, help="Print the README's table of every setting instead.")
def config(as_json: bool, markdown: bool) -> None:
    """Print the effective settings (GRIDSWEEP_* environment), secrets masked."""
    from app.cli.settings_doc import effective_settings, readme_block

    if markdown:
        click.echo(readme_block())
        return
    try:
        rows = effective_settings(Settings())
    except ValidationError as exc:
        lines = [f"  GRIDSWEEP_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors()]
        raise BadInput("invalid settings:\n" + "\n".join(lines)) from exc
    if as_json:
        out.echo_json({r["name"]: r["value"] for r in rows})
        return
    width = max(len(r["env"]) for r in rows)
    for r in rows:
        value = "(unset)" if r["value"] is None else r["value"]
        click.echo(f"{r['env']:<{width}}  {value}  ({r['source']})")


COMMANDS = (submit, schema, config)
