"""Segmentation outputs written on the input's grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeometryError
from .images import write_volume
from .volume import Volume


def write_label_map(labels: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a uint8 label map on exactly ``reference``'s grid (shape, spacing, origin, direction)."""
    if tuple(labels.shape) != reference.shape:
        raise GeometryError(f"label map shape {tuple(labels.shape)} differs from the reference grid "
                            f"{reference.shape} of {reference.meta.get('path', 'the input')}")
    if labels.size and int(labels.max()) > 255:
        raise ValueError(f"label values up to {int(labels.max())} do not fit uint8")
    return write_volume(reference.with_array(labels.astype(np.uint8, copy=False)), Path(path))
