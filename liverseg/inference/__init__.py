"""Prediction of many cases: model sources behind one loader, and the batch driver.

Modules, each importing only modules listed above it (``liverseg.export`` imports ``sources`` to
write exported files, so nothing here imports it). One volume is predicted by ``liverseg.engine``;
the modality plug-ins (``liverseg.modalities``) sit between the two.

* ``sources``: run folder, exported ONNX / TorchScript file or built-in model -> ``TrainedModel``;
* ``cases``, ``summary``, ``case_folders``: which cases, ``batch_summary.csv``, atomic case folders;
* ``cohort``: a share of the cases per job and the read-ahead/write-behind loop; ``claims``: claims between
  workers;
* ``batch``: batch prediction, the case loop (each case its modality's read -> segment -> write);
* ``jobs``: one ``liverseg predict`` job: its cases, a ``--part`` share, torchrun ranks.

Every name below can be imported from this package (``from liverseg.inference import load_model``);
its module is imported when the name is first asked for, so importing one module does not load the
others.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "sources": ("BACKENDS", "OnnxNetwork", "load_ensemble", "load_exported", "load_model", "load_trained_model"),
    "cases": ("cases_from_inputs", "cases_from_manifest"),
    "summary": ("BATCH_SUMMARY", "write_batch_summary"),
    "case_folders": ("clean_stale_partials",),
    "batch": ("BatchResult", "PROBABILITIES", "PredictOptions", "predict_batch", "predict_cases", "predict_files"),
    "jobs": ("PredictJob", "run_predict_job"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name of one of the modules, which is imported now (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
