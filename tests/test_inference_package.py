"""The inference package: its public names resolve and its modules load only what they import (no import
cycle through it: tests/test_layout.py checks the whole package's graph)."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import liverseg.inference as inference

REPO = Path(__file__).resolve().parents[1]


MODULES = ("sources", "cases", "summary", "case_folders", "claims", "cohort", "batch", "jobs")


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


def test_the_prediction_path_loads_no_training_or_scoring_stack():
    """ONNX prediction starts in about a second: importing the batch driver (and the CLI's predict job) must
    not load PyTorch, MONAI or scipy.stats (0.45 s on its own; only scoring needs it)."""
    code = ("import sys, liverseg.inference.batch, liverseg.inference.jobs; "
            "print(sorted(m for m in ('torch', 'monai', 'scipy.stats', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert ast.literal_eval(result.stdout) == []
