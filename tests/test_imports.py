"""No import cycles, counting imports inside functions: each arrow between bnlab's modules
points one way, so a module can be read (and imported) after the ones it uses. And the layers
the folders show: every arrow points down (engine < measurement < runs < analysis < the
commands at the top), and analysis reads runs' records, never the engine's internals.

An import inside a function hides a cycle from Python (nothing fails at import time) but not
from a reader; only `if TYPE_CHECKING:` blocks, which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _runtime_imports(tree: ast.AST):
    """Every Import/ImportFrom node outside `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _runtime_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def import_graph(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """{module: the modules of these packages it imports anywhere in its code}."""
    files = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {m for m in out if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_bnlab_has_no_import_cycles():
    graph = import_graph(REPO, ["bnlab", "hydra_plugins"])
    assert len(graph) > 30  # the scan found the package
    found = cycles(graph)
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c)
        for c in found
    )


def test_the_scan_finds_a_cycle_hidden_in_a_function_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n"
    )
    (pkg / "d.py").write_text("import pkg.c\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


# bnlab's layers, bottom up; bnlab.errors sits below them all, the modules directly under bnlab/
# (cli, reproduce, confirm: the commands that drive every layer) above them
LAYERS = ("engine", "measurement", "runs", "analysis")
BASE = {"bnlab.errors"}


def layer(module: str) -> int:
    if module in BASE:
        return -1
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up a layer, or from analysis into the engine."""
    return [
        f"{a} -> {b}"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer(b) > layer(a) or (layer(a) == LAYERS.index("analysis") and layer(b) == 0)
    ]


def test_every_import_points_down_a_layer():
    graph = import_graph(REPO, ["bnlab"])
    assert {layer(m) for m in graph} == {-1, 0, 1, 2, 3, 4}  # every layer has modules
    found = upward(graph)
    assert not found, "imports against the layers (TYPE_CHECKING ones aside):\n" + "\n".join(found)


def test_an_upward_import_is_found():
    graph = {
        "bnlab.engine.model": {"bnlab.runs.config", "bnlab.errors"},
        "bnlab.analysis.tables": {"bnlab.engine.norms", "bnlab.runs.records"},
        "bnlab.cli": {"bnlab.analysis.tables"},
    }
    assert upward(graph) == [
        "bnlab.analysis.tables -> bnlab.engine.norms",
        "bnlab.engine.model -> bnlab.runs.config",
    ]
