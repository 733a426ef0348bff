"""Argument checks shared by the metric modules: a prediction/reference mask pair and voxel spacing."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mask_pair", "voxel_spacing"]


def mask_pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    """Both as bool arrays (any non-zero value is foreground); ValueError naming both shapes if they differ."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def voxel_spacing(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    """``spacing_mm`` as float64, one positive finite size per array axis (ValueError otherwise)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.ndim != 1 or spacing.size != ndim:
        raise ValueError(f"spacing_mm {np.asarray(spacing_mm).tolist()} must give one voxel size per array "
                         f"axis ({ndim} values)")
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm {spacing.tolist()} must be positive and finite")
    return spacing
