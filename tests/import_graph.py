"""liverseg's imports as the source states them, module-level and inside functions (an AST walk; no
liverseg module is imported). ``tests/test_layout.py`` and ``tests/test_inference_package.py`` use it
for what import-linter cannot check: cycles that only a function-level import closes, private names,
and the reason given for an import inside a function."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "liverseg"


@dataclass(frozen=True)
class Import:
    """One liverseg module named by one import statement of another."""

    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool
    names: tuple[str, ...]  # the names a ``from`` import takes from ``imported`` (not submodules)
    implicit: bool  # a package whose ``__init__`` runs because a module below it is imported

    def where(self) -> str:
        place = "inside a function" if self.in_function else "module level"
        return f"{self.path.relative_to(REPO)}:{self.line} ({place})"


@lru_cache(maxsize=None)
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module of liverseg, the package itself included."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _statements(tree: ast.AST):
    """(import statement, inside a function?) for every import in a module."""
    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.Lambda)))
    yield from walk(tree, False)


def _with_packages(name: str) -> list[str]:
    """``liverseg.a.b`` -> the liverseg modules importing it runs: ``liverseg.a``, ``liverseg.a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules()]


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    """Every liverseg module each liverseg module imports, with the packages that run on the way.

    A module's own enclosing packages are already initialised (or initialising) when it runs, so
    importing a sibling does not count as importing the enclosing package; reading a name from that
    package's ``__init__`` (``from .. import name``) does."""
    found = []
    for importer, (path, is_package) in modules().items():
        own_packages = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
        here = importer.split(".") if is_package else importer.split(".")[:-1]
        for node, in_function in _statements(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[tuple[str, tuple[str, ...]]] = []  # (module, names read from it)
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "liverseg"]
            else:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                if base.split(".")[0] != "liverseg":
                    continue
                submodules = [alias.name for alias in node.names if f"{base}.{alias.name}" in modules()]
                names = tuple(alias.name for alias in node.names if alias.name not in submodules)
                targets = [(f"{base}.{name}", ()) for name in submodules] + [(base, names)] * bool(names)
            for target, names in targets:
                run = _with_packages(target) or ([target] if target in modules() else [])
                for module in run:
                    implicit = module != target
                    if module == importer or (module in own_packages and (implicit or not names)):
                        continue
                    found.append(Import(importer, module, path, node.lineno, in_function,
                                        names if not implicit else (), implicit))
    return tuple(found)


def import_graph(*, function_level: bool = True) -> dict[str, set[str]]:
    """liverseg module -> the liverseg modules importing it runs (``function_level=False``: module-level
    imports only)."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for edge in imports():
        if function_level or not edge.in_function:
            graph[edge.importer].add(edge.imported)
    return graph


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected group of modules (each starts and ends at one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph has ~150 nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:  # breadth-first from the group's first module back to it: a shortest cycle
        start = min(group)
        previous: dict[str, str | None] = {start: None}
        todo, last = [start], None
        while last is None:
            following = []
            for node in todo:
                if start in graph[node]:
                    last = node
                    break
                for nxt in sorted(graph[node] & group):
                    if nxt not in previous:
                        previous[nxt] = node
                        following.append(nxt)
            todo = following
        path = [last]
        while path[-1] != start:
            path.append(previous[path[-1]])
        found.append(path[::-1] + [start])
    return found


def describe_cycle(cycle: list[str]) -> str:
    """``a -> b`` per line, with the statements behind each arrow."""
    steps = []
    for importer, imported in zip(cycle, cycle[1:]):
        where = sorted({e.where() + (", runs the package" if e.implicit else "") for e in imports()
                        if e.importer == importer and e.imported == imported})
        steps.append(f"  {importer} -> {imported}  [{'; '.join(where)}]")
    return "\n".join(steps)
