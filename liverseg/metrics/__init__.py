"""Segmentation metrics on label arrays (pure numpy/scipy).

The overlap and surface metrics live here; ROC AUC and ECE in ``liverseg.metrics.probability``, lesion
detection in ``liverseg.metrics.lesions`` (both re-exported here). The definitions of all of them follow.

Every mask argument is converted with ``np.asarray(x, dtype=bool)``, so any non-zero value is
foreground. Prediction and reference (and ``mask``/``prob`` where taken) must have the same shape,
else ``ValueError`` naming both shapes. ``spacing_mm`` is a sequence of positive finite voxel sizes,
one per array axis, in array-axis order (``len(spacing_mm) == pred.ndim``, else ``ValueError``).

Overlap metrics (``tp``/``fp``/``fn``/``tn`` counted over all voxels):

- ``dice`` = ``f1`` = 2 tp / (2 tp + fp + fn), ``iou`` = tp / (tp + fp + fn),
  ``precision`` = tp / (tp + fp), ``recall`` (sensitivity) = tp / (tp + fn),
  ``specificity`` = tn / (tn + fp), ``accuracy`` = (tp + tn) / N,
  ``relative_volume_error`` = (|pred| - |ref|) / |ref| (signed; voxel counts, spacing cancels).
- ``confusion_matrix`` over integer label maps: rows = reference, columns = prediction
  (``sklearn.metrics.confusion_matrix(ref, pred, labels=range(n_classes))``).

Surface metrics follow MONAI (``get_mask_edges`` / ``get_surface_distance`` with
``use_subvoxels=False``, ``distance_metric="euclidean"``):

- The surface of a mask is its voxels with at least one face neighbour (6-connected in 3D,
  4-connected in 2D) outside the mask: ``mask & ~binary_erosion(mask, cross)``. Outside the array
  counts as background (``border_value=0``), so mask voxels on the array border are surface voxels,
  as in MONAI (which pads its crop with zeros).
- The directed distances pred -> ref are, for each pred surface voxel, the Euclidean distance in mm
  to the nearest ref surface voxel (``distance_transform_edt(~ref_surface, sampling=spacing_mm)``),
  and likewise ref -> pred.
- ``hd95``: the 95th percentile (linear interpolation, ``np.percentile`` default = ``torch.quantile``)
  of each directed distance set, then the maximum of the two (MONAI
  ``compute_hausdorff_distance(percentile=95)``; not the percentile of the pooled set).
- ``assd``: mean of the pooled (concatenated) directed distances, i.e. weighted by the number of
  surface voxels on each side (MONAI ``compute_average_surface_distance(symmetric=True)``; not the
  mean of the two directed means).
- ``surface_dice`` (normalised surface distance, Nikolov et al. 2021): (number of pred surface voxels
  within ``tolerance_mm`` of the ref surface + number of ref surface voxels within ``tolerance_mm``
  of the pred surface) / (total number of surface voxels of both); a distance equal to the tolerance
  counts as within (MONAI ``compute_surface_dice(use_subvoxels=False)``). The DeepMind
  ``surface-distance`` package weights surface elements by their area instead (MONAI's
  ``use_subvoxels=True``); this voxel-count version does not.

``roc_auc``: exact area under the ROC curve from ranks (Mann-Whitney U), ties get average ranks,
which equals ``sklearn.metrics.roc_auc_score`` (tied scores count 1/2).

Empty-mask conventions (MONAI returns NaN or inf in several of these cases, sklearn returns its
``zero_division`` value; these are chosen so per-case means stay finite where the answer is clear):

- ``dice``, ``f1``, ``iou``: 1.0 when both are empty, 0.0 when exactly one is.
- ``precision``: empty prediction -> 1.0 if the reference is empty too, else 0.0.
- ``recall``: empty reference -> 1.0 if the prediction is empty too, else 0.0.
- ``specificity`` (recall of the background): reference entirely foreground -> 1.0 if the
  prediction is entirely foreground too, else 0.0.
- ``hd95``, ``assd``: 0.0 when both are empty, inf when exactly one is.
- ``surface_dice``: 1.0 when both are empty, 0.0 when exactly one is.
- ``relative_volume_error``: 0.0 when both are empty, +inf when only the reference is empty
  (-1.0 when only the prediction is empty follows from the formula).

``accuracy`` of zero voxels and ``roc_auc`` with no voxels, only positive or only negative
reference voxels (inside ``mask``) raise ``ValueError``; ``roc_auc`` also rejects non-finite scores.

Lesion detection (``lesion_components``, ``lesion_detection``, ``detection_scores``), counted per
lesion rather than per voxel:

- Lesions are the connected components of a mask (``scipy.ndimage.label``), 26-connected in 3D
  (8 in 2D) by default; ``connectivity`` 6 or 18 (4 in 2D) are accepted too. Components smaller than
  ``min_volume_ml`` (voxel count x voxel volume from ``spacing_mm``; 1 mL = 1000 mm^3) are ignored
  on both sides before matching (each side by its own volume: a reference lesion whose only predicted
  component is under the limit is missed); the default 0 keeps every component.
- A reference lesion and a predicted component *match* when they share at least one voxel and their
  IoU (of the two components) is at least ``min_iou``; the default 0 is the plain overlap criterion
  (one shared voxel suffices). A reference lesion matched by at least one predicted component is a
  true positive (TP, counted once even when the prediction splits it); a reference lesion matched by
  none is a false negative (FN); a predicted component that matches no reference lesion is a false
  positive (FP). A predicted component that merges several reference lesions makes each of them a TP.
- ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN) = TP / (reference lesions),
  ``f1`` = 2 TP / (2 TP + FP + FN). Unlike the voxel metrics above, 0/0 is NaN: no reference lesions
  -> recall NaN; no TP and no FP -> precision NaN; no lesions on either side -> all three NaN (the
  counts are 0). Pool over cases by summing TP, FP and FN and calling ``detection_scores``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .checks import mask_pair, voxel_spacing
from .lesions import LesionDetection, detection_scores, lesion_components, lesion_detection
from .probability import expected_calibration_error, roc_auc

__all__ = [
    "LesionDetection", "accuracy", "assd", "confusion_matrix", "detection_scores", "dice", "f1", "hd95", "iou",
    "lesion_components", "lesion_detection", "overlap_scores", "precision", "recall", "relative_volume_error",
    "roc_auc", "expected_calibration_error", "sensitivity", "specificity", "surface_dice", "surface_distances", "surface_metrics",
]


# ----------------------------------------------------------------------------- overlap metrics

def _confusion(pred, ref) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of two masks of the same shape, from one intersection and two counts."""
    pred, ref = mask_pair(pred, ref)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    return tp, fp, fn, pred.size - tp - fp - fn


def _rate(hits: int, misses: int, false_alarms: int) -> float:
    """hits / (hits + misses); with nothing to find, 1.0 unless something was claimed anyway."""
    if hits + misses == 0:
        return 1.0 if false_alarms == 0 else 0.0
    return hits / (hits + misses)


def overlap_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Every overlap metric of the module (dice, iou, precision, recall, specificity, accuracy,
    relative_volume_error) from one count of tp/fp/fn/tn, with the conventions documented above;
    also the voxel counts ``pred_voxels`` and ``ref_voxels``."""
    tp, fp, fn, tn = _confusion(pred, ref)
    n_pred, n_ref = tp + fp, tp + fn
    if n_ref == 0:
        rve = 0.0 if n_pred == 0 else float("inf")
    else:
        rve = (n_pred - n_ref) / n_ref
    return {
        "dice": 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "precision": _rate(tp, fp, fn),  # empty prediction: 1.0 only if nothing was missed
        "recall": _rate(tp, fn, fp),
        "specificity": _rate(tn, fp, fn),  # recall of the background
        "accuracy": (tp + tn) / (tp + fp + fn + tn) if tp + fp + fn + tn else float("nan"),
        "relative_volume_error": rve,
        "pred_voxels": n_pred,
        "ref_voxels": n_ref,
    }


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2 tp / (2 tp + fp + fn); 1.0 when both masks are empty, 0.0 when one is."""
    return overlap_scores(pred, ref)["dice"]


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """F1 score of the foreground class; identical to :func:`dice` for binary masks (same conventions)."""
    return dice(pred, ref)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard) tp / (tp + fp + fn); 1.0 when both are empty, 0.0 when one is."""
    return overlap_scores(pred, ref)["iou"]


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Positive predictive value tp / (tp + fp).

    Empty prediction: 1.0 if the reference is empty too (nothing claimed, nothing missed), else 0.0.
    """
    return overlap_scores(pred, ref)["precision"]


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Sensitivity (true-positive rate) tp / (tp + fn).

    Empty reference: 1.0 if the prediction is empty too, else 0.0 (false positives are penalised).
    """
    return overlap_scores(pred, ref)["recall"]


sensitivity = recall


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True-negative rate tn / (tn + fp), i.e. :func:`recall` of the background.

    Reference entirely foreground (no negatives): 1.0 if the prediction is entirely foreground too,
    else 0.0 (mirrors the :func:`recall` convention on the complement).
    """
    return overlap_scores(pred, ref)["specificity"]


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of voxels where prediction and reference agree, (tp + tn) / N.

    Raises ``ValueError`` for zero-size arrays.
    """
    if np.asarray(pred).size == 0:
        raise ValueError("accuracy of zero-size arrays is undefined")
    return overlap_scores(pred, ref)["accuracy"]


def relative_volume_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """Signed relative volume error (|pred| - |ref|) / |ref| (voxel counts; spacing cancels).

    Both empty: 0.0. Reference empty, prediction not: +inf. Prediction empty, reference not: -1.0.
    """
    return overlap_scores(pred, ref)["relative_volume_error"]


def confusion_matrix(pred_labels: np.ndarray, ref_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; entry ``[i, j]`` = voxels with reference ``i``, prediction ``j``.

    Rows are the reference, columns the prediction, like ``sklearn.metrics.confusion_matrix(ref, pred,
    labels=range(n_classes))``. Labels must be integers in ``[0, n_classes)``: unlike sklearn, values
    outside that range raise ``ValueError`` instead of being dropped silently.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from reference shape {ref_labels.shape}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    n = int(n_classes)
    flat = []
    for name, labels in (("prediction", pred_labels), ("reference", ref_labels)):
        values = labels.ravel()
        if values.dtype.kind == "b":
            values = values.astype(np.int64)
        elif values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
                raise ValueError(f"{name} labels must be integers")
            values = values.astype(np.int64)
        elif values.dtype.kind not in "iu":
            raise ValueError(f"{name} labels must be integers, got dtype {labels.dtype}")
        if values.size and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"{name} labels span [{values.min()}, {values.max()}], outside [0, {n - 1}] "
                             f"for n_classes={n}")
        flat.append(values.astype(np.int64))
    pred_flat, ref_flat = flat
    return np.bincount(ref_flat * n + pred_flat, minlength=n * n).reshape(n, n)


# ----------------------------------------------------------------------------- surface metrics

def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (outside the array counts as background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> nearest ref surface, ref -> pred).

    Each array has one entry per surface voxel of its source mask (C order). Both masks must be
    non-empty (``ValueError`` otherwise; the metric functions apply the empty-mask conventions first).
    """
    pred, ref = mask_pair(pred, ref)
    spacing = voxel_spacing(spacing_mm, pred.ndim)
    union = pred | ref
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need non-empty prediction and reference masks")
    # Crop to the bounding box of the union: voxels outside it are background, which erosion with
    # border_value=0 reproduces, and every surface voxel of either mask lies inside it, so the
    # distances between them are unchanged.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(union))
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_ref[pred_surface], to_pred[ref_surface]


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                    tolerance_mm: float = 0.0) -> dict[str, float]:
    """``hd95``, ``assd`` and ``surface_dice`` (at ``tolerance_mm``) from one surface-distance computation.

    The values equal the three functions below (which call this); use it when more than one is needed,
    since the distance transforms dominate the cost on large volumes. Empty masks: both empty ->
    0.0, 0.0, 1.0; exactly one empty -> inf, inf, 0.0. ``tolerance_mm`` must be finite and >= 0.
    """
    pred, ref = mask_pair(pred, ref)
    voxel_spacing(spacing_mm, pred.ndim)
    tolerance = float(tolerance_mm)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm!r}")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return {"hd95": 0.0, "assd": 0.0, "surface_dice": 1.0}
    if has_pred != has_ref:
        return {"hd95": float("inf"), "assd": float("inf"), "surface_dice": 0.0}
    forward, backward = surface_distances(pred, ref, spacing_mm)
    within = int(np.count_nonzero(forward <= tolerance)) + int(np.count_nonzero(backward <= tolerance))
    return {"hd95": float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
            "assd": float(np.concatenate([forward, backward]).mean()),
            "surface_dice": within / (forward.size + backward.size)}


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm.

    ``max(percentile95(pred -> ref), percentile95(ref -> pred))`` over the directed surface distances
    (linear interpolation), as MONAI ``compute_hausdorff_distance(percentile=95)``. Both masks empty:
    0.0; exactly one empty: inf.
    """
    return surface_metrics(pred, ref, spacing_mm)["hd95"]


def assd(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Average symmetric surface distance in mm: mean of the pooled directed surface distances.

    Pooled means each surface voxel of either mask counts once (MONAI
    ``compute_average_surface_distance(symmetric=True)``). Both masks empty: 0.0; exactly one: inf.
    """
    return surface_metrics(pred, ref, spacing_mm)["assd"]


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance_mm``.

    Fraction of the surface voxels of both masks lying within ``tolerance_mm`` (inclusive) of the other
    mask's surface, counted per voxel (MONAI ``compute_surface_dice`` with ``use_subvoxels=False``).
    Both masks empty: 1.0; exactly one empty: 0.0. ``tolerance_mm`` must be finite and >= 0.
    """
    return surface_metrics(pred, ref, spacing_mm, tolerance_mm)["surface_dice"]
