"""The layering rules, checked on the import graph (every import, module-level or inside a function).

* ``prefix_rft`` (the library) imports nothing of ``steps``, ``flows`` or ``metaflow``, and ``mlflow``
  only in ``prefix_rft.io.tracking``;
* ``steps`` imports nothing of ``flows``;
* no import cycle inside ``prefix_rft`` (importing ``a.b.c`` runs ``a/__init__`` and ``a.b/__init__``
  first, so those count as imported too).

The checker is tried on a small planted tree first, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKING_MODULE = "prefix_rft.io.tracking"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """Every module `path` imports; `from pkg import name` counts as `pkg.name` when that is a
    module (pkg itself then runs as its parent), else as `pkg`."""
    module = module_name(path, root)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            for a in node.names:  # a submodule, or a name the package's __init__ defines
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return out


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(root: Path, packages: tuple[str, ...]) -> nx.DiGraph:
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    known = {module_name(p, root) for p in files}
    graph = nx.DiGraph()
    for path in files:
        src = module_name(path, root)
        graph.add_node(src, path=str(path.relative_to(root)))
        for target in imports_of(path, root, known):
            for name in _with_parents(target):
                # a package's own ancestors are already imported when it runs: only an explicit
                # import of one (`from prefix_rft.data import x` inside prefix_rft.data.problem)
                # is an edge
                implicit_ancestor = name != target and src.startswith(name + ".")
                if name != src and not implicit_ancestor:
                    graph.add_edge(src, name)
    return graph


def violations(root: Path) -> list[str]:
    graph = import_graph(root, ("prefix_rft", "steps", "flows"))
    found = []
    for src, dst in sorted(graph.edges):
        top_src, top_dst = src.split(".")[0], dst.split(".")[0]
        if top_src == "prefix_rft" and top_dst in ("steps", "flows", "metaflow"):
            found.append(f"{src} imports {dst} (the library knows nothing of the pipeline)")
        if top_src == "prefix_rft" and top_dst == "mlflow" and src != TRACKING_MODULE:
            found.append(f"{src} imports {dst} (only {TRACKING_MODULE} talks to MLflow)")
        if top_src == "steps" and top_dst == "flows":
            found.append(f"{src} imports {dst} (steps run without the flow)")
    library = graph.subgraph(n for n in graph if n.split(".")[0] == "prefix_rft" and "path" in graph.nodes[n])
    for cycle in sorted(sorted(c) for c in nx.strongly_connected_components(library) if len(c) > 1):
        found.append("import cycle: " + " <-> ".join(cycle))
    return found


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_planted_violations(tmp_path):
    _plant(tmp_path, {
        "prefix_rft/__init__.py": "",
        "prefix_rft/io/__init__.py": "",
        "prefix_rft/io/tracking.py": "import mlflow\n",
        "prefix_rft/a.py": "from prefix_rft import b\n",
        "prefix_rft/b.py": "def f():\n    from .a import g  # lazy, still a cycle\n",
        "prefix_rft/c.py": "import mlflow.tracking\nfrom metaflow import FlowSpec\n",
        "prefix_rft/d.py": "def f():\n    from steps.train import train_epoch\n",
        "steps/__init__.py": "",
        "steps/train.py": "from flows import prefix_rft_flow\nfrom prefix_rft.io import tracking\n",
        "flows/prefix_rft_flow.py": "import steps.train\n",
    })
    assert violations(tmp_path) == [
        "prefix_rft.c imports metaflow (the library knows nothing of the pipeline)",
        "prefix_rft.c imports mlflow (only prefix_rft.io.tracking talks to MLflow)",
        "prefix_rft.c imports mlflow.tracking (only prefix_rft.io.tracking talks to MLflow)",
        "prefix_rft.d imports steps (the library knows nothing of the pipeline)",
        "prefix_rft.d imports steps.train (the library knows nothing of the pipeline)",
        "steps.train imports flows (steps run without the flow)",
        "steps.train imports flows.prefix_rft_flow (steps run without the flow)",
        "import cycle: prefix_rft.a <-> prefix_rft.b",
    ]


def test_import_of_the_own_package_counts(tmp_path):
    _plant(tmp_path, {
        "prefix_rft/__init__.py": "",
        "prefix_rft/data/__init__.py": "from prefix_rft.data.problem import Problem\n",
        "prefix_rft/data/problem.py": "def f():\n    from prefix_rft.data import read\n",
        "prefix_rft/data/other.py": "from prefix_rft.data import readers  # a submodule: no cycle\n",
        "prefix_rft/data/readers.py": "",
    })
    assert violations(tmp_path) == ["import cycle: prefix_rft.data <-> prefix_rft.data.problem"]


def test_package_import_counts_its_parents(tmp_path):
    _plant(tmp_path, {
        "prefix_rft/__init__.py": "",
        "prefix_rft/x/__init__.py": "from prefix_rft.y.z import f\n",
        "prefix_rft/y/__init__.py": "from prefix_rft.x import g\n",
        "prefix_rft/y/z.py": "",
    })
    assert violations(tmp_path) == ["import cycle: prefix_rft.x <-> prefix_rft.y"]


@pytest.mark.parametrize("rule", ["layers", "cycles"])
def test_repository_follows_the_layering(rule):
    found = violations(ROOT)
    found = [v for v in found if v.startswith("import cycle")] if rule == "cycles" else \
        [v for v in found if not v.startswith("import cycle")]
    assert found == []


def test_every_library_module_is_in_the_graph():
    graph = import_graph(ROOT, ("prefix_rft",))
    assert {"prefix_rft.io.tracking", "prefix_rft.train.trainer", "prefix_rft.core.config"} <= set(graph)
    assert TRACKING_MODULE in {src for src, dst in graph.edges if dst == "mlflow"}


def _imported_names(root: Path, folders: tuple[str, ...]):
    """(file, line, module, name) for every `from prefix_rft... import name` / `from steps...`,
    lazy ones included, in the repository's Python files."""
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module \
                        and node.module.split(".")[0] in ("prefix_rft", "steps"):
                    for alias in node.names:
                        yield path.relative_to(root), node.lineno, node.module, alias.name


def test_every_imported_name_exists():
    """A moved or renamed function leaves no import behind, not even one inside a function that
    only runs on a GPU machine or in a rarely used path."""
    import importlib
    import importlib.util

    missing = []
    for rel, line, module, name in _imported_names(ROOT, ("prefix_rft", "steps", "flows", "tests",
                                                          "perf", "studies", "notebooks", "infra")):
        mod = importlib.import_module(module)
        is_package = hasattr(mod, "__path__")
        if not hasattr(mod, name) and not (
                is_package and importlib.util.find_spec(f"{module}.{name}") is not None):
            missing.append(f"{rel}:{line}: from {module} import {name}")
    assert missing == []


CPU_ONLY_STEPS = ("steps.start", "steps.data", "steps.evaluate", "steps.finish")


def _imports_without_torch(module: str) -> subprocess.CompletedProcess:
    code = ("import sys\nsys.modules['torch'] = sys.modules['transformers'] = None\n"
            f"import {module}\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


@pytest.mark.parametrize("module", CPU_ONLY_STEPS)
def test_cpu_only_steps_import_neither_torch_nor_transformers(module):
    """The flow's CPU-only steps (start, filter_data, plan_eval, join_eval, end) import these
    modules; torch alone costs each such task ~2.5 s of a ~5 s start on 2 cores, on every run.
    (That their work at run time imports no torch either was measured once, with
    PYTHONPROFILEIMPORTTIME, not tested: docs/PERFORMANCE.md, "The test suite and the flow's
    task start".)"""
    r = _imports_without_torch(module)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_torch_block_is_felt():
    r = _imports_without_torch("steps.train")
    assert r.returncode != 0 and "import of torch halted" in r.stderr
