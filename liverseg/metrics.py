"""Overlap metrics on label arrays (pure numpy).

Empty-mask convention: when both the prediction and the reference are empty for a label, Dice and
IoU are 1.0 (nothing to find, nothing found); when exactly one is empty they are 0.0.
"""
from __future__ import annotations

import numpy as np


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    tp, fp, fn = _counts(pred, ref)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    tp, fp, fn = _counts(pred, ref)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def per_label(pred_labels: np.ndarray, ref_labels: np.ndarray, values: list[int]) -> dict[int, dict[str, float]]:
    """Dice and IoU for each label value (one-vs-rest)."""
    return {v: {"dice": dice(pred_labels == v, ref_labels == v), "iou": iou(pred_labels == v, ref_labels == v)}
            for v in values}
