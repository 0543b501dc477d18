"""The import graph of ``relmon/`` (built with ``ast``: module-level and in-function imports): no
cycle, and the core never imports the edge.

The core (explanations, perturbation, complexity, metrics, the batch scorer, preprocessing) is what a
user embeds in their own code; the edge (data readers, model loading, jobs, CLI, exporters, reports,
Lightning) is built on it. ``import relmon.perturbation`` must not load a dataset reader.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The graph builder and the core/edge lists live in the script that draws docs/architecture.png.
_spec = importlib.util.spec_from_file_location(
    "architecture_graph", Path(__file__).resolve().parents[1] / "scripts" / "architecture_graph.py")
_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_graph)
PACKAGE, CORE, EDGE = _graph.PACKAGE, _graph.CORE, _graph.EDGE
import_graph, _within = _graph.import_graph, _graph.within


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
