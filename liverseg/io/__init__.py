"""Everything that touches a file format: ``read_volume`` in, ``write_label_map`` out.

The package imports none of its modules (``inputs``, ``images``, ``outputs``, ``volume``, ``formats``,
``dicom``, ...); the names below load their module on first use.
"""
from __future__ import annotations

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "volume": ("Volume",),
    "inputs": ("read_volume", "check_input", "case_name"),
    "outputs": ("write_label_map",),
    "formats": ("is_image_file",),
    "images": ("write_volume",),
})
