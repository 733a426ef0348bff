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

from importlib import import_module

_EXPORTS = {
    "registry": ("WEIGHTS", "BuiltinModel", "BUILTIN_MODELS", "DEFAULT_MODEL", "is_builtin", "get", "provenance",
                 "load_weights", "torch_module", "describe"),
    "loading": ("BuiltinPredictor", "load_builtin", "make_engine", "stages"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name of one of the modules, which is imported now (PEP 562): the package imports none of
    its modules itself, so a module importing a sibling never runs into a half-imported package."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
