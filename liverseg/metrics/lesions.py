"""Lesion-wise detection: connected components, matching, TP/FP/FN and their scores (rules and NaN
conventions in :mod:`liverseg.metrics`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .checks import mask_pair, voxel_spacing

__all__ = ["LesionDetection", "detection_scores", "lesion_components", "lesion_detection"]


# ----------------------------------------------------------------------------- lesion detection

# Neighbourhood rank for scipy.ndimage.generate_binary_structure, per (ndim, connectivity).
_CONNECTIVITY_RANK = {(3, 6): 1, (3, 18): 2, (3, 26): 3, (2, 4): 1, (2, 8): 2}


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    if connectivity is None:
        connectivity = 26 if ndim == 3 else 8
    rank = _CONNECTIVITY_RANK.get((ndim, connectivity))
    if rank is None:
        allowed = sorted(c for d, c in _CONNECTIVITY_RANK if d == ndim)
        raise ValueError(f"connectivity {connectivity!r} for a {ndim}D mask: expected one of {allowed}")
    return ndimage.generate_binary_structure(ndim, rank)


def _voxel_ml(spacing_mm: Sequence[float], ndim: int) -> float:
    return float(np.prod(voxel_spacing(spacing_mm, ndim))) / 1000.0


def lesion_components(mask: np.ndarray, spacing_mm: Sequence[float], min_volume_ml: float = 0.0,
                      connectivity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of ``mask`` at least ``min_volume_ml`` large.

    Returns ``(labels, volumes_ml)``: an int32 array numbering the kept components 1..n in
    ``scipy.ndimage.label`` order (0 elsewhere, including the dropped small components) and their n
    volumes in mL. ``connectivity``: 26 (default), 18 or 6 in 3D; 8 (default) or 4 in 2D.
    """
    mask = np.asarray(mask, dtype=bool)
    voxel_ml = _voxel_ml(spacing_mm, mask.ndim)
    min_volume_ml = float(min_volume_ml)
    if not np.isfinite(min_volume_ml) or min_volume_ml < 0:
        raise ValueError(f"min_volume_ml must be finite and >= 0, got {min_volume_ml!r}")
    labels, count = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    labels = labels.astype(np.int32, copy=False)
    volumes = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_ml
    keep = volumes >= min_volume_ml
    if not keep.all():
        lut = np.zeros(count + 1, dtype=np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = lut[labels]
        volumes = volumes[keep]
    return labels, volumes


def detection_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Lesion-wise ``precision`` TP/(TP+FP), ``recall`` TP/(TP+FN), ``f1`` 2TP/(2TP+FP+FN); 0/0 is NaN."""
    def ratio(num: float, den: float) -> float:
        return num / den if den else float("nan")

    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


@dataclass(frozen=True)
class LesionDetection:
    """Result of :func:`lesion_detection`. Lesions are numbered 1..n as in :func:`lesion_components`;
    ``matches`` holds ``(ref_lesion, pred_lesion, overlap_voxels, iou)`` for every matching pair."""
    n_ref: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    matches: tuple[tuple[int, int, int, float], ...]
    ref_volumes_ml: tuple[float, ...]
    pred_volumes_ml: tuple[float, ...]

    @property
    def precision(self) -> float:
        return detection_scores(self.tp, self.fp, self.fn)["precision"]

    @property
    def recall(self) -> float:
        return detection_scores(self.tp, self.fp, self.fn)["recall"]

    @property
    def f1(self) -> float:
        return detection_scores(self.tp, self.fp, self.fn)["f1"]

    @property
    def missed(self) -> tuple[int, ...]:
        """The reference lesions no predicted component matched (the false negatives)."""
        found = {r for r, _, _, _ in self.matches}
        return tuple(i for i in range(1, self.n_ref + 1) if i not in found)

    @property
    def false_positives(self) -> tuple[int, ...]:
        """The predicted components that matched no reference lesion."""
        found = {p for _, p, _, _ in self.matches}
        return tuple(i for i in range(1, self.n_pred + 1) if i not in found)


def lesion_detection(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float], min_volume_ml: float = 0.0,
                     min_iou: float = 0.0, connectivity: int | None = None) -> LesionDetection:
    """Lesion-wise TP/FP/FN of a predicted mask against a reference mask (rules in the module docstring).

    ``min_volume_ml``: components smaller than this (on either side) are ignored. ``min_iou`` in [0, 1]:
    the IoU a reference lesion and a predicted component need to match, besides sharing a voxel (0: any
    overlap). ``connectivity``: 26 (default), 18 or 6 in 3D; 8 (default) or 4 in 2D.
    """
    pred, ref = mask_pair(pred, ref)
    min_iou = float(min_iou)
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in [0, 1], got {min_iou!r}")
    ref_labels, ref_volumes = lesion_components(ref, spacing_mm, min_volume_ml, connectivity)
    pred_labels, pred_volumes = lesion_components(pred, spacing_mm, min_volume_ml, connectivity)
    n_ref, n_pred = len(ref_volumes), len(pred_volumes)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    both = (ref_labels > 0) & (pred_labels > 0)
    pairs = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    overlap = np.bincount(pairs, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)
    matches = []
    for r, p in zip(*np.nonzero(overlap)):
        shared = int(overlap[r, p])
        iou_rp = shared / float(ref_sizes[r] + pred_sizes[p] - shared)
        if iou_rp >= min_iou:
            matches.append((int(r), int(p), shared, iou_rp))
    tp = len({r for r, _, _, _ in matches})
    fp = n_pred - len({p for _, p, _, _ in matches})
    return LesionDetection(n_ref, n_pred, tp, fp, n_ref - tp, tuple(matches),
                           tuple(float(v) for v in ref_volumes), tuple(float(v) for v in pred_volumes))
