"""The package's shape: no import cycles, no private names across modules, readable sizes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fidelity"


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, modules) -> list[tuple[str, list[str]]]:
    """Every import of a package module anywhere in ``tree`` (functions included): the module
    imported and the names taken from it."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:                 # from .mod import a, b
                out.append((node.module.split(".")[0], [a.name for a in node.names]))
            elif node.level == 1:                               # from . import mod
                out += [(a.name, []) for a in node.names if a.name in modules]
            elif node.module and node.module.split(".")[0] == "fidelity":
                parts = node.module.split(".")
                if len(parts) > 1:
                    out.append((parts[1], [a.name for a in node.names]))
                else:
                    out += [(a.name, []) for a in node.names if a.name in modules]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "fidelity" and len(parts) > 1:
                    out.append((parts[1], []))
    return [(m, names) for m, names in out if m in modules]


def _graph():
    modules = _modules()
    return modules, {name: sorted({m for m, _ in _imports(tree, modules)} - {name})
                     for name, tree in modules.items()}


def _cycle(graph) -> list[str]:
    """One import cycle of ``graph`` (module -> modules it imports), or []."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return []

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_no_import_cycle_inside_the_package():
    _, graph = _graph()
    assert _cycle(graph) == []


def test_no_private_name_imported_across_modules():
    modules = _modules()
    bad = []
    for name, tree in modules.items():
        for mod, names in _imports(tree, modules):
            bad += [f"{name} imports {mod}.{n}" for n in names if n.startswith("_")]
        imported = {a.asname or a.name for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module
                    for a in node.names}
        for node in ast.walk(tree):   # mod._name through "from . import mod"
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{name} uses {node.value.id}.{node.attr}")
    assert bad == []


def _span(node) -> int:
    return node.end_lineno - node.lineno + 1


def test_no_class_a_reader_must_hold_whole():
    sizes = {f"{name}.{node.name}": _span(node) for name, tree in _modules().items()
             for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert max(sizes.values()) <= 300, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("module,function,limit", [("pipeline", "_drive", 150),
                                                   ("pipeline", "extract", 150)])
def test_the_driver_reads_on_a_screen_or_two(module, function, limit):
    tree = _modules()[module]
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    assert found, f"{module}.{function} is gone"
    body = found[0]
    doc = ast.get_docstring(body)
    lines = _span(body) - (0 if doc is None else doc.count("\n") + 1)
    assert lines <= limit
