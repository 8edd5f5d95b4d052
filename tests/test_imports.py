"""The layering rules, checked on the source text (AST only: no module is imported or executed).

- `schemas` imports nothing of ours: it is the contract every other layer reads.
- `minmo` (algorithms, model, trainer) never imports `pipelines` (the Ray steps), except the CLI
  package that dispatches to the steps (`minmo/cli/`).
- The library never imports its test doubles (`minmo.testing`).
- No import cycles among our modules, counting module-level imports (the graph a reader follows).
- An import of our own modules inside a function hides a dependency from the reader; it is
  allowed only for a heavy optional dependency, and then the line (or the one above) says why in
  a comment.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minmo", "pipelines", "schemas")
CLI_MODULES = ("minmo.cli",)  # the module, or the package and everything below it


@dataclass(frozen=True)
class Edge:
    """One import statement of one of our modules, as written in `source`."""

    source: str  # importing module, dotted
    target: str  # imported module, dotted (the most specific module that exists)
    path: Path
    line: int
    deferred: bool  # inside a function or class body, not at module level
    commented: bool  # a `#` comment on the line or the line above


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """(statement, deferred) for every import; `if TYPE_CHECKING:` blocks are left out (they
    never run, so they neither defer nor cycle)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, deferred))
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            visit(child, deferred or inner)

    visit(tree, False)
    return found


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """Our modules a statement loads: `from a.b import c` is `a.b.c` when that is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level or not node.module:
        return []  # relative imports: none in this project
    else:
        names = [
            f"{node.module}.{alias.name}"
            if f"{node.module}.{alias.name}" in modules
            else node.module
            for alias in node.names
        ]
    return sorted({name for name in names if name.split(".")[0] in PACKAGES})


def _edges() -> list[Edge]:
    modules = _modules()
    edges = []
    for name, path in sorted(modules.items()):
        lines = path.read_text().splitlines()
        for node, deferred in _imports(ast.parse("\n".join(lines), filename=str(path))):
            near = lines[max(0, node.lineno - 2) : node.lineno]
            commented = any("#" in line for line in near)
            for target in _targets(node, modules):
                edges.append(Edge(name, target, path, node.lineno, deferred, commented))
    return edges


def _where(edge: Edge) -> str:
    return f"{edge.path.relative_to(ROOT)}:{edge.line} {edge.source} -> {edge.target}"


def _is_cli(module: str) -> bool:
    return any(module == cli or module.startswith(cli + ".") for cli in CLI_MODULES)


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of the module-level graph with more than one module
    (Tarjan's algorithm), each sorted: every module in one can reach every other."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.deferred and edge.source != edge.target:
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return _edges()


def test_schemas_imports_nothing_of_ours(edges: list[Edge]) -> None:
    bad = [_where(e) for e in edges if e.source.startswith("schemas") and e.target[:7] != "schemas"]
    assert not bad, "schemas must import only stdlib, pyarrow and numpy:\n" + "\n".join(bad)


def test_minmo_never_imports_pipelines(edges: list[Edge]) -> None:
    bad = [
        _where(e)
        for e in edges
        if e.source.startswith("minmo") and not _is_cli(e.source) and e.target[:9] == "pipelines"
    ]
    assert not bad, "minmo must not import the steps (only the CLI package may):\n" + "\n".join(bad)


def test_the_library_never_imports_its_test_doubles(edges: list[Edge]) -> None:
    bad = [
        _where(e)
        for e in edges
        if e.target.startswith("minmo.testing") and not e.source.startswith("minmo.testing")
    ]
    assert not bad, "minmo.testing is for tests and benches only:\n" + "\n".join(bad)


def test_no_import_cycles(edges: list[Edge]) -> None:
    cycles = _cycles(edges)
    assert not cycles, "import cycles among module-level imports:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_deferred_imports_are_commented(edges: list[Edge]) -> None:
    bad = [_where(e) for e in edges if e.deferred and not e.commented]
    assert not bad, (
        "imports of our own modules inside functions: move them to the top (fix the cycle), or "
        "for a heavy optional dependency say why in a comment on or above the line:\n"
        + "\n".join(bad)
    )


def test_the_checker_sees_cycles_and_deferred_imports() -> None:
    """The rules above pass vacuously if the walker finds nothing; pin that it finds things."""
    tree = ast.parse(
        "import minmo.a\n"
        "def f():\n"
        "    # optional and heavy\n"
        "    import minmo.b\n"
        "    import minmo.c\n"
        "if TYPE_CHECKING:\n"
        "    import minmo.d\n"
    )
    found = [(node.names[0].name, deferred) for node, deferred in _imports(tree)]
    assert found == [("minmo.a", False), ("minmo.b", True), ("minmo.c", True)]
    loop = [Edge(a, b, ROOT, 1, False, False) for a, b in [("x", "y"), ("y", "z"), ("z", "x")]]
    assert _cycles([*loop, Edge("z", "w", ROOT, 1, False, False)]) == [["x", "y", "z"]]
