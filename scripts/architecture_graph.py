"""The import graph of ``relmon/`` and its picture, ``docs/architecture.png``.

``import_graph()`` reads every ``import`` statement of the package with ``ast`` (module level and in
functions; ``if TYPE_CHECKING:`` blocks left out, they never run); ``tests/test_import_graph.py`` checks
it (no cycle, the core never imports the edge). Run as a script, it draws the graph of the package's
parts (a sub-package is one node) in layers: a part sits one layer above the highest part it imports,
so every arrow points down; an import already implied by a path of arrows is not drawn.

    python scripts/architecture_graph.py [--out docs/architecture.png]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "relmon"

#: What a user embeds in their own code (torch, zennit, pandas; no reader, no job, no Lightning).
CORE = ("relmon.explain", "relmon.perturbation", "relmon.complexity", "relmon.metrics", "relmon.scoring",
        "relmon.sums", "relmon.preprocessing", "relmon.identity", "relmon.interrupts")
#: Built on the core: data readers, model loading, jobs, CLI, exporters, reports, Lightning.
EDGE = ("relmon.data", "relmon.models.loading", "relmon.jobs", "relmon.cli", "relmon.export", "relmon.report",
        "relmon.lightning")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def within(name: str, prefixes) -> bool:
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


def part_of(module: str) -> str:
    """The node a module is drawn in: ``relmon.<part>`` (``relmon.models.loading`` kept apart: edge)."""
    if within(module, ("relmon.models.loading",)):
        return "relmon.models.loading"
    return ".".join(module.split(".")[:2])


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between parts (``relmon`` itself, the lazy top-level names, left out)."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == "relmon" or module == "relmon.__main__":
            continue
        src = part_of(module)
        out.setdefault(src, set())
        # a sub-part's own package is imported by Python before it, not by its code: no arrow
        out[src].update(part_of(t) for t in targets
                        if t != "relmon" and part_of(t) != src and not src.startswith(part_of(t) + "."))
    return out


def reduced(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The transitive reduction: ``a -> b`` left out where ``a`` reaches ``b`` through another part."""

    def reach(node: str) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return {a: {b for b in targets if not any(b in reach(c) for c in targets if c != b)}
            for a, targets in graph.items()}


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Layer of each node: 0 for a node that imports no part, else one above the highest it imports
    (the graph has no cycle: ``tests/test_import_graph.py``)."""
    memo: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in memo:
            memo[node] = 0  # a cycle would stop here instead of recursing forever
            memo[node] = 1 + max((depth(t) for t in graph.get(node, ())), default=-1)
        return memo[node]

    for node in graph:
        depth(node)
    return memo


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graph = part_graph(import_graph())
    level = layers(graph)
    rows: dict[int, list[str]] = {}
    for node in sorted(graph, key=lambda n: (level[n], n)):
        rows.setdefault(level[node], []).append(node)
    width = max(len(r) for r in rows.values())
    pos = {}
    for lv, nodes in rows.items():
        for i, node in enumerate(nodes):
            pos[node] = ((i + 0.5) * width / len(nodes), lv)
    fig, ax = plt.subplots(figsize=(2.1 * width + 1, 1.3 * len(rows) + 1))
    for src, targets in reduced(graph).items():
        for dst in targets:
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                        arrowprops=dict(arrowstyle="->", color="0.6", lw=0.7, shrinkA=2, shrinkB=2))
    for node, (x, y) in pos.items():
        core = within(node, CORE)
        edge = within(node, EDGE)
        colour = "#cfe8cf" if core else "#f6d5c8" if edge else "#dde3f0"
        ax.text(x, y, node.removeprefix("relmon."), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.35", fc=colour, ec="0.4"))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.6, max(rows) + 0.6)
    ax.axis("off")
    ax.set_title("relmon: who imports whom (an arrow points to the imported part; an import implied by a\n"
                 "path of arrows is not drawn; green: core, orange: edge, blue: shared)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE.parent / "docs" / "architecture.png")
    args = parser.parse_args(argv)
    print(draw(args.out))


if __name__ == "__main__":
    main()
