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

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "sources": ("BACKENDS", "OnnxNetwork", "load_ensemble", "load_exported", "load_model", "load_trained_model"),
    "cases": ("cases_from_inputs", "cases_from_manifest"),
    "summary": ("BATCH_SUMMARY", "write_batch_summary"),
    "case_folders": ("clean_stale_partials",),
    "batch": ("BatchResult", "PROBABILITIES", "PredictOptions", "predict_batch", "predict_cases", "predict_files"),
    "jobs": ("PredictJob", "run_predict_job"),
})
