"""The shape of ``broker/``: no import circle, counting every import a module can run.

The import graph is built from the source with ``ast``: imports at module level and inside functions (the
lazy imports of the CLI and the app), but not those under ``if TYPE_CHECKING:``, which never run. ``from
package import name`` counts as an import of ``package.name`` when that is a module, else of ``package``.
A circle means two modules cannot be understood (or imported) one without the other; the test prints each.
"""

from __future__ import annotations

import ast
from pathlib import Path

BROKER = Path(__file__).resolve().parent.parent / "broker"

# Circles that are known, each with why it is allowed for now and what ends it.
ALLOWED: dict[frozenset[str], str] = {
    frozenset({"broker.web.discovery", "broker.web.portal"}): (
        "sign-in pages: the portal's /login hands over to home realm discovery, which renders the portal's "
        "sign-in page and uses its cookie helpers; ends when the sign-in handlers share one cookie module "
        "(the sign-in rewrite owns both files)"
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(BROKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(BROKER.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            graph[name] |= {target for target in targets if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_path(graph, component) for component in components]


def _path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, e.g. ``a -> b -> a``."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return sorted(component)


def test_the_graph_sees_function_level_imports() -> None:
    """The CLI imports the server stack inside its commands: those edges are in the graph."""
    graph = import_graph()
    assert "broker.services" in graph["broker.cli.options"]
    assert "broker.cli.options" in graph["broker.cli.admin"]


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_circle_in_broker() -> None:
    found = [cycle for cycle in cycles(import_graph()) if frozenset(cycle) not in ALLOWED]
    assert not found, "import circles in broker/:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
