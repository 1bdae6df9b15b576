"""docker-compose.yml's topology started as local processes (no Docker engine here).

Each service's command and environment come from the compose file itself: a fresh
PostgreSQL database, `migrate` (one-shot, must exit 0), `api` (started after that, ready
when /readyz answers 200: its healthcheck), then `worker` x replicas. A gated sweep through
the CLI must succeed, and /metrics must agree with the API.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from app.cli.local import free_port, stop_all
from tests.conftest import PG_URL, ROOT, cli_env, new_pg_database, pg_available, require

pytestmark = pytest.mark.slow

# Shorter than production so the test is quick; the names are the compose file's settings.
TEST_SETTINGS = {"GRIDSWEEP_LEASE_SECONDS": "10", "GRIDSWEEP_HEARTBEAT_SECONDS": "2"}
SPEC = (
    "name: topo\ndataset: moons\nparameters: {hidden_units: [8, 16], learning_rate: [0.01, 0.1], epochs: 3}\n"
)


def interpolate(value: Any) -> str:
    """Compose's ``${VAR:-default}``, with the defaults (the test does not read the outer env)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1), str(value))


class Topology:
    def __init__(self, compose: dict[str, Any], db_url: str, api_url: str, port: int, logs: Path) -> None:
        self.services = compose["services"]
        self.db_url, self.api_url, self.port, self.logs = db_url, api_url, port, logs

    def command(self, service: str) -> list[str]:
        args = [interpolate(a) for a in self.services[service]["command"]]
        args = [self.api_url if a == "http://api:8000" else a for a in args]  # the service name -> here
        for opt, value in (("--host", "127.0.0.1"), ("--port", str(self.port))):
            if opt in args:
                args[args.index(opt) + 1] = value
        return [sys.executable, "-m", "app.cli", *args]

    def env(self, service: str) -> dict[str, str]:
        env = {k: interpolate(v) for k, v in self.services[service].get("environment", {}).items()}
        assert env.pop("GRIDSWEEP_DATABASE_URL").startswith("postgresql+psycopg://")
        return cli_env(**env, **TEST_SETTINGS, GRIDSWEEP_DATABASE_URL=self.db_url)

    def start(self, service: str, *extra: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{service}-{time.monotonic_ns()}.log", "wb") as log:
            return subprocess.Popen(
                [*self.command(service), *extra], env=self.env(service), stdout=log, stderr=subprocess.STDOUT
            )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the api exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/readyz never answered 200")


def test_compose_topology_as_processes_runs_a_gated_sweep(tmp_path: Path) -> None:
    require(pg_available(), f"PostgreSQL at {PG_URL}")
    compose = YAML(typ="safe", pure=True).load((ROOT / "docker-compose.yml").read_text())
    replicas = int(interpolate(compose["services"]["worker"]["deploy"]["replicas"]))
    assert replicas == 2
    db_url, drop = new_pg_database()
    port = free_port()
    topo = Topology(compose, db_url, f"http://127.0.0.1:{port}", port, tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate = subprocess.run(
            topo.command("migrate"), env=topo.env("migrate"), capture_output=True, text=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stderr  # service_completed_successfully
        api = topo.start("api")
        procs.append(api)
        wait_ready(topo.api_url, api)  # service_healthy
        procs += [topo.start("worker", "--threads", "1") for _ in range(replicas)]

        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC)
        env = {k: v for k, v in cli_env().items() if not k.startswith(("GITHUB_", "CI_"))}
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "submit",
                str(spec),
                "--server",
                topo.api_url,
                "--fail-above",
                "5",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["status"] == "succeeded" and result["verdict"] == "met"
        assert result["counts"]["succeeded"] == 4

        # /metrics on PostgreSQL: the trial counts are the API's, both workers are online.
        sweep = httpx.get(f"{topo.api_url}/api/v1/sweeps/{result['sweep_id']}").json()
        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(f"{topo.api_url}/metrics").text)
        }
        search = {
            s.labels["status"]: s.value
            for s in families["gridsweep_trials"].samples
            if s.labels["role"] == "search"
        }
        assert search == {k: float(v) for k, v in sweep["counts"].items()}
        assert families["gridsweep_workers_online"].samples[0].value == replicas
        assert families["gridsweep_sweeps"].samples  # labelled by status only
        assert all(set(s.labels) == {"status"} for s in families["gridsweep_sweeps"].samples)
    finally:
        stop_all(procs[1:])
        stop_all(procs[:1])
        drop()
