"""The package's shape: no import cycle between its modules.

A cycle makes import order matter (a module half-initialised when its partner reads it) and ties
two concepts together so that neither can change alone. Only imports that run when a module is
loaded count: those under ``if TYPE_CHECKING:`` and those inside functions (a deliberate, lazy
edge) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "taskswarm"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _load_time_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports in the module's body (and its top-level try blocks), not type-checking ones."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        block = node.body if isinstance(node, ast.Try) else [node]
        found += [n for n in block if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports when loaded."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _load_time_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.level:
                    target = node.module or ""
                # ``from . import pickling`` names a module; ``from .x import y`` its module.
                targets = [
                    f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                    for alias in node.names
                ]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "taskswarm.protocol.codec" in graph["taskswarm.master.node"]
    assert (
        "taskswarm.protocol.pickling" in graph["taskswarm.client.application"]
    )  # from .. import pickling


def test_no_import_cycle_between_the_packages_modules():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
