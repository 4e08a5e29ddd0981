"""The tree's architecture, as the package docstrings state it, read from the code's imports.

Every ``import`` of spendgate's own modules (lazy ones inside functions included) is an
edge. The tests hold: no cycle between modules or between subpackages, and each stage of
the flow imports only what its ``__init__`` docstring allows (``ALLOWED``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.sourcetree import package_dirs
from tests.conftest import ROOT

# Modules every stage may use: the shared vocabulary at the top of the package.
SHARED = {"spendgate", "spendgate.config", "spendgate.errors", "spendgate.records",
          "spendgate.usage", "spendgate.money", "spendgate.labels", "spendgate.asgi",
          "spendgate.redact", "spendgate.selectors", "spendgate.tags"}
# Stage -> the other stages it may import (besides SHARED); see each package's __init__.
ALLOWED: dict[str, set[str]] = {
    "spendgate.upstream": set(),
    "spendgate.providers": set(),
    "spendgate.hotpath": {"spendgate.providers", "spendgate.upstream"},
    "spendgate.accounting": {"spendgate.providers", "spendgate.exporters.base",
                             "spendgate.exporters.exact"},
    "spendgate.budgets": {"spendgate.accounting", "spendgate.providers",
                          "spendgate.exporters.base"},
    "spendgate.exporters": set(),
    "spendgate.admin": {"spendgate.budgets"},
    "spendgate.demo": {"spendgate.providers", "spendgate.accounting"},
    # Beside the flow: the provider's bill against the ledger (its command opens the store).
    "spendgate.reconcile": {"spendgate.budgets"},
    # Rate limits: counted in the budget store, estimated as budget reservations are.
    "spendgate.limits": {"spendgate.budgets", "spendgate.accounting", "spendgate.providers",
                         "spendgate.exporters.base"},
}


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the source directories."""
    found: dict[str, Path] = {}
    for package, where in package_dirs(ROOT).items():
        for path in where.rglob("*.py"):
            parts = list(path.relative_to(where).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if name not in found:  # spendgate/exporters is its own mapping, not service/
                found[name] = path
    return found


def own_imports(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The spendgate modules ``path`` (module ``name``) imports, resolved to known modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("spendgate") and target != name:
                yield target


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(own_imports(path, name, known)) for name, path in found.items()}


def stage(module: str) -> str:
    """The stage (subpackage) a module belongs to, or the top-level module itself."""
    top = ".".join(module.split(".")[:2])
    return top if top in ALLOWED else module


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    assert "spendgate.hotpath.proxy" in graph and "spendgate.exporters.prometheus" in graph
    assert "spendgate.upstream.client" in graph["spendgate.hotpath.proxy"]
    assert "spendgate.budgets.store.sqlite" in graph["spendgate.budgets.store"]  # a lazy import


def test_no_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_no_cycle_between_stages(graph: dict[str, set[str]]) -> None:
    stages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = stage(module)
        stages.setdefault(here, set()).update(stage(t) for t in targets if stage(t) != here)
    assert cycles(stages) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_stage_imports_only_what_it_may(graph: dict[str, set[str]], package: str) -> None:
    stages = ALLOWED[package] | {package}
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items()
                   if module == package or module.startswith(package + ".")
                   for target in targets if target not in SHARED
                   and not any(target == s or target.startswith(s + ".") for s in stages))
    assert wrong == []


def test_only_the_composition_root_and_cli_reach_every_stage(graph: dict[str, set[str]]) -> None:
    wide = {module for module, targets in graph.items()
            if {"spendgate.hotpath", "spendgate.accounting", "spendgate.budgets"}
            <= {stage(t) for t in targets}}
    assert wide == {"spendgate.app"}
