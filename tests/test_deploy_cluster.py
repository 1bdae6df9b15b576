"""deploy/kubernetes and deploy/slurm, checked offline (no cluster, no Slurm).

Every built-in manifest is validated with ``kubernetes-validate --strict`` (the CLI and its
API, against the newest schemas it ships and an older Kubernetes); it has no schemas for
custom resources, so KEDA's ScaledObject / ScaledJob are validated against
tests/schemas/keda-v1alpha1.json (written from KEDA's CRDs) and the ScaledJob's pod template
as a batch/v1 Job. Then what the files must say: the scalers' trigger, query and targets,
the probes, the GPU limits, security settings, secrets only by reference, network policies,
grace periods that fit the worker's stop, and the sbatch script's directives and syntax.
"""

from __future__ import annotations

import inspect
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.api.routes_health import router as health_router
from app.config import Settings
from app.db import Database
from app.metrics import Metrics
from app.migrate import upgrade
from gridsweep.client import ApiClient
from tests.conftest import ROOT, require
from tests.test_ops_files import KNOWN_ENV, errors, resolve, validator

K8S = ROOT / "deploy" / "kubernetes"
SBATCH = ROOT / "deploy" / "slurm" / "gridsweep-workers.sbatch"
KEDA_KINDS = {"ScaledObject", "ScaledJob"}
NOT_APPLIED = {"kustomization.yaml", "secret.example.yaml"}
# Kubernetes versions to validate against: the newest kubernetes-validate ships, and an older one.
VERSIONS = (kubernetes_validate.latest_version(), "1.29.0")
SECRETISH = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|DATABASE_URL|DSN|API_KEY|PRIVATE", re.I)
# The longest a stopping worker may take: one request in flight (the client's timeout), then
# the release (retried for 10 s, gridsweep/client.py), plus a training step and margin.
WORKER_STOP_SECONDS = inspect.signature(ApiClient).parameters["timeout"].default + 10 + 10


def manifests(*, applied_only: bool = True) -> dict[str, list[dict[str, Any]]]:
    """{file name: its YAML documents} in deploy/kubernetes."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml" or (applied_only and path.name in NOT_APPLIED):
            continue
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def objects(kind: str | None = None) -> list[dict[str, Any]]:
    found = [d for docs in manifests().values() for d in docs]
    return [d for d in found if kind is None or d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in objects(kind) if d["metadata"]["name"] == name]
    return found


def pod_specs() -> dict[str, dict[str, Any]]:
    """{kind/name: pod spec} of every workload (a ScaledJob's through its jobTargetRef)."""
    specs = {}
    for d in objects():
        spec = d.get("spec", {})
        template = spec.get("jobTargetRef", spec).get("template")
        if template is not None:
            specs[f"{d['kind']}/{d['metadata']['name']}"] = template["spec"]
    return specs


def containers() -> dict[str, dict[str, Any]]:
    return {f"{k}/{c['name']}": c for k, spec in pod_specs().items() for c in spec["containers"]}


def literal_secrets(doc: Any, path: str = "") -> list[str]:
    """Places where a secret-ish setting is written out instead of referenced from a Secret."""
    found = []
    if isinstance(doc, dict):
        if doc.get("kind") == "ConfigMap":
            found += [f"{path}data.{k}" for k in doc.get("data", {}) if SECRETISH.search(k)]
        if "name" in doc and "value" in doc and SECRETISH.search(str(doc["name"])):  # an env var
            found.append(f"{path}{doc['name']}")
        for k, v in doc.items():
            found += literal_secrets(v, f"{path}{k}.")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += literal_secrets(v, f"{path}{i}.")
    elif isinstance(doc, str) and re.search(r"://[^/\s:@]+:[^@\s]+@", doc):  # a password in a URL
        found.append(path.rstrip("."))
    return found


# --- schemas ---------------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "gridsweep"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_APPLIED
    assert sorted(kust["resources"]) == sorted(on_disk)
    example = (K8S / "secret.example.yaml").read_text()
    assert "EXAMPLE ONLY" in example and "NOT APPLIED" in example


def test_kubernetes_validate_strict_cli_passes_and_skips_only_the_custom_resources() -> None:
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stdout
    passed = re.findall(r"^INFO \S+ passed for resource (\S+)", r.stdout, re.M)
    skipped = set(re.findall(r"^WARN \S+ Couldn't find schema for kind (\w+)", r.stdout, re.M))
    built_in = [
        d for docs in manifests(applied_only=False).values() for d in docs if d["kind"] not in KEDA_KINDS
    ]
    assert len(passed) == len(built_in)
    assert skipped == KEDA_KINDS  # validated below against keda-v1alpha1.json instead


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_with_strict_schemas(version: str) -> None:
    keda = validator("keda-v1alpha1.json")
    for name, docs in manifests(applied_only=False).items():
        for d in docs:
            where = f"{name}: {d['kind']}/{d['metadata']['name']}"
            if d["kind"] in KEDA_KINDS:
                assert errors(keda, d) == [], where
                if d["kind"] == "ScaledJob":  # its Job spec, as the Job KEDA creates from it
                    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}}
                    kubernetes_validate.validate({**job, "spec": d["spec"]["jobTargetRef"]}, version, True)
                continue
            kubernetes_validate.validate(d, version, strict=True)  # raises on an error or an unknown kind


def test_the_schemas_catch_a_misspelt_field() -> None:
    deployment = one("Deployment", "gridsweep-api")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)
    keda = validator("keda-v1alpha1.json")
    so = one("ScaledObject", "gridsweep-worker-cpu")
    assert errors(keda, {**so, "spec": {**so["spec"], "minReplicas": 0}})
    trigger = so["spec"]["triggers"][0]
    typo = {**trigger, "metadata": {**trigger["metadata"], "treshold": "5"}}
    assert errors(keda, {**so, "spec": {**so["spec"], "triggers": [typo]}})


# --- what the manifests say ------------------------------------------------------------------


def exposed_metrics(tmp_path: Path) -> dict[str, set[str]]:
    """{metric family: its label names} that the API's /metrics really exposes (a store with trials)."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    db = Database(url)
    try:
        text = Metrics(db, Settings(database_url=url)).render().decode()
    finally:
        db.dispose()
    families: dict[str, set[str]] = {}
    for f in text_string_to_metric_families(text):
        families[f.name] = {k for s in f.samples for k in s.labels}
    return families


def test_keda_scalers_trigger_on_the_queue_depth(tmp_path: Path) -> None:
    exposed = exposed_metrics(tmp_path)
    so = one("ScaledObject", "gridsweep-worker-cpu")
    sj = one("ScaledJob", "gridsweep-worker-gpu")
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gridsweep-worker-cpu")
    assert one("Deployment", target["name"])["spec"].get("replicas") is None  # KEDA owns the count
    for scaler in (so, sj):
        spec = scaler["spec"]
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        query = meta["query"]
        assert "gridsweep_queue_depth" in query
        assert re.search(r"\bmax\(gridsweep_queue_depth\)", query)  # every replica says the same: not sum
        for metric in re.findall(r"\b(gridsweep_\w+)", query):
            assert metric in exposed, f"{metric} is not on /metrics"
        for label in re.findall(r"(\w+)=\"", query):
            assert any(label in labels for labels in exposed.values()), label
        assert float(meta["threshold"]) > 0
        assert "activationThreshold" in meta and float(meta["activationThreshold"]) >= 0
        assert meta["ignoreNullValues"] == "false"  # no sample is an error, not "scale to zero"
    assert so["spec"]["triggers"][0]["metricType"] == "AverageValue"
    # GPUs wake for deeper queues than CPUs; each target is one worker's default pack.
    cpu_meta, gpu_meta = so["spec"]["triggers"][0]["metadata"], sj["spec"]["triggers"][0]["metadata"]
    assert float(gpu_meta["activationThreshold"]) > float(cpu_meta["activationThreshold"])
    assert (float(cpu_meta["threshold"]), float(gpu_meta["threshold"])) == (64, 512)
    assert 'gridsweep_trials{status="running"}' in cpu_meta["query"]  # no scale-in under running packs


def test_every_command_is_a_gridsweep_command_with_known_settings() -> None:
    names = {k: resolve(c["args"]).name for k, c in containers().items()}
    assert names == {
        "Job/gridsweep-migrate/migrate": "upgrade",
        "Deployment/gridsweep-api/api": "serve",
        "Deployment/gridsweep-worker-cpu/worker": "worker",
        "ScaledJob/gridsweep-worker-gpu/worker": "worker",
    }
    config = one("ConfigMap", "gridsweep")["data"]
    assert set(config) <= KNOWN_ENV
    for c in containers().values():
        assert {e["name"] for e in c.get("env", [])} <= KNOWN_ENV
        assert c["envFrom"] == [{"configMapRef": {"name": "gridsweep"}}]
    api = containers()["Deployment/gridsweep-api/api"]["args"]
    assert "--no-upgrade" in api and api[api.index("--host") + 1] == "0.0.0.0"
    assert config["GRIDSWEEP_AUTH"] == "on"  # serve refuses a non-loopback address without it
    gpu = containers()["ScaledJob/gridsweep-worker-gpu/worker"]["args"]
    assert gpu[gpu.index("--device") + 1] == "cuda" and float(gpu[gpu.index("--exit-when-idle") + 1]) > 0
    for k, c in containers().items():
        if "worker" in k:
            assert c["args"][c["args"].index("--server") + 1] == "http://gridsweep-api:8000"


def test_api_has_two_replicas_probes_and_a_disruption_budget() -> None:
    api = one("Deployment", "gridsweep-api")
    assert api["spec"]["replicas"] == 2
    (c,) = api["spec"]["template"]["spec"]["containers"]
    routes = {r.path for r in health_router.routes}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["port"] in ports and ports["http"] == 8000
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    svc = one("Service", "gridsweep-api")
    assert svc["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    pdb = one("PodDisruptionBudget", "gridsweep-api")
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < api["spec"]["replicas"]
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gpu_workers_get_a_gpu_on_a_gpu_node() -> None:
    spec = pod_specs()["ScaledJob/gridsweep-worker-gpu"]
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    assert spec["restartPolicy"] == "Never"  # a finished worker (idle exit) completes the Job
    cpu = pod_specs()["Deployment/gridsweep-worker-cpu"]
    assert "nvidia.com/gpu" not in str(cpu)


def test_pods_run_as_non_root_on_a_read_only_filesystem() -> None:
    cache_dir = one("ConfigMap", "gridsweep")["data"]["GRIDSWEEP_DATA_CACHE_DIR"]
    for key, spec in pod_specs().items():
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, key  # numeric: the image's USER is a name
        assert spec["automountServiceAccountToken"] is False, key
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False, key
            assert csc["capabilities"]["drop"] == ["ALL"], key
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], key
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] in empty_dirs, key  # the only writable places are emptyDirs
            if "worker" in key:
                assert mounts[cache_dir] in empty_dirs, key


def test_secrets_are_referenced_never_written_out() -> None:
    for name, docs in manifests().items():
        for d in docs:
            assert d["kind"] != "Secret", f"{name}: a Secret is applied"
            assert literal_secrets(d) == [], name
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    refs = set()
    for c in containers().values():
        for e in c.get("env", []):
            if SECRETISH.search(e["name"]):
                ref = e["valueFrom"]["secretKeyRef"]
                refs.add((ref["name"], ref["key"]))
    assert refs == {("gridsweep", "database-url"), ("gridsweep", "worker-token")}
    assert {(example["metadata"]["name"], k) for k in example["stringData"]} == refs
    # The check itself can fail: a literal token, a password in a URL, a secret in a ConfigMap.
    planted = {"env": [{"name": "GRIDSWEEP_TOKEN", "value": "gsw_x"}], "x": "postgresql://u:pw@h/db"}
    assert len(literal_secrets(planted)) == 2
    assert literal_secrets({"kind": "ConfigMap", "data": {"GRIDSWEEP_DATABASE_URL": "x"}})


def policy_for(component: str) -> dict[str, Any]:
    (p,) = [
        p
        for p in objects("NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == component
    ]
    return p["spec"]


def test_network_policies_workers_reach_only_the_api_and_only_the_api_reaches_postgres() -> None:
    (deny,) = [p for p in objects("NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny["spec"]
    api_labels = one("Deployment", "gridsweep-api")["spec"]["template"]["metadata"]["labels"]
    workers = policy_for("worker")
    assert workers["ingress"] == [] and set(workers["policyTypes"]) == {"Ingress", "Egress"}
    for rule in workers["egress"]:
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        (peer,) = rule["to"]
        if ports == {("TCP", 8000)}:
            assert peer == {"podSelector": {"matchLabels": api_labels}}
        else:
            assert ports == {("UDP", 53), ("TCP", 53)} and peer["podSelector"]["matchLabels"] == {
                "k8s-app": "kube-dns"
            }
    assert policy_for("api")["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    to_postgres = {
        p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        for p in objects("NetworkPolicy")
        for rule in p["spec"].get("egress", [])
        if any(port["port"] == 5432 for port in rule.get("ports", []))
    }
    assert to_postgres == {"api", "migrate"}
    # Every gridsweep pod is selected by a policy of its own component.
    for d in objects():
        spec = d.get("spec", {})
        template = spec.get("jobTargetRef", spec).get("template")
        if template is not None:
            assert policy_for(template["metadata"]["labels"]["app.kubernetes.io/component"])


def test_grace_periods_fit_the_workers_stop() -> None:
    specs = pod_specs()
    cpu = specs["Deployment/gridsweep-worker-cpu"]["terminationGracePeriodSeconds"]
    gpu = specs["ScaledJob/gridsweep-worker-gpu"]["terminationGracePeriodSeconds"]
    assert cpu >= WORKER_STOP_SECONDS and gpu >= cpu
    # Slurm's warning before the time limit gives the worker at least as long as Kubernetes does.
    signal = sbatch_directives()["signal"]
    assert int(signal.split("@")[1]) >= gpu


# --- Slurm -----------------------------------------------------------------------------------


def sbatch_directives() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?", SBATCH.read_text(), re.M):
        out[m.group(1)] = m.group(2) or ""
    return out


def test_sbatch_script_is_valid_bash_with_the_directives_it_needs() -> None:
    r = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = sbatch_directives()
    assert re.fullmatch(r"0-\d+%\d+", d["array"])
    assert d["gres"] == "gpu:1" and d["signal"].startswith("B:TERM@") and "requeue" in d
    text = SBATCH.read_text()
    assert re.search(r"^trap '[^']*' TERM$", text, re.M)
    (line,) = [ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip().startswith("gridsweep ")]
    args = shlex.split(line.split("&")[0])[1:]
    # The script's variables, with values of their kind, for the real CLI to parse.
    values = {
        "$GRIDSWEEP_SERVER": "https://gridsweep.example.org",
        "$device": "cuda",
        "$name": "w",
        "$idle": "300",
    }
    assert resolve([values.get(a, a) for a in args]).name == "worker"
    assert (
        args[args.index("--exit-when-idle") + 1] == "$idle" and args[args.index("--device") + 1] == "$device"
    )
    assert 'idle="${GRIDSWEEP_EXIT_WHEN_IDLE:-300}"' in text and 'device="${GRIDSWEEP_DEVICE:-cuda}"' in text
    assert not re.search(r"^#SBATCH .*--export", text, re.M)


def test_sbatch_script_passes_shellcheck() -> None:
    # scripts/system-deps.sh installs it: a skip outside CI only, a failure in CI.
    require(shutil.which("shellcheck") is not None, "shellcheck")
    r = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
