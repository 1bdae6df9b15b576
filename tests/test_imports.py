"""Each command imports only what it uses: no pandas (uploads, ``predict``) or scikit-learn
(digits, diabetes) for the API, ``gridsweep run`` and a worker training on moons, and no
``torch._dynamo`` or sympy on the training path. Checked in fresh interpreters (sys.modules)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, cli_env

HEAVY = ("pandas", "pyarrow", "sklearn", "torch._dynamo", "sympy")
# What `gridsweep run` imports only once its workers are started.
LATE = ("pydantic", "httpx", "yaml", "sqlalchemy", "uvicorn", "fastapi", "app.config", "app.spec")


def loaded_after(code: str) -> list[str]:
    """Which of ``HEAVY`` a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    r = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_the_api_and_the_run_command_import_neither_pandas_nor_sklearn() -> None:
    code = (
        "from app.api import create_app\n"
        "from app.cli.main import main\n"
        "from app.cli.run import run\n"
        "from app.cli.local import ThreadServer\n"
        "import app.services.datasets, app.api.routes_datasets\n"
    )
    assert loaded_after(code) == []


def test_the_worker_training_path_imports_no_pandas_sklearn_or_dynamo() -> None:
    """Import the worker, train a pack of two and a trial alone on moons, export its model."""
    code = """
import torch
from gridsweep.datasets import load_builtin, split_dataset
from gridsweep.vocab import TrialConfig
from worker.fused import train_pack
from worker.fused_packs import train_one
from worker.loop import Worker
from worker.model_io import make_artifact, to_bytes, to_torchscript
from worker.tensors import to_tensors
data = to_tensors(split_dataset(load_builtin("moons")), "cpu")
cfgs = [TrialConfig(1, (w,), "relu", 0.01, "adam", 64, 1, 0.0, 0.0, "bce", 0) for w in (8, 16)]
train_pack(cfgs, data)
result = train_one(cfgs[0], data, evaluate_test=True)
"""
    assert loaded_after(code) == []


def test_run_starts_its_workers_before_it_imports_the_settings_the_client_or_the_api(tmp_path) -> None:
    """``gridsweep run`` spawns its workers first (app/cli/run.py): at that moment this process
    holds none of pydantic, httpx, PyYAML, SQLAlchemy, uvicorn or FastAPI (~0.3 s of imports
    that now overlap the workers' import of torch)."""
    code = f"""
import json, sys
import app.cli.local as local
from click.testing import CliRunner
seen = []
class Spawned(Exception):
    pass
def spawn_worker(args, env=None):
    seen.append([m for m in {LATE!r} if m in sys.modules])
    raise Spawned
local.spawn_worker = spawn_worker
from app.cli.main import main
r = CliRunner().invoke(main, ["run", {str(ROOT / "examples" / "moons.yaml")!r}, "--db", "sqlite:///{tmp_path}/x.db"])
assert isinstance(r.exception, Spawned), (r.exception, r.output)
print(json.dumps(seen))
"""
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == [[]]
