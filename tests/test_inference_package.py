"""The inference package: its public names resolve, its modules load only what they import, and no
import cycle (module-level or inside functions) runs through it or through ``liverseg.export``."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import liverseg.inference as inference

REPO = Path(__file__).resolve().parents[1]


MODULES = ("sources", "cases", "summary", "case_folders", "claims", "cohort", "batch")


def test_every_public_name_resolves_to_its_modules_public_name():
    owners = {name: module for module in MODULES
              for name in getattr(import_module(f"liverseg.inference.{module}"), "__all__", ())}
    for name in inference.__all__:
        assert getattr(inference, name) is getattr(import_module(f"liverseg.inference.{owners[name]}"), name)
    assert sorted(p.stem for p in (REPO / "liverseg" / "inference").glob("[!_]*.py")) == sorted(MODULES)


def test_importing_tiling_loads_neither_the_loaders_nor_the_batch_machinery():
    code = ("import sys, liverseg.engine.tiling; "
            "print(sorted(m for m in sys.modules if m.startswith('liverseg.') and m.count('.') >= 1))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(ast.literal_eval(result.stdout))
    assert "liverseg.engine.tiling" in loaded
    assert not {"liverseg.inference.sources", "liverseg.inference.batch", "liverseg.export.writers",
                "liverseg.builtin"} & loaded


def _import_graph() -> dict[str, set[str]]:
    """liverseg module -> the liverseg modules it imports anywhere (importing a.b.c imports package a.b)."""
    modules = {}
    for path in (REPO / "liverseg").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def run_by(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules}

    graph = {}
    for name, (path, is_package) in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {m for alias in node.names for m in run_by(alias.name)}
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".")[: len(name.split(".")) - (0 if is_package else 1)]
                base = base[: len(base) - max(node.level - 1, 0)] if node.level else []
                target = ".".join(base + [node.module] if node.module else base) if node.level else node.module
                edges |= run_by(target) | {m for alias in node.names for m in run_by(f"{target}.{alias.name}")}
        graph[name] = edges - {name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_no_import_cycle_runs_through_inference_or_export():
    graph = _import_graph()
    checked = [m for m in graph if m.startswith("liverseg.inference") or m.startswith("liverseg.export") or m == "liverseg.api"]
    assert len(checked) >= 10
    assert [m for m in checked if _reaches(graph, m, m)] == []
