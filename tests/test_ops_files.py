"""The deployment files and the CI helpers, checked offline (no Docker engine, no network).

docker-compose.yml and the example workflow are validated against vendored JSON Schemas
(tests/schemas/), and every gridsweep command in them is parsed by the real click CLI.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from ruamel.yaml import YAML

from app.cli.ci import config, schema, submit
from app.cli.main import main
from app.cli.reports import Gate
from app.cli.settings_doc import env_name, readme_block
from app.config import Settings
from gridsweep.logs import redact
from tests.conftest import ROOT

SCHEMAS = ROOT / "tests" / "schemas"
COMPOSE = ROOT / "docker-compose.yml"
WORKFLOW = ROOT / "examples" / "ci" / "github-sweep.yml"
# Read by the CLI / workers but not server settings: documented in the same table all the same.
KNOWN_ENV = {env_name(f) for f in Settings.model_fields}


def load_yaml(path: Path) -> Any:
    """YAML 1.2, as GitHub and Compose read it (PyYAML's 1.1 would turn the key `on:` into True)."""
    return YAML(typ="safe", pure=True).load(path.read_text())


def validator(name: str) -> jsonschema.Validator:
    schema_doc = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema_doc)
    cls.check_schema(schema_doc)
    return cls(schema_doc)


def resolve(args: list[str]) -> click.Command:
    """Parse a gridsweep command line with the real CLI (options included); nothing runs."""
    cmd: click.Command = main
    ctx = main.make_context("gridsweep", list(args))
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"{args}: a group needs a subcommand"
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"{args}: no command {name!r}"
        ctx = sub.make_context(name or "", rest, parent=ctx)
        cmd = sub
    return cmd


def errors(v: jsonschema.Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_file_is_valid_compose_spec(compose: dict[str, Any]) -> None:
    assert errors(validator("compose-spec.json"), compose) == []
    bad = {
        **compose,
        "services": {**compose["services"], "api": {**compose["services"]["api"], "replica": 2}},
    }
    assert errors(validator("compose-spec.json"), bad), "the schema must catch a misspelt key"


def test_compose_topology(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert "pg_isready -h 127.0.0.1" in " ".join(s["db"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in s["db"]["volumes"])
    assert s["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert s["migrate"]["restart"] == "no"
    assert s["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])
    for name in ("worker", "worker-gpu"):
        assert s[name]["depends_on"]["api"]["condition"] == "service_healthy"
        assert "replicas" in s[name]["deploy"]
    devices = s["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--device" in s["worker-gpu"]["command"] and "cuda" in s["worker-gpu"]["command"]


def test_every_compose_command_is_a_gridsweep_command(compose: dict[str, Any]) -> None:
    resolved = {}
    for name, svc in compose["services"].items():
        if not str(svc.get("image", "")).startswith("gridsweep"):
            continue
        resolved[name] = resolve(svc["command"]).name
        unknown = {k for k in svc.get("environment", {}) if k.startswith("GRIDSWEEP_")} - KNOWN_ENV
        assert not unknown, f"{name}: unknown settings {unknown}"
    assert resolved == {"migrate": "upgrade", "api": "serve", "worker": "worker", "worker-gpu": "worker"}
    with pytest.raises(click.UsageError):
        resolve(["serve", "--no-such-option"])


def test_dockerfile_runs_gridsweep_with_a_real_default_command() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["gridsweep"]' in text
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert resolve(cmd).name == "serve"
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", text, re.M)


def gridsweep_lines(script: str) -> list[list[str]]:
    """The gridsweep invocations in a shell step (redirections and `&` cut off)."""
    found = []
    for line in script.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens[:1] == ["nohup"]:
            tokens = tokens[1:]
        if tokens[:1] != ["gridsweep"]:
            continue
        cut = next((i for i, t in enumerate(tokens) if t[0] in "><&|;" or t in ("2>&1",)), len(tokens))
        found.append(tokens[1:cut])
    return found


def test_example_workflow_is_a_valid_github_workflow() -> None:
    wf = load_yaml(WORKFLOW)
    assert errors(validator("github-workflows.json"), wf) == []
    bad = {**wf, "jobs": {"sweep": {**wf["jobs"]["sweep"], "runs_on": "ubuntu-latest"}}}
    assert errors(validator("github-workflows.json"), bad), "the schema must catch a misspelt key"
    job = wf["jobs"]["sweep"]
    assert job["services"]["postgres"]["image"].startswith("postgres")
    commands = [c for step in job["steps"] if "run" in step for c in gridsweep_lines(step["run"])]
    names = [resolve(c).name for c in commands]
    assert names == ["submit", "upgrade", "serve", "worker", "submit"]
    gate = commands[-1]
    assert "--summary-md" in gate and gate[gate.index("--summary-md") + 1] == "$GITHUB_STEP_SUMMARY"
    spec = yaml.safe_load((ROOT / gate[1]).read_text())
    assert spec["metric"]["threshold"] is not None or "--fail-above" in gate or "--fail-below" in gate
    assert {k for k in job["env"] if k.startswith("GRIDSWEEP_")} <= KNOWN_ENV


def test_readme_settings_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_block() in readme, "the README's table drifted: `python -m app.cli.settings_doc README.md`"
    assert CliRunner().invoke(config, ["--markdown"]).stdout.strip() == readme_block()


def test_config_masks_secrets() -> None:
    env = {
        "GRIDSWEEP_DATABASE_URL": "postgresql+psycopg://gs:hunter2@db:5432/gs",
        "GRIDSWEEP_TOKEN": "gsw_s3cr3t",
        "GRIDSWEEP_MAX_TRIALS": "77",
    }
    r = CliRunner().invoke(config, ["--json"], env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["database_url"] == "postgresql+psycopg://gs:***@db:5432/gs"
    assert shown["token"] == "***" and shown["max_trials"] == 77
    text = CliRunner().invoke(config, [], env=env).stdout
    assert "hunter2" not in text and "s3cr3t" not in text and "(env)" in text
    bad = CliRunner().invoke(config, [], env={"GRIDSWEEP_MAX_TRIALS": "many"})
    assert bad.exit_code == 2 and "GRIDSWEEP_MAX_TRIALS" in bad.stderr


def test_schema_accepts_the_examples_and_rejects_a_bad_spec() -> None:
    r = CliRunner().invoke(schema, [])
    v = validator_from(json.loads(r.stdout))
    for path in [*(ROOT / "examples").glob("*.yaml"), ROOT / "examples" / "ci" / "sweep.yaml"]:
        assert errors(v, yaml.safe_load(path.read_text())) == [], path
    wandb = {
        "name": "w",
        "dataset": "moons",
        "parameters": {"epochs": {"value": 3}, "layers": {"values": [1, 2]}},
    }
    assert errors(v, wandb) == []
    # Scalars where lists go, a metric by name, W&B's method: grid, no name.
    assert errors(v, {"dataset": "moons", "seeds": 0, "metric": "val_error", "method": "grid"}) == []
    assert len(errors(v, {"dataset": "moons", "method": "bayes", "seeds": -1})) == 2
    bad = {"name": "b", "dataset": "moons", "parameters": {"activation": ["swish"], "lr": 0.1}}
    assert len(errors(v, bad)) == 2


def validator_from(doc: dict[str, Any]) -> jsonschema.Validator:
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc)


def test_dry_run_expands_without_a_server() -> None:
    # An unreachable server: a dry run that tried to submit would exit 3.
    r = CliRunner().invoke(
        submit,
        ["--dry-run", str(ROOT / "examples" / "moons.yaml"), "--server", "http://127.0.0.1:9", "--top", "3"],
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("moons-mlp: 54 trials = 54 configs x 1 seed(s) on moons")
    assert len([ln for ln in r.stdout.splitlines() if ln.startswith("  config ")]) == 3
    too_big = CliRunner().invoke(
        submit, ["--dry-run", str(ROOT / "examples" / "moons.yaml")], env={"GRIDSWEEP_MAX_TRIALS": "10"}
    )
    assert too_big.exit_code == 2 and "over the limit of 10" in too_big.stderr


def test_gate_reads_the_threshold_with_its_goal() -> None:
    up = Gate.resolve({"name": "val_accuracy", "goal": "maximize", "threshold": 0.9}, None, None)
    assert (up.fail_above, up.fail_below) == (None, 0.9)
    assert up.check(0.9)[0] and not up.check(0.89)[0]
    down = Gate.resolve({"name": "val_loss", "goal": "minimize", "threshold": 0.3}, None, None)
    assert down.check(0.3)[0] and not down.check(0.31)[0]
    cli = Gate.resolve({"name": "val_loss", "goal": "minimize", "threshold": 0.3}, 0.5, None)
    assert cli.fail_above == 0.5 and cli.source == "--fail-above"  # the command line wins
    assert Gate.resolve({"name": "val_loss", "goal": "minimize"}, None, None) is None


def test_redact_scrubs_tokens_and_url_passwords() -> None:
    line = "auth Authorization: Bearer abc.def-1 token gsw_XyZ_9 url postgresql://u:pa55@h/db"
    out = redact(line)
    assert "abc.def-1" not in out and "XyZ_9" not in out and "pa55" not in out
    assert "postgresql://u:***@h/db" in out
