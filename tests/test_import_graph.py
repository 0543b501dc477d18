"""The import graph of ``relmon/`` (built with ``ast``: module-level and in-function imports): no
cycle, and the core never imports the edge.

The core (explanations, perturbation, complexity, metrics, the batch scorer, preprocessing) is what a
user embeds in their own code; the edge (data readers, model loading, jobs, CLI, exporters, reports,
Lightning) is built on it. ``import relmon.perturbation`` must not load a dataset reader.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relmon"

CORE = ("relmon.explain", "relmon.perturbation", "relmon.complexity", "relmon.metrics", "relmon.scoring",
        "relmon.preprocessing", "relmon.identity")
EDGE = ("relmon.data", "relmon.models.loading", "relmon.jobs", "relmon.cli", "relmon.export", "relmon.report",
        "relmon.lightning")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, every ``import`` statement anywhere in the file
    (module level, in functions, under ``TYPE_CHECKING`` excluded: those never run)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = set()
        for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are for the type checker only
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for b in node.body for n in ast.walk(b))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from relmon.x import y` imports relmon.x.y when y is a submodule, else relmon.x
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in files:  # `import relmon.a.b` names a module we know
                    target = target.rpartition(".")[0]
                if target.startswith("relmon") and target != name:
                    targets.add(target)
        graph[name] = targets
    # importing relmon.a.b runs relmon/__init__ and relmon/a/__init__ first
    for name in list(graph):
        for target in list(graph[name]):
            parent = target.rpartition(".")[0]
            while parent and parent != "relmon":
                if parent in graph and parent != name and not name.startswith(parent + "."):
                    graph[name].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_relmon_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("core", CORE)
def test_the_core_never_imports_the_edge(core):
    graph = import_graph()
    modules = [m for m in graph if _within(m, (core,))]
    assert modules, core
    for module in modules:
        bad = sorted(m for m in reachable(graph, module) if _within(m, EDGE))
        assert not bad, f"{module} imports the edge (directly or through others): {bad}"


def test_the_graph_sees_module_level_in_function_and_relative_imports(tmp_path):
    """On a constructed package: a cycle through an in-function import is found; TYPE_CHECKING is not."""
    pkg = tmp_path / "relmon"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from relmon.b import g\n    return g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import relmon.c\n"
                              "import relmon.sub.a as a\n")
    (pkg / "c.py").write_text("import relmon.b\n")
    graph = import_graph(pkg)
    assert graph["relmon.sub"] == {"relmon.sub.a"}
    assert graph["relmon.sub.a"] == {"relmon.b"}
    assert graph["relmon.b"] == {"relmon.sub.a", "relmon.sub"}
    assert graph["relmon.c"] == {"relmon.b"}
    assert find_cycle(graph) == ["relmon.b", "relmon.sub", "relmon.sub.a", "relmon.b"]
    (pkg / "sub" / "a.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("module", ["relmon.perturbation", "relmon.explain", "relmon.scoring", "relmon.preprocessing"])
def test_importing_the_core_loads_no_dataset_reader_and_no_model_loading(module):
    """At run time too (``relmon.Preprocessing`` included): no relmon.data, relmon.models.loading or jobs."""
    code = (f"import sys, relmon, {module}; relmon.Preprocessing; "
            "print(sorted(m for m in sys.modules if m.startswith(('relmon.data', 'relmon.models', 'relmon.jobs'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
