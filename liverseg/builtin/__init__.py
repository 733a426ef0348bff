"""Built-in pretrained models: shipped inside the package, run with no training and no network access.

``BUILTIN_MODELS`` names each one with its provenance, licence, citation, input and measured figures;
``load_builtin(name)`` returns a ``TrainedModel`` that ``liverseg predict`` uses like a run folder.
The weights are package data (``weights/*.npz``, converted by ``scripts/convert_kul_weights.py``,
with ``weights/*.json`` recording the sha256 of the original files and of the converted one, checked
on load) under their own licence (``LICENSE-Apache-2.0.txt``; attribution, changes and citations in
``NOTICE.md``). ``samples/`` holds the demo CT (TotalSegmentator's example, Apache-2.0).

The package imports none of its modules: ``registry`` (the models, their weights), ``loading``
(``load_builtin``, ``make_engine``), the liver road (``liver_grid``, ``kul_liver``, ``engines``,
``runtime``, ``staged``, ``staged_levels``, ``patch_maps``, ``onnx_proto``, ``zoom``) and the lesion
road (``kul_lesion``, ``resunet_stream``); the names below load their module on first use.
"""
from __future__ import annotations

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "registry": ("WEIGHTS", "BuiltinModel", "BUILTIN_MODELS", "DEFAULT_MODEL", "is_builtin", "get", "provenance",
                 "load_weights", "torch_module", "describe"),
    "loading": ("BuiltinPredictor", "load_builtin", "make_engine", "stages"),
})
