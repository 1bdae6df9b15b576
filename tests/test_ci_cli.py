"""`gridsweep submit` as a CI step, through a real API process and a real worker process.

One server and one worker serve the module (SQLite: the gate does not depend on the store;
the process-topology test runs on PostgreSQL). Each documented exit code is produced for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from app.cli.ci import submit
from app.cli.local import free_port, stop_all
from app.cli.output import fmt
from app.migrate import upgrade
from tests.conftest import Server, cli_env

pytestmark = pytest.mark.slow

SPEC = """\
name: ci-gate
dataset: moons
metric: {{name: val_loss, goal: minimize{threshold}}}
parameters:
  hidden_units: [8, 16, 32]
  learning_rate: 0.05
  epochs: 2
seeds: {seeds}
"""
N_CONFIGS = 3


def write_spec(path: Path, threshold: float | None = None, seeds: str = "[0, 1]") -> str:
    extra = "" if threshold is None else f", threshold: {threshold}"
    path.write_text(SPEC.format(threshold=extra, seeds=seeds))
    return str(path)


def gridsweep(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process. CI-provider variables of the outer run are dropped, so a
    suite that itself runs on GitHub Actions does not derive idempotency keys by accident."""
    base = {k: v for k, v in cli_env(**env).items() if not k.startswith(("GITHUB_", "CI_")) or k in env}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Live:
    server: Server
    worker: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    d = tmp_path_factory.mktemp("ci")
    db = f"sqlite:///{d / 'gridsweep.db'}"
    upgrade(db)
    server = Server(db, d / "server.log", lease_seconds="10", heartbeat_seconds="2")
    with open(d / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--server",
                server.url,
                "--device",
                "cpu",
                "--threads",
                "1",
            ],
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Live(server, worker, d)
    finally:
        stop_all([worker])
        server.stop()


def junit_cases(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall("./testsuite/testcase")


def prop(case: ET.Element, name: str) -> str | None:
    for p in case.iter("property"):
        if p.get("name") == name:
            return p.get("value")
    return None


def test_gate_met_exit_0_with_json_junit_and_markdown(live: Live, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml")
    junit, md = tmp_path / "junit.xml", tmp_path / "summary.md"
    r = gridsweep(
        spec,
        "--server",
        live.url,
        "--fail-above",
        "5",
        "--json",
        "--junit",
        str(junit),
        "--summary-md",
        str(md),
        CI="true",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # --json: stdout is the result object and nothing else
    assert result["verdict"] == "met" and result["exit_code"] == 0 and result["status"] == "succeeded"
    assert result["gate"]["fail_above"] == 5 and result["gate"]["source"] == "--fail-above"
    best = result["best"]
    assert result["best_value"] == best["validation"]["mean"] <= 5

    # CI=true: one plain line per finished trial (2 seeds x 3 configs), no ANSI, no carriage returns.
    trial_lines = [ln for ln in r.stderr.splitlines() if re.match(r"^\[\d+/6\] trial \d+ \w+ val_loss=", ln)]
    assert len(trial_lines) == 6, r.stderr
    assert "\x1b" not in r.stderr and "\r" not in r.stderr

    # JUnit: one test case per config (not per trial), the best one marked, no failure.
    cases = junit_cases(junit)
    assert len(cases) == N_CONFIGS
    marked = [c for c in cases if prop(c, "best") == "true"]
    assert len(marked) == 1
    assert f"hidden_units={fmt(best['params']['hidden_units'])}" in marked[0].get("name")
    assert not list(ET.parse(junit).getroot().iter("failure"))
    assert ET.parse(junit).getroot().find("testsuite").get("tests") == str(N_CONFIGS)

    # Markdown: the verdict and a table whose marked row is the best config.
    text = md.read_text()
    assert "met" in text.splitlines()[0]
    best_row = next(ln for ln in text.splitlines() if "🏆" in ln)
    cells = [c.strip() for c in best_row.strip("|").split("|")]
    assert cells[1] == fmt(best["params"]["hidden_units"])
    assert cells[2].startswith(f"{best['validation']['mean']:.4f}")
    board = httpx.get(f"{live.url}/api/v1/sweeps/{result['sweep_id']}/leaderboard").json()
    assert board[0]["config_index"] == best["config_index"]


def test_gate_missed_exit_1_from_spec_threshold_with_github_annotation(live: Live, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", threshold=1e-6, seeds="[0]")
    junit = tmp_path / "junit.xml"
    r = gridsweep(spec, "--server", live.url, "--wait", "--junit", str(junit), GITHUB_ACTIONS="true")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1 and "gate missed: best val_loss" in errors[0] and "metric.threshold" in errors[0]
    cases = junit_cases(junit)
    assert len(cases) == N_CONFIGS
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and prop(failed[0], "best") == "true"
    assert failed[0].find("failure").get("type") == "missed"


def submit_in_process(*args: str) -> Result:
    """The same command in this process (no interpreter start-up): for the cases where the
    process boundary is not the point. The server is still a real one."""
    return CliRunner().invoke(submit, ["--idempotency-key", "", *args])


def test_invalid_spec_and_usage_exit_2(live: Live, tmp_path: Path) -> None:
    bad_local = tmp_path / "bad.yaml"
    bad_local.write_text("name: x\ndataset: moons\nparameters: {activation: [relu, swish]}\n")
    r = submit_in_process(str(bad_local), "--server", live.url, "--wait")
    assert r.exit_code == 2 and "parameters.activation[1]" in r.stderr

    # Valid for the schema, refused by the server (a regression loss on a classification set).
    bad_server = tmp_path / "bad_server.yaml"
    bad_server.write_text("name: x\ndataset: moons\nparameters: {loss: mse, epochs: 1}\n")
    r = submit_in_process(str(bad_server), "--server", live.url, "--wait")
    assert r.exit_code == 2 and "parameters.loss[0]" in r.stderr

    ok = write_spec(tmp_path / "ok.yaml")
    r = submit_in_process(ok, "--server", live.url, "--fail-above", "1", "--fail-below", "2")
    assert r.exit_code == 2 and "no value could pass" in r.stderr
    r = submit_in_process(ok, "--server", live.url, "--timeout", "-1")
    assert r.exit_code == 2


def test_unreachable_server_exit_3(tmp_path: Path) -> None:
    r = submit_in_process(write_spec(tmp_path / "spec.yaml"), "--server", f"http://127.0.0.1:{free_port()}")
    assert r.exit_code == 3, r.stderr
    assert "unreachable" in r.stderr.lower()


def test_timeout_exit_4(live: Live, tmp_path: Path) -> None:
    """A sweep far longer than --timeout: exit 4, and the sweep goes on (the test cancels it)."""
    spec = tmp_path / "long.yaml"
    spec.write_text("name: long\ndataset: moons\nparameters: {epochs: 5000, batch_size: 8}\n")
    junit = tmp_path / "junit.xml"
    r = gridsweep(str(spec), "--server", live.url, "--timeout", "1", "--json", "--junit", str(junit))
    try:
        assert r.returncode == 4, r.stderr
        result = json.loads(r.stdout)
        assert result["verdict"] == "timeout" and result["status"] in ("queued", "running")
        failures = [c.find("failure") for c in junit_cases(junit) if c.find("failure") is not None]
        assert [f.get("type") for f in failures] == ["timeout"]
    finally:
        sid = json.loads(r.stdout)["sweep_id"] if r.stdout.startswith("{") else None
        if sid is not None:
            httpx.post(f"{live.url}/api/v1/sweeps/{sid}/cancel")


def test_canceled_sweep_exit_1(live: Live, tmp_path: Path) -> None:
    """The sweep is canceled (by someone else) while the step waits: the step fails."""
    spec = tmp_path / "cancel.yaml"
    name = f"cancel-me-{time.time_ns()}"
    spec.write_text(f"name: {name}\ndataset: moons\nparameters: {{epochs: 5000, batch_size: 8}}\n")

    def cancel_when_submitted() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for s in httpx.get(f"{live.url}/api/v1/sweeps").json()["items"]:
                if s["name"] == name:
                    httpx.post(f"{live.url}/api/v1/sweeps/{s['id']}/cancel")
                    return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_when_submitted)
    canceller.start()
    r = submit_in_process(str(spec), "--server", live.url, "--wait", "--poll", "0.2", "--timeout", "120")
    canceller.join()
    assert r.exit_code == 1, r.stderr
    assert "canceled" in r.stderr.splitlines()[-1]


def test_repeated_submit_with_the_same_key_returns_the_same_sweep(live: Live, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds="[7]")
    key = f"test-{os.getpid()}-{time.time_ns()}"
    ids = []
    for _ in range(2):
        r = CliRunner().invoke(submit, [spec, "--server", live.url, "--idempotency-key", key, "--json"])
        assert r.exit_code == 0, r.stderr
        ids.append(json.loads(r.stdout)["sweep_id"])
    assert ids[0] == ids[1]


def test_ci_run_id_gives_the_idempotency_key(live: Live, tmp_path: Path) -> None:
    from app.cli.output import load_spec
    from app.cli.waiting import ci_idempotency_key

    spec = write_spec(tmp_path / "spec.yaml", seeds="[3]")
    env = {
        "GITHUB_RUN_ID": "9001",
        "GITHUB_RUN_ATTEMPT": "2",
        "GITHUB_JOB": "sweep",
        "GITHUB_REPOSITORY": "o/r",
    }
    r = CliRunner().invoke(submit, [spec, "--server", live.url, "--json"], env=env)
    assert r.exit_code == 0, r.stderr
    sent = json.loads(r.stdout)["idempotency_key"]
    assert sent == ci_idempotency_key(env, load_spec(spec)) and sent.startswith("gh-9001-2-")
    other_attempt = ci_idempotency_key({**env, "GITHUB_RUN_ATTEMPT": "3"}, load_spec(spec))
    assert other_attempt != sent  # a re-run of the workflow is a new sweep; a retried step is not
    assert ci_idempotency_key({}, load_spec(spec)) is None


def _all_done(url: str) -> list[dict]:
    """Every sweep on the server, once none is queued or running (the worker is still busy otherwise)."""
    deadline = time.monotonic() + 120
    while True:
        sweeps = httpx.get(f"{url}/api/v1/sweeps", params={"limit": 500}).json()["items"]
        settled = all(
            s["status"] in ("succeeded", "failed", "canceled")
            and not (s["counts"]["running"] or s["counts"]["queued"])
            for s in sweeps
        )
        if settled or time.monotonic() > deadline:
            return sweeps
        time.sleep(0.3)


def metric_samples(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_parse_and_trial_counts_equal_the_api(live: Live) -> None:
    sweeps = _all_done(live.url)
    assert sweeps, "the earlier tests submitted sweeps"
    api_counts: dict[str, int] = {}
    for s in sweeps:
        for status, n in s["counts"].items():
            api_counts[status] = api_counts.get(status, 0) + n
    fam = metric_samples(live.url)
    search = {s.labels["status"]: s.value for s in fam["gridsweep_trials"] if s.labels["role"] == "search"}
    assert search == {k: float(v) for k, v in api_counts.items()}
    assert fam["gridsweep_queue_depth"][0].value == 0
    assert fam["gridsweep_workers_online"][0].value == 1
    # Route templates, never raw ids, as labels.
    routes = {s.labels["route"] for s in fam["gridsweep_http_requests"]}
    assert "/api/v1/sweeps/{sweep_id}" in routes
    assert not any(re.search(r"/\d+", r) for r in routes)
    count = next(s.value for s in fam["gridsweep_trial_duration_seconds"] if s.name.endswith("_count"))
    assert count >= api_counts["succeeded"]


def test_request_ids_and_structured_logs_without_tokens(live: Live) -> None:
    secret = "gsw_do-not-log-me-123"
    r = httpx.get(
        f"{live.url}/api/v1/sweeps",
        headers={"X-Request-ID": "ci-req-42", "Authorization": f"Bearer {secret}"},
    )
    assert r.headers["x-request-id"] == "ci-req-42"
    assert len(httpx.get(f"{live.url}/healthz").headers["x-request-id"]) == 32  # generated when absent
    time.sleep(0.3)  # the log line is written after the response
    server_log = (live.dir / "server.log").read_text()
    lines = [json.loads(ln) for ln in server_log.splitlines() if ln.startswith("{")]
    mine = [ln for ln in lines if ln.get("request_id") == "ci-req-42"]
    assert mine and mine[-1]["route"] == "/api/v1/sweeps" and mine[-1]["logger"] == "gridsweep.http"
    assert secret not in server_log
    worker_lines = [
        json.loads(ln) for ln in (live.dir / "worker.log").read_text().splitlines() if ln.startswith("{")
    ]
    trial_lines = [ln for ln in worker_lines if ln.get("trial_id") is not None]
    assert trial_lines
    assert all({"worker_id", "sweep_id", "trial_id"} <= ln.keys() for ln in trial_lines)
