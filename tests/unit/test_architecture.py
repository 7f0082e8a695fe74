"""The package's shape: dependencies point one way (app -> workflows -> core), the import graph
has no cycle, and importing the package changes nothing in the process (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "landscape"

# Every module of the package, by layer. A module may import its own layer and the ones below.
CORE = {
    "config", "data", "models", "norms", "bn_math", "probe", "curvature", "ics", "activations",
    "surfaces", "surface_records", "mesh", "train", "sharding", "checkpoints", "results",
    "summary", "progress", "network", "equinox_network", "plugins", "user_data", "files",
    "trajectory", "dataset", "archives", "cifar", "image_folders", "mnist", "step_records",
}  # fmt: skip
WORKFLOWS = {
    "rundir", "runs", "analyses", "analyses.hessian", "analyses.ics", "analyses.activations",
    "analyses.pictures", "sweep", "parallel", "experiments", "recorder", "adopt", "plots", "report", "bench",
    "tensorboard", "analyses.trajectory",
} | {f"plots.{p.stem}" for p in (PACKAGE / "plots").glob("*.py") if p.stem != "__init__"}  # fmt: skip
APP = {"app", "app.runtime", "app.worker", "app.cli"} | {
    f"app.cli.{p.stem}" for p in (PACKAGE / "app" / "cli").glob("*.py") if p.stem != "__init__"
}
RANK = {**dict.fromkeys(CORE, 0), **dict.fromkeys(WORKFLOWS, 1), **dict.fromkeys(APP, 2)}
# The façade may name any module lazily; the entry points start the command.
ENTRY = {"", "__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Returns the package modules ``name`` imports anywhere in its file (functions included)."""
    found = set()
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            elif not base.startswith("landscape"):
                continue
            else:
                base = base.removeprefix("landscape").lstrip(".")
            # ``from landscape.app import runtime`` imports the module landscape.app.runtime.
            targets = [f"{base}.{a.name}".strip(".") for a in node.names] + [base]
            found.update(t for t in targets if t in _MODULES)
            continue
        else:
            continue
        found.update(t.removeprefix("landscape.") for t in targets if t.startswith("landscape."))
    found.discard(name)
    return {t for t in found if t in _MODULES}


_MODULES = _modules()


def test_every_module_has_a_layer():
    unplaced = sorted(set(_MODULES) - set(RANK) - ENTRY)
    assert not unplaced, f"add these modules to a layer in this test: {unplaced}"


def test_dependencies_point_from_app_to_workflows_to_core():
    upward = [
        f"{name} ({RANK[name]}) imports {other} ({RANK[other]})"
        for name, path in _MODULES.items()
        if name in RANK
        for other in _imports(name, path)
        if RANK.get(other, -1) > RANK[name]
    ]
    assert not upward, "\n".join(upward)


def test_import_graph_has_no_cycle():
    graph = {name: _imports(name, path) for name, path in _MODULES.items() if name not in ENTRY}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_core_and_workflows_import_the_package_at_module_level_only():
    """An import of the package inside a function is how a cycle hides; the exceptions are the
    ones that keep JAX out of a process that must not start it yet (said in a comment)."""
    allowed = {("sweep", "runs")}  # a parallel sweep's parent plans without starting JAX
    nested = []
    for name, path in _MODULES.items():
        if RANK.get(name, 2) == 2:
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("landscape"):
                    target = node.module.removeprefix("landscape").lstrip(".")
                    if (name, target) not in allowed:
                        nested.append(f"{name}.{func.name} imports {node.module}")
    assert not nested, "\n".join(nested)
