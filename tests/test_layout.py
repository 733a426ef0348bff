"""The package's shape where import-linter (``[tool.importlinter]`` in pyproject.toml, run by ``make
test``) cannot see. Import-linter sees imports inside functions too, but not a cycle that runs through a
package's ``__init__`` and its own modules (importing ``liverseg.io.x`` runs ``liverseg/io/__init__.py``),
nor the module a lazily exported name loads (``from .. import read_volume`` imports ``liverseg.io.inputs``,
liverseg/lazy.py). So here: no import cycle, counting those; no module over 450 lines; no private name
imported from another module or read off one; and no liverseg import inside a function unless the comment
on that line (or the line above) starts with the optional or heavy dependency it keeps off a light path."""
from __future__ import annotations

from import_graph import (
    PACKAGE, REASON, REPO, cycles, describe_cycle, has_reason, import_graph, imports, lazy_exports, modules,
    private_attributes)

MAX_LINES = 450


def test_the_graph_sees_module_and_function_level_imports():
    edges = {(e.importer, e.imported, e.in_function) for e in imports()}
    assert ("liverseg.api", "liverseg.io.volume", False) in edges
    assert ("liverseg", "liverseg.api", True) in edges  # liverseg.segment imports the API when called
    assert ("liverseg.engine.volume", "liverseg.io", False) in edges  # importing io.volume runs io/__init__
    # a module's own packages are initialised before it runs: importing a sibling is not a cycle
    assert ("liverseg.io.dicom.frames", "liverseg.io.dicom", False) not in edges
    assert cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"d"}, "e": set()}) == [["a", "b", "a"], ["d", "d"]]
    # a name a package exports lazily is an edge to the module defining it, whether imported or read
    assert lazy_exports()["liverseg.io"]["read_volume"] == "liverseg.io.inputs"
    assert ("liverseg.api", "liverseg.io.inputs", False) in edges  # from .io import read_volume
    assert ("liverseg.inference.sources", "liverseg.builtin.loading", True) in edges  # builtin.load_builtin(...)
    assert all(e.imported in modules() for e in imports())


def test_a_reason_starts_the_comment():
    assert REASON.match("# heavy (torch): kept out") and REASON.match("#optional: h5py")
    assert not REASON.match("# not heavy at all") and not REASON.match("# heavyweight")


def test_no_import_cycle():
    graph = import_graph()
    assert sum(m.startswith(("liverseg.inference.", "liverseg.export.")) or m == "liverseg.api" for m in graph) >= 10
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n\n".join(describe_cycle(c) for c in found)


def test_no_module_is_longer_than_450_lines():
    long = {str(path.relative_to(REPO)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (line counts): {long}"


def test_no_private_name_is_imported_from_another_module():
    private = [f"{e.where()}: {name} from {e.imported}" for e in imports()
               for name in e.names if name.startswith("_") and not name.startswith("__")]
    private += [f"{e.where()}: private module {e.imported}" for e in imports()
                if any(part.startswith("_") and not part.startswith("__") for part in e.imported.split("."))]
    private += [f"{read}, read off the module" for read in private_attributes()]
    assert private == [], "\n".join(private)


def test_imports_inside_functions_say_which_heavy_or_optional_dependency_they_keep_out():
    unexplained = []
    for edge in imports():  # the statements themselves; a lazy edge shares its statement's line
        if edge.in_function and not edge.implicit and not edge.lazy and not has_reason(edge):
            lines = modules()[edge.importer][0].read_text(encoding="utf-8").splitlines()
            unexplained.append(f"{edge.where()}: {lines[edge.line - 1].strip()}")
    unexplained = sorted(set(unexplained))
    assert unexplained == [], ("move these imports to module level, or start the comment on them with the "
                               "optional or heavy dependency they keep off a light path (# heavy (torch): ...):\n" + "\n".join(unexplained))
