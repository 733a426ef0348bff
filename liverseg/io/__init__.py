"""Everything that touches a file format: ``read_volume`` in, ``write_label_map`` out.

The package imports none of its modules (``inputs``, ``images``, ``outputs``, ``volume``, ``formats``,
``dicom``, ...); the names below load their module on first use.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "volume": ("Volume",),
    "inputs": ("read_volume", "check_input", "case_name"),
    "outputs": ("write_label_map",),
    "formats": ("is_image_file",),
    "images": ("write_volume",),
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
