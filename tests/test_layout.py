"""The package's shape where import-linter (``[tool.importlinter]`` in pyproject.toml, run by ``make
test``) cannot see: no import cycle, counting imports inside functions and the package ``__init__`` files
they run; no module over 450 lines; no private name imported from another module; and no liverseg
import inside a function unless it keeps an optional or heavy dependency off a light path, as the
comment on that line (or the line above) says."""
from __future__ import annotations

import re

from import_graph import PACKAGE, REPO, cycles, describe_cycle, import_graph, imports, modules

MAX_LINES = 450
REASON = re.compile(r"#.*\b(optional|heavy)", re.IGNORECASE)


def test_the_graph_sees_module_and_function_level_imports():
    edges = {(e.importer, e.imported, e.in_function) for e in imports()}
    assert ("liverseg.api", "liverseg.io.volume", False) in edges
    assert ("liverseg", "liverseg.api", True) in edges  # liverseg.segment imports the API when called
    assert ("liverseg.engine.volume", "liverseg.io", False) in edges  # importing io.volume runs io/__init__
    # a module's own packages are initialised before it runs: importing a sibling is not a cycle
    assert ("liverseg.io.dicom.frames", "liverseg.io.dicom", False) not in edges
    assert cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"d"}, "e": set()}) == [["a", "b", "a"], ["d", "d"]]


def test_no_import_cycle():
    found = cycles(import_graph())
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
    assert private == [], "\n".join(private)


def test_imports_inside_functions_say_which_heavy_or_optional_dependency_they_keep_out():
    unexplained = []
    for edge in imports():
        if edge.in_function and not edge.implicit:
            lines = modules()[edge.importer][0].read_text(encoding="utf-8").splitlines()
            if not any(REASON.search(lines[i]) for i in range(max(edge.line - 2, 0), edge.line)):
                unexplained.append(f"{edge.where()}: {lines[edge.line - 1].strip()}")
    unexplained = sorted(set(unexplained))
    assert unexplained == [], ("move these imports to module level, or say in a comment which optional or "
                               "heavy dependency they keep off which light path:\n" + "\n".join(unexplained))
