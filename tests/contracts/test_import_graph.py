"""The package map of docs/DESIGN.md as a checked fact: no import circle between the project's modules
(imports inside functions count: a lazy import only hides a circle), and the layering rule
(`nats_model` imports nothing from the services; `services` nothing from the orchestrator or the
dashboard; the dashboard reads the store, never the engine or the orchestrator)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nats_model", "services", "orchestrator", "dashboard")
FORBIDDEN = {"nats_model": ("services", "orchestrator", "dashboard"),
             "services": ("orchestrator", "dashboard"),
             "dashboard": ("orchestrator", "nats_model")}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imported(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports (`from a import b` gives a and a.b), relative ones resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports. A module importing its own package (or a package
    its submodules, the usual `__init__` re-export) is not an edge of the map."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        targets = {owner(n) for n in _imported(mod, path)} - {None, mod}
        graph[mod] = {t for t in targets if not mod.startswith(t + ".") and not t.startswith(mod + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_circle_finder_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_imports():
    graph = import_graph()
    # orchestrator.plan imports services.store inside a function (run_key): that edge is in the graph
    assert "services.store" in graph["orchestrator.plan"]
    assert "orchestrator.spec" in graph["orchestrator.plan"]


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    bad = sorted(f"{mod} imports {target}" for mod, targets in import_graph().items()
                 if mod.split(".")[0] == package for target in targets
                 if target.split(".")[0] in FORBIDDEN[package])
    assert not bad, "; ".join(bad)
