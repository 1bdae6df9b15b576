"""The package layout holds: which package may import which, and no two files import each other.

The arrows (README, "Layout"):

* ``gridsweep/`` imports nothing of the project (and no torch: it is the torch-free core);
* ``worker/`` imports ``gridsweep/`` only;
* ``app/`` outside ``app/cli/`` imports ``gridsweep/``, never ``worker/``;
* ``app/cli/`` may import anything (it starts workers and loads models);
* no import cycle between files, function-level (late) imports included.

Read with ``ast`` from the source files: nothing is imported to check it.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gridsweep", "app", "worker")


def module_name(path: Path) -> str:
    if not path.is_relative_to(ROOT):
        return path.stem  # a file outside the project (the checks' own probe)
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports (at any depth of the file), resolved to files.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``;
    an import of a package's submodule does not count as importing the package's
    ``__init__`` (Python runs it, but that is the package's doing, not a dependency).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


@dataclasses.dataclass(frozen=True)
class Graph:
    edges: dict[str, set[str]]

    @classmethod
    def build(cls) -> Graph:
        modules = project_files()
        return cls({m: imported_modules(p, modules) for m, p in modules.items()})


def top(module: str) -> str:
    return module.split(".")[0]


def layer_violations(graph: Graph) -> list[str]:
    bad = []
    for src, targets in graph.edges.items():
        for dst in targets:
            if top(src) == "gridsweep" and top(dst) != "gridsweep":
                bad.append(f"{src} -> {dst}: gridsweep/ imports nothing of the project")
            elif top(src) == "worker" and top(dst) == "app":
                bad.append(f"{src} -> {dst}: worker/ imports gridsweep/ only")
            elif top(src) == "app" and not src.startswith("app.cli") and top(dst) == "worker":
                bad.append(f"{src} -> {dst}: app/ outside app/cli/ never imports worker/")
    return sorted(bad)


def cycles(graph: Graph) -> list[list[str]]:
    """Every strongly connected component of more than one file (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph.edges):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_arrows_hold() -> None:
    assert layer_violations(Graph.build()) == []


def test_no_two_files_import_each_other() -> None:
    assert cycles(Graph.build()) == []


def test_gridsweep_core_is_torch_free() -> None:
    heavy = ("torch", "sqlalchemy", "fastapi", "uvicorn")
    found = []
    for path in sorted((ROOT / "gridsweep").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert found == []


def test_the_checks_catch_what_they_claim() -> None:
    """A graph with a forbidden arrow and a two-file loop is reported (the checks can fail)."""
    g = Graph(
        {
            "gridsweep.vocab": {"app.spec"},
            "worker.loop": {"worker.pack_runner", "app.config"},
            "worker.pack_runner": {"worker.loop"},
            "app.services.sweeps": {"worker.train"},
            "app.cli.main": {"worker.loop"},
        }
    )
    assert [v.split(":")[0] for v in layer_violations(g)] == [
        "app.services.sweeps -> worker.train",
        "gridsweep.vocab -> app.spec",
        "worker.loop -> app.config",
    ]
    assert cycles(g) == [["worker.loop", "worker.pack_runner"]]


def test_late_and_relative_imports_are_seen(tmp_path: Path) -> None:
    modules = project_files()
    src = tmp_path / "probe.py"
    src.write_text("def f():\n    from worker.loop import Worker\n    import app.spec\n")
    assert imported_modules(src, modules) >= {"worker.loop", "app.spec"}


@pytest.mark.parametrize("field", ["trial_id", "lease_token", "params", "split", "upload_model"])
def test_claim_mirrors_the_api_schema(field: str) -> None:
    """The worker's typed claim and the API's ClaimedTrial have the same fields and defaults."""
    from app.schemas import ClaimedTrial
    from gridsweep.claims import Claim

    api = ClaimedTrial.model_fields
    ours = {f.name: f for f in dataclasses.fields(Claim)}
    assert set(api) == set(ours)
    assert field in ours
    for name, f in ours.items():
        required = f.default is dataclasses.MISSING
        assert required == api[name].is_required(), name
