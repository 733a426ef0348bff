"""liverseg's imports as the source states them, module-level and inside functions (an AST walk; no
liverseg module is imported). ``tests/test_layout.py`` uses it for what import-linter cannot check:
cycles that only a function-level import, a package ``__init__`` or a lazily exported name closes,
private names, and the reason given for an import inside a function."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "liverseg"
# the comment on a function-level import (or on the line above it) starts with its reason
REASON = re.compile(r"^#\s*(heavy|optional)\b", re.IGNORECASE)


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
    lazy: bool = False  # the module a package's ``__init__`` loads for a lazily exported name (``lazy_exports``)
    initialised: bool = False  # the importer itself or a package it sits in: already running, no edge

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


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse(modules()[module][0].read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def lazy_exports() -> dict[str, dict[str, str]]:
    """Package -> {name: the module defining it} for every package whose ``__init__`` hands its names out
    through ``lazy_exports(__name__, globals(), {"module": ("name", ...), ...})`` (liverseg/lazy.py)."""
    tables: dict[str, dict[str, str]] = {}
    for package, (_, is_package) in modules().items():
        if not is_package:
            continue
        for node in ast.walk(_tree(package)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lazy_exports"):
                continue
            table = node.args[2] if len(node.args) > 2 else None
            if not isinstance(table, ast.Dict):
                raise AssertionError(f"{package}: lazy_exports's table is not a literal dict; read it by hand")
            for key, value in zip(table.keys, table.values):
                module = f"{package}.{ast.literal_eval(key)}"
                if module not in modules():
                    raise AssertionError(f"{package}: lazy_exports names {module}, which does not exist")
                for name in ast.literal_eval(value):
                    tables.setdefault(package, {})[name] = module
    return tables


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


def _base(importer: str, node: ast.ImportFrom) -> str:
    """The module a ``from`` import reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    here = importer.split(".") if modules()[importer][1] else importer.split(".")[:-1]
    return ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    """Every liverseg module each liverseg module imports, with the packages that run on the way and the
    modules that the lazily exported names it reads from a package load (``from .. import read_volume``,
    or ``from .. import builtin`` then ``builtin.load_builtin``).

    A module's own enclosing packages are already initialised (or initialising) when it runs, so
    importing a sibling does not count as importing the enclosing package; reading a name from that
    package's ``__init__`` (``from .. import name``) does, and so does the module defining that name
    when the package exports it lazily. A function-level import of the importer itself or of one of its
    packages, naming nothing, is kept (``initialised``): no edge of the graph, but it needs a reason."""
    found = []
    lazy = lazy_exports()
    for importer, (path, _) in modules().items():
        own_packages = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
        for node, in_function in _statements(_tree(importer)):
            targets: list[tuple[str, tuple[str, ...]]] = []  # (module, names read from it)
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "liverseg"]
            else:
                base = _base(importer, node)
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
                        if in_function and not implicit:
                            found.append(Import(importer, module, path, node.lineno, in_function, names,
                                                implicit, initialised=True))
                        continue
                    found.append(Import(importer, module, path, node.lineno, in_function,
                                        names if not implicit else (), implicit))
                for defining in sorted({lazy[target][name] for name in names if name in lazy.get(target, {})}):
                    if defining != importer:
                        found.append(Import(importer, defining, path, node.lineno, in_function,
                                            tuple(n for n in names if lazy[target].get(n) == defining), False,
                                            lazy=True))
        for node, in_function, module, attr in _module_attributes(importer):  # ``builtin.load_builtin``
            defining = lazy.get(module, {}).get(attr)
            if defining is not None and defining != importer:
                found.append(Import(importer, defining, path, node.lineno, in_function, (attr,), False, lazy=True))
    return tuple(found)


def import_graph() -> dict[str, set[str]]:
    """liverseg module -> the liverseg modules importing it runs (module-level and inside functions)."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for edge in imports():
        if not edge.initialised:
            graph[edge.importer].add(edge.imported)
    return graph


def _module_names(importer: str) -> dict[str, str]:
    """Local name -> the liverseg module it is bound to, for every import of ``importer`` (any scope)."""
    bound: dict[str, str] = {}
    for node, _ in _statements(_tree(importer)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "liverseg" and alias.name in modules():
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = "liverseg"
        else:
            base = _base(importer, node)
            if base.split(".")[0] == "liverseg":
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules():
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _module_attributes(importer: str):
    """(attribute node, inside a function?, module, name) for every name read off a liverseg module that an
    import of ``importer`` binds (``from . import anatomy; anatomy.name``, ``liverseg.io.anatomy.name``):
    the first attribute of each chain that is not a submodule."""
    bound = _module_names(importer)

    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.Lambda)))
    if not bound:
        return
    for node, in_function in walk(_tree(importer), False):
        if not isinstance(node, ast.Attribute):
            continue
        chain, inner = [], node
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if not (isinstance(inner, ast.Name) and inner.id in bound):
            continue
        module = bound[inner.id]
        for i, attr in enumerate(reversed(chain)):
            if f"{module}.{attr}" not in modules():
                if i == len(chain) - 1:  # the outermost attribute of the chain: each read is seen once
                    yield node, in_function, module, attr
                break
            module = f"{module}.{attr}"


def private_attributes() -> list[str]:
    """``where: module._name`` for every private attribute read off a liverseg module bound by an import
    (``from . import anatomy; anatomy._key``, ``liverseg.io.anatomy._key``) other than the reader itself."""
    found = []
    for importer, (path, _) in modules().items():
        for node, _, module, attr in _module_attributes(importer):
            if attr.startswith("_") and not attr.startswith("__") and module != importer:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}.{attr}")
    return sorted(set(found))


@lru_cache(maxsize=None)
def comments(module: str) -> dict[int, str]:
    """Line number -> the comment on that line, for one liverseg module."""
    source = modules()[module][0].read_text(encoding="utf-8")
    return {token.start[0]: token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT}


def has_reason(edge: Import) -> bool:
    """The comment on the import's first line, or on the line above it, starts with ``heavy`` or ``optional``."""
    return any(REASON.match(comments(edge.importer).get(line, "")) for line in (edge.line - 1, edge.line))


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
        where = sorted({e.where() + (", runs the package" if e.implicit else "")
                        + (f", {', '.join(e.names)} exported lazily by {e.imported.rsplit('.', 1)[0]}" if e.lazy else "")
                        for e in imports() if e.importer == importer and e.imported == imported
                        and not e.initialised})
        steps.append(f"  {importer} -> {imported}  [{'; '.join(where)}]")
    return "\n".join(steps)
