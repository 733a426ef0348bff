"""Prediction: from a trained model and a CT (or photograph) to labels on the input's own grid.

Modules, each importing only modules listed above it (and never ``liverseg.export``, which imports
``sources`` to write exported files):

* ``tiling``: networks as numpy callables, the Gaussian-blended sliding window, flip TTA;
* ``gridstream``: CT -> network grid and probabilities -> input grid, slab by slab;
* ``volume``: one CT volume: coarse-to-fine, memory plan, probabilities and ensembles' averages;
* ``loaded``: the one loaded-model type (``TrainedModel``, ``Ensemble``), ``predict``, device choice;
* ``sources``: run folder, exported ONNX / TorchScript file or built-in model -> ``TrainedModel``;
* ``cases``, ``summary``, ``case_folders``: which cases, ``batch_summary.csv``, atomic case folders;
* ``batch``: batch prediction (``liverseg predict``).

Every name below can be imported from this package (``from liverseg.inference import load_model``);
its module is imported when the name is first asked for, so importing one module does not load the
others (``liverseg.photos`` needs only ``tiling``, ``liverseg.builtin`` only ``loaded``).
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "tiling": ("TorchNetwork", "as_network", "gaussian_importance", "network_probabilities", "sliding_window",
               "softmax", "softmax_predictor", "tile_starts"),
    "gridstream": ("preprocess_image_chunked", "probabilities_to_input_grid", "probabilities_to_labels_chunked"),
    "volume": ("MemoryPlan", "PROBABILITY_SCALE", "coarse_region", "network_grid_probabilities", "plan_memory",
               "predict_volume", "predict_volume_probabilities"),
    "loaded": ("Ensemble", "TrainedModel", "predict", "resolve_device"),
    "sources": ("BACKENDS", "OnnxNetwork", "load_ensemble", "load_exported", "load_model", "load_trained_model"),
    "cases": ("cases_from_inputs", "cases_from_manifest"),
    "summary": ("BATCH_SUMMARY", "write_batch_summary"),
    "case_folders": ("clean_stale_partials",),
    "batch": ("BatchResult", "PROBABILITIES", "PredictOptions", "predict_batch", "predict_cases", "predict_files"),
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
